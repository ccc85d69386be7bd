"""Print which of the paper's findings on universal neurons hold: a findings x models table.

A cell says whether the finding holds in that model (the rank-biserial effect ``r`` has the
paper's sign and Mann-Whitney ``p < stats.alpha``), is not significant (``n.s.``), goes the
other way (``opposite``) or cannot be tested (``n/a``, e.g. no universal neuron), with ``r``.
``--long``: one line per finding with each model's medians, ``r`` and ``p`` (for the README).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from universal_neurons.description.statistics import PAPER_FINDINGS, findings_rows, findings_verdict
from universal_neurons.errors import UserError
from universal_neurons.io import read_json
from universal_neurons.pipeline.command import Command
from universal_neurons.pipeline.layout import Layout

if TYPE_CHECKING:
    from universal_neurons.config import Params


ENTRY_KEYS = ("median_universal", "median_other", "effect_size", "p_value")
"""What each metric's comparison in ``results/stats.json`` holds."""


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
            f"{path}: not the stats stage's metrics ({problem}); give results/stats.json"
        )
    return data


def text_table(rows: list[list[str]]) -> list[str]:
    """Rows of cells as aligned text columns, a dashed rule under the header row."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def findings_table(stats: dict, alpha: float) -> str:
    """The paper's findings (rows) x models (columns) + a verdict column, and what a cell says."""
    notes = [
        f"holds: the paper's sign and Mann-Whitney p < {alpha}; n.s.: p >= {alpha}",
        "r: rank-biserial effect size, universal vs other live neurons",
        "medians and p-values per model: findings --long",
    ]
    return "\n".join([*text_table(findings_rows(stats, alpha)), "", *notes])


def run(params: Params, layout: Layout, metrics_path: Path, long_form: bool) -> str:
    """The findings in ``metrics_path`` at significance ``stats.alpha``: the table, or the
    long per-finding lines."""
    render = findings_verdict if long_form else findings_table
    return render(checked_metrics(metrics_path), params.stats.alpha)


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
        ),
        click.option(
            "--long",
            "long_form",
            is_flag=True,
            help="One line per finding with each model's medians, r and p.",
        ),
    ],
)
