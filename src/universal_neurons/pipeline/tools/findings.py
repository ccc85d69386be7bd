"""Print which of the paper's findings on universal neurons hold (for the README)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from universal_neurons.analysis.statistics import PAPER_FINDINGS, findings_verdict
from universal_neurons.errors import UserError
from universal_neurons.io import read_json
from universal_neurons.pipeline.command import Command
from universal_neurons.pipeline.layout import Layout

if TYPE_CHECKING:
    from universal_neurons.config import Params


ENTRY_KEYS = ("median_universal", "median_other", "effect_size", "p_value")
"""What each metric's comparison in ``metrics/stats.json`` holds."""


def _bad_entry(models: Any) -> str | None:
    """Where ``models`` is not ``{model: {metric: comparison}}`` with every finding's metric."""
    if not isinstance(models, dict) or not models:
        return "no 'models' mapping"
    for model, comparison in models.items():
        for _, metric, _ in PAPER_FINDINGS:
            entry = comparison.get(metric) if isinstance(comparison, dict) else None
            if not isinstance(entry, dict) or any(key not in entry for key in ENTRY_KEYS):
                return f"models.{model}.{metric} is not a comparison ({', '.join(ENTRY_KEYS)})"
    return None


def checked_metrics(path: Path) -> dict:
    """The stats stage's metrics read from ``path``, checked to have its shape."""
    data = read_json(path)
    problem = _bad_entry(data.get("models") if isinstance(data, dict) else None)
    if problem:
        raise UserError(
            f"{path}: not the stats stage's metrics ({problem}); give metrics/stats.json"
        )
    return data


def run(params: Params, layout: Layout, metrics_path: Path) -> str:
    """The verdict on the comparison in ``metrics_path`` at significance ``stats.alpha``."""
    return findings_verdict(checked_metrics(metrics_path), params.stats.alpha)


COMMAND = Command(
    name="findings",
    run=run,
    options=[
        click.option(
            "--metrics",
            "metrics_path",
            type=click.Path(path_type=Path),
            default=Layout().result("stats.json"),
            show_default=True,
        )
    ],
)
