"""Compare the DVC experiments: the parameters they changed and the headline metrics, side by side.

`dvc exp show` gives every intermediate output a column of hashes and puts the parameters after
the metrics, so in a 120-column terminal it cuts the very columns that tell experiments apart.
This reads `dvc exp show --json` and prints one column per experiment (the workspace, the
commit and its experiments, as MLflow's compare view does) and one row per changed parameter,
then per headline metric (``metrics/universality.json`` and ``metrics/training.json`` always,
the other headline metrics where they differ), numbers to 4 significant digits (more
where 4 would show two different values of a row alike). When the
experiments do not fit 120 columns side by side they are split into several tables.

``--wide``: DVC's own table (`dvc exp show --only-changed` without the hash columns and the
detail metrics of the one-to-one, effects and uncertainty stages); ``--csv``/``--md``: that
table as CSV or Markdown, full precision.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import click
import yaml

from universal_neurons.errors import UserError
from universal_neurons.outputs.text_table import TERMINAL_WIDTH, fitted_table
from universal_neurons.pipeline.command import Command
from universal_neurons.pipeline.layout import Layout
from universal_neurons.pipeline.tools.metrics import flat_items, shown_value

OUTPUT_COLUMNS = r"^(data|models|report|results|metrics|tracking)(/[^:]*)?$"
"""The columns `dvc exp show` adds for data dependencies (paths of stage outputs). Not a
metric that DVC names with its file (``metrics/universality.json:mean_percent_universal``,
when another metrics file has the same key)."""
DETAIL_COLUMNS = (
    r"^(mean_percent_mutual_all|mean_percent_one_to_one_universal|universal_also_one_to_one"
    r"|available|roles_.*|median_delta_loss_.*|fraction_exceeding_controls"
    r"|mean_partner_effect_corr|(seed\d+\.)?(mean_)?percent_universal_(lo|hi)"
    r"|metrics/one_to_one\.json:.*)$"
)
"""The headline keys of the one-to-one, effects and uncertainty stages: in `dvc exp show`,
`dvc metrics show` and MLflow, left out of the comparison (``--wide`` fits 200 columns)."""
WIDE_COLUMNS = 1000
"""The terminal width DVC is told to draw ``--wide`` in: wide enough that it cuts nothing."""
MAX_DIGITS = 8
"""The most significant digits a number of the comparison is shown with."""
ALWAYS_SHOWN = ("metrics/universality.json", "metrics/training.json")
"""The metrics files whose every key the comparison shows, changed or not."""


def exp_show_command(output_format: str | None) -> list[str]:
    """The ``dvc exp show`` command line of ``--wide`` (``output_format``: ``csv``, ``md`` or
    None for DVC's drawn table)."""
    drop = f"{OUTPUT_COLUMNS}|{DETAIL_COLUMNS}"
    command = ["dvc", "exp", "show", "--only-changed", "--drop", drop, "--no-pager"]
    return command + ([f"--{output_format}"] if output_format else [])


def check_lock(lock: Path) -> None:
    """``dvc.lock``, where it exists, is a YAML mapping: DVC shows a corrupt one as a blank
    row and exits 0."""
    if not lock.is_file():
        return
    try:
        content = yaml.safe_load(lock.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise UserError(f"{lock}: not valid YAML{at}; restore it: git checkout {lock}") from None
    if not isinstance(content, dict) or "stages" not in content:
        raise UserError(f"{lock}: holds no stages; restore it: git checkout {lock}")


@dataclass(frozen=True)
class Experiment:
    """One column of the comparison: a name (``workspace``, the branch, or the experiment's),
    its commit (7 hex digits; "" for the workspace), DVC's executor state (None: done here),
    and its parameters and metrics as ``{(file, dotted key): value}``."""

    name: str
    commit: str
    state: str | None
    params: dict[tuple[str, str], object] = field(default_factory=dict)
    metrics: dict[tuple[str, str], object] = field(default_factory=dict)


def _leaves(files: dict | None) -> dict[tuple[str, str], object]:
    """``{(file, dotted key): value}`` of DVC's ``{file: {"data": {...}}}``."""
    return {
        (path, key): value
        for path, content in (files or {}).items()
        for key, value in flat_items((content or {}).get("data") or {})
    }


def _experiment(entry: dict, name: str | None, state: str | None) -> Experiment:
    """The column of one entry of `dvc exp show --json` (a baseline or an experiment's rev)."""
    rev = str(entry.get("rev") or "")
    data = entry.get("data") or {}
    if entry.get("error") and state is None:
        state = "error"
    return Experiment(
        name=name or (rev if rev == "workspace" else rev[:7]),
        commit="" if rev == "workspace" else rev[:7],
        state=state,
        params=_leaves(data.get("params")),
        metrics=_leaves(data.get("metrics")),
    )


def experiments_of(shown: list) -> list[Experiment]:
    """The columns of `dvc exp show --json`: each baseline (the workspace, the commit), then
    its experiments, newest first as DVC lists them."""
    columns = []
    for baseline in shown:
        columns.append(_experiment(baseline, baseline.get("name"), None))
        for experiment in baseline.get("experiments") or []:
            state = (experiment.get("executor") or {}).get("state")
            for rev in (experiment.get("revs") or [])[:1]:
                columns.append(_experiment(rev, experiment.get("name"), state))
    return columns


def _column_names(
    keys: list[tuple[str, str]], plain_file: str | None
) -> dict[tuple[str, str], str]:
    """DVC's name of each ``(file, key)``: the key, or ``file:key`` when another file has the
    same key or, given a ``plain_file`` (``params.yaml``), for a key of another file."""
    counts: dict[str, int] = {}
    for _, key in keys:
        counts[key] = counts.get(key, 0) + 1
    return {
        (path, key): key if counts[key] == 1 and plain_file in (None, path) else f"{path}:{key}"
        for path, key in keys
    }


def _keys(columns: list[Experiment], values: str) -> list[tuple[str, str]]:
    """Every ``(file, key)`` of ``values`` (``params`` or ``metrics``) of the columns, in
    order of first appearance."""
    keys: dict[tuple[str, str], None] = {}
    for column in columns:
        keys.update(dict.fromkeys(getattr(column, values)))
    return list(keys)


def _changed(columns: list[Experiment], values: str) -> list[tuple[str, str]]:
    """The ``(file, key)`` of ``values`` (``params`` or ``metrics``) that differ between the
    columns, in order of first appearance. A metric an experiment has not written yet (queued,
    failed) is no difference; a parameter one of them lacks is."""
    tables = [getattr(column, values) for column in columns]
    changed = []
    for key in _keys(columns, values):
        found = [table for table in tables if key in table] if values == "metrics" else tables
        if len({json.dumps(table.get(key), sort_keys=True) for table in found}) > 1:
            changed.append(key)
    return changed


def _metric_rows(columns: list[Experiment]) -> list[tuple[str, tuple[str, str]]]:
    """``(name, (file, key))`` of the metrics the comparison shows: every key of
    ``ALWAYS_SHOWN``, the other metrics where they differ; never a detail metric."""
    keys = _keys(columns, "metrics")
    dvc_names = _column_names(keys, None)
    changed = set(_changed(columns, "metrics"))
    shown = [
        key
        for key in keys
        if not re.match(DETAIL_COLUMNS, dvc_names[key])
        and (key[0] in ALWAYS_SHOWN or key in changed)
    ]
    names = _column_names(shown, None)
    return [(names[key], key) for key in shown]


def _digits(values: list[object]) -> int:
    """The significant digits of a row: 4, or up to ``MAX_DIGITS`` where 4 would show two
    different numbers alike (held-out losses 3.78203 and 3.78207: 3.782 and 3.7821)."""
    numbers = {v for v in values if isinstance(v, float)}
    for digits in range(4, MAX_DIGITS):
        if len({f"{v:.{digits}g}" for v in numbers}) == len(numbers):
            return digits
    return MAX_DIGITS


def _row_cells(key: str, values: list[object]) -> list[str]:
    """A row's values as the comparison shows them: ``_digits`` significant digits, ``%`` on
    a percentage, ``-`` where the experiment has no such value."""
    digits = _digits(values)
    cells = []
    for value in values:
        if value is None:
            cells.append("-")
            continue
        text = f"{value:.{digits}g}" if isinstance(value, float) else shown_value(value)
        is_number = isinstance(value, int | float) and not isinstance(value, bool)
        cells.append(f"{text}%" if is_number and "percent" in key else text)
    return cells


def comparison_rows(columns: list[Experiment]) -> list[list[str]]:
    """The comparison as rows of cells: a header of experiment names, their commits (and
    states, where one is not done), then ``params`` and ``metrics`` sections."""
    rows = [
        ["experiment", *(c.name for c in columns)],
        ["commit", *(c.commit or "-" for c in columns)],
    ]
    if any(c.state not in (None, "success") for c in columns):
        rows.append(["state", *(c.state or "-" for c in columns)])
    params = _changed(columns, "params")
    names = _column_names(params, "params.yaml")
    rows.append(["params" if params else "params: none changed", *("" for _ in columns)])
    rows += [
        [f"  {names[key]}", *_row_cells(key[1], [c.params.get(key) for c in columns])]
        for key in params
    ]
    metrics = _metric_rows(columns)
    rows.append(["metrics" if metrics else "metrics: none yet", *("" for _ in columns)])
    rows += [
        [f"  {name}", *_row_cells(key[1], [c.metrics.get(key) for c in columns])]
        for name, key in metrics
    ]
    return rows


def comparison_table(shown: list, width: int = TERMINAL_WIDTH) -> str:
    """`dvc exp show --json`'s ``shown`` as the comparison's text, at most ``width`` wide (one
    column of row names and at least one experiment per table)."""
    columns = experiments_of(shown)
    if not columns:
        raise UserError("exps: dvc exp show listed no commit (commit the pipeline first)")
    text = "\n".join(fitted_table(comparison_rows(columns), width))
    if len(columns) <= 2:
        text += (
            "\n\nno experiments yet: dvc exp run -n NAME -S KEY=VALUE (README: 'Comparing runs')"
        )
    return text


def _dvc(layout: Layout, command: list[str], capture: bool) -> str:
    """Run a ``dvc`` command in the repository; its stdout when ``capture``."""
    if shutil.which("dvc") is None:
        raise UserError("exps: the dvc command is not on PATH (activate the project's .venv)")
    # COLUMNS: DVC draws its table at most as wide as the terminal, cutting the rest with "…"
    env = {**os.environ, "COLUMNS": str(WIDE_COLUMNS)}
    done = subprocess.run(command, cwd=layout.root, capture_output=capture, text=True, env=env)
    if done.returncode != 0:
        said = (done.stderr or "").strip().splitlines()[-1:] if capture else []
        raise UserError(
            f"exps: {' '.join(command[:3])} failed with status {done.returncode}"
            + (f": {said[0]}" if said else "")
        )
    return done.stdout if capture else ""


def run(layout: Layout, output_format: str | None) -> str | None:
    """The comparison of the experiments of the repository at ``layout.root`` (None: DVC's
    own table, ``output_format`` ``wide``, ``csv`` or ``md``, printed by DVC)."""
    check_lock(layout.dvc_files[1])
    if output_format is not None:
        _dvc(layout, exp_show_command(None if output_format == "wide" else output_format), False)
        return None
    try:
        shown = json.loads(_dvc(layout, ["dvc", "exp", "show", "--json"], True))
    except json.JSONDecodeError as exc:
        raise UserError(f"exps: dvc exp show --json printed no JSON ({exc})") from None
    return comparison_table(shown if isinstance(shown, list) else [])


COMMAND = Command(
    name="exps",
    run=run,
    options=[
        click.option(
            "--wide",
            "output_format",
            flag_value="wide",
            help="DVC's own table (dvc exp show --only-changed), however wide.",
        ),
        click.option(
            "--csv", "output_format", flag_value="csv", help="DVC's table as CSV, full precision."
        ),
        click.option("--md", "output_format", flag_value="md", help="DVC's table as Markdown."),
    ],
    needs_params=False,
)
