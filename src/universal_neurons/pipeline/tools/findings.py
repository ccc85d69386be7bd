"""Print which of the paper's findings on universal neurons hold (for the README)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from universal_neurons.analysis.statistics import findings_verdict
from universal_neurons.io import read_json
from universal_neurons.pipeline.command import Command
from universal_neurons.pipeline.layout import Layout

if TYPE_CHECKING:
    from universal_neurons.config import Params


def run(params: Params, layout: Layout, metrics_path: Path) -> str:
    """The verdict on the comparison in ``metrics_path`` at significance ``stats.alpha``."""
    return findings_verdict(read_json(metrics_path), params.stats.alpha)


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
