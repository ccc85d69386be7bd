"""Print which of the paper's findings on universal neurons hold: a findings x models table.

A cell says whether the finding holds in that model (the rank-biserial effect ``r`` has the
paper's sign and Mann-Whitney ``p < stats.alpha``), is not significant (``n.s.``), goes the
other way (``opposite``) or cannot be tested (``n/a``, e.g. no universal neuron), with ``r``.
``--long``: one line per finding with each model's medians, ``r`` and ``p`` (for the README).

Below it, the pooled table: each finding decided over the whole group (van Elteren's
stratified test, the stratified rank-biserial ``r`` and its bootstrap interval; stats stage),
what the same selection gives on the null group (``results/null_control.json``; null_control
stage) and the verdict against it: ``beyond selection`` or ``explained by selection``.

By default the table fits ``TERMINAL_WIDTH`` columns: cells drop the ``r=`` label
(``holds +0.98``), and when the models still do not fit side by side they are split into
several tables that each repeat the finding column. ``--wide``: one table, cells as
``holds r=+0.98``, however wide.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from universal_neurons.description.null_control import pooled_lines, pooled_rows
from universal_neurons.description.statistics import PAPER_FINDINGS, findings_rows, findings_verdict
from universal_neurons.errors import UserError
from universal_neurons.io import read_json
from universal_neurons.outputs.text_table import TERMINAL_WIDTH, fitted_table, text_table
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


def findings_table(stats: dict, alpha: float, width: int | None = TERMINAL_WIDTH) -> str:
    """The paper's findings (rows) x models (columns) + a verdict column, and what a cell says.

    ``width``: fit that many columns (cells ``holds +0.98``, models split into several tables
    if needed); ``None``: one table, cells ``holds r=+0.98``.
    """
    rows = findings_rows(stats, alpha)
    if width is not None:
        rows = [[cell.replace(" r=", " ") for cell in row] for row in rows]
    effect = "r" if width is None else "the number after the outcome"
    notes = [
        f"holds: the paper's sign and Mann-Whitney p < {alpha}; n.s.: p >= {alpha}",
        f"{effect}: rank-biserial effect size, universal vs other live neurons",
        "medians and p-values per model: findings --long",
    ]
    return "\n".join([*fitted_table(rows, width, tail=1), "", *notes])


def null_control_of(path: Path) -> dict | None:
    """The null control's result (``results/null_control.json``), None when it is missing."""
    if not path.is_file():
        return None
    data = read_json(path)
    if not isinstance(data, dict) or "run" not in data:
        raise UserError(f"{path}: not the null_control stage's result (no 'run' key)")
    return data


def pooled_table(stats: dict, null_result: dict | None, alpha: float) -> str:
    """The pooled findings against the null control, and what its columns say ("" when
    ``stats`` has no pooled findings)."""
    rows = pooled_rows(stats, null_result, alpha)
    if not rows:
        return "no pooled findings in these metrics (rerun the stats stage)"
    if null_result is None:
        null_note = "no null control (run the null_control stage)"
    elif not null_result.get("run"):
        null_note = f"null control not run: {null_result.get('reason')}"
    else:
        null_note = (
            f"selection alone: the same number of top-excess neurons per model, "
            f"{null_result.get('null_group')} group"
        )
    notes = [
        "pooled: van Elteren stratified test over the models, rank-biserial r [interval]",
        null_note,
        "explained by selection: selection alone also holds and reaches the real interval",
    ]
    return "\n".join([*text_table(rows), "", *notes])


def run(
    params: Params,
    layout: Layout,
    metrics_path: Path,
    long_form: bool,
    wide: bool,
    null_path: Path,
) -> str:
    """The findings in ``metrics_path`` at significance ``stats.alpha``: the table (fitted to
    ``TERMINAL_WIDTH`` unless ``wide``), or the long per-finding lines; then the pooled
    table against the null control in ``null_path``."""
    metrics, alpha = checked_metrics(metrics_path), params.stats.alpha
    null_result = null_control_of(null_path)
    if long_form:
        pooled = "\n".join(pooled_lines(metrics, null_result, alpha))
        return findings_verdict(metrics, alpha) + ("\n\n" + pooled if pooled else "")
    per_model = findings_table(metrics, alpha, None if wide else TERMINAL_WIDTH)
    return per_model + "\n\n" + pooled_table(metrics, null_result, alpha)


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
        click.option(
            "--wide",
            is_flag=True,
            help=f"One table however wide (default: fit {TERMINAL_WIDTH} columns).",
        ),
        click.option(
            "--null",
            "null_path",
            type=click.Path(path_type=Path),
            default=Layout().result("null_control.json"),
            show_default=True,
            help="The null control's result (a missing file: no null column).",
        ),
    ],
)
