"""Print which of the paper's findings on universal neurons hold: a findings x models table.

A cell says whether the finding holds in that model (the rank-biserial effect ``r`` has the
paper's sign and Mann-Whitney ``p < stats.alpha``), is not significant (``n.s.``), goes the
other way (``opposite``) or cannot be tested (``n/a``, e.g. no universal neuron), with ``r``.
``--long``: one line per finding with each model's medians, ``r`` and ``p`` (for the README).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from universal_neurons.analysis.statistics import findings_rows, findings_verdict
from universal_neurons.io import read_json
from universal_neurons.pipeline.command import Command
from universal_neurons.pipeline.layout import Layout

if TYPE_CHECKING:
    from universal_neurons.config import Params


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
    return render(read_json(metrics_path), params.stats.alpha)


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
