"""Stage null_control: each finding against what the selection of universal neurons alone gives.

The null group's neuron tables (stage null_measures: the group at initialisation) are
selected from as the real group is: per null model the ``K`` live neurons of highest excess
correlation, ``K`` = the real model's number of universal neurons; the paper's findings are
tested on that selection, per model and pooled, and each real pooled finding
(``results/stats.json``) is judged against it: ``explained by selection`` or ``beyond
selection`` (docs/statistics.md). Seconds: a new τ reruns this, not the measurement.

Writes ``data/null_control/`` (``seed{s}.parquet``: the null neuron tables with
``is_selected``; ``summary.json``) and ``results/null_control.json``. When the null group was
not measured (``null_group: none``, a pretrained group) both say ``"run": false``.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from universal_neurons.description.findings import pooled_findings
from universal_neurons.description.null_control import (
    SELECTED_COLUMN,
    against_null,
    null_model_summary,
    with_selection,
)
from universal_neurons.errors import UserError
from universal_neurons.io import atomic_outputs, read_json, read_parquet
from universal_neurons.pipeline.command import Out, Stage
from universal_neurons.pipeline.layout import Layout, model_name
from universal_neurons.pipeline.runner import stage_main

if TYPE_CHECKING:
    from universal_neurons.config import Params


def real_counts(params: Params, layout: Layout) -> dict[str, int]:
    """``{model: live universal neurons}`` of the real group (the universality stage's tables)."""
    counts = {}
    for seed in params.train.seeds:
        table = read_parquet(layout.table("universality", model_name(seed)), "universality")
        counts[model_name(seed)] = int((table["is_universal"] & ~table["dead"]).sum())
    return counts


def null_tables(params: Params, layout: Layout, counts: dict[str, int]) -> dict:
    """``{model: null neuron table}`` with its own τ-selection (``is_universal``) and the
    selection of the real group's size (``is_selected``)."""
    threshold = params.universality.threshold
    tables = {}
    for name, k in counts.items():
        table = read_parquet(layout.stage_dir("null_measures") / f"{name}.parquet", "null_measures")
        own = (table["excess_corr"] > threshold).fillna(False) & ~table["dead"].astype(bool)
        tables[name] = with_selection(table.assign(is_universal=own.astype(bool)), k)
    return tables


def real_pooled(layout: Layout) -> dict:
    """The stats stage's pooled findings (``results/stats.json``, key ``pooled``)."""
    path = layout.result("stats.json")
    pooled = read_json(path).get("pooled") if path.is_file() else None
    if not isinstance(pooled, dict):
        raise UserError(f"{path}: no pooled findings; run the stats stage first")
    return pooled


def null_result(params: Params, layout: Layout, tables: dict, measured: dict) -> dict:
    """``results/null_control.json`` of a run: settings, per-model selection and comparison,
    the pooled null findings and each finding against the null."""
    counts = {name: int(table[SELECTED_COLUMN].sum()) for name, table in tables.items()}
    u = params.uncertainty
    pooled = pooled_findings(tables, selected=SELECTED_COLUMN)  # as the stats stage pools
    return {
        "run": True,
        "null_group": u.null_group,
        "sequences": measured["sequences"],
        "kept_positions": measured["kept_positions"],
        "threshold": params.universality.threshold,
        "models": {name: null_model_summary(table, counts[name]) for name, table in tables.items()},
        "pooled": pooled,
        "against_null": against_null(real_pooled(layout), pooled, params.stats.alpha),
    }


def run(params: Params, layout: Layout) -> dict:
    """Select from the null group's tables (unless it was not measured), write the outputs,
    return the result."""
    measured = read_json(layout.summary("null_measures"))
    tables: dict[str, pd.DataFrame] = {}
    if measured["run"]:
        counts = real_counts(params, layout)
        tables = null_tables(params, layout, counts)
        result = null_result(params, layout, tables, measured)
    else:
        result = {"run": False, "reason": measured["reason"]}
    with atomic_outputs() as outputs:  # the two outputs change together or not at all
        temp = outputs.path(layout.stage_dir("null_control"))
        temp.mkdir()
        for name, table in tables.items():
            table.to_parquet(temp / f"{name}.parquet", index=False)
        summary = {key: value for key, value in result.items() if key != "models"}
        (temp / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
        outputs.write_json(layout.result("null_control.json"), result)
    return result


def _lines(result: dict) -> str:
    if not result["run"]:
        return f"null control not run: {result['reason']}"
    rows = [
        f"{entry['finding']}: real {entry['real']} (r = {_signed(entry['real_effect'])}), "
        f"selection alone {entry['null']} (r = {_signed(entry['null_effect'])}): "
        f"{entry['verdict']}"
        for entry in result["against_null"].values()
    ]
    return "\n".join(rows)


def _signed(value: float | None) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:+.2f}"


COMMAND = Stage(
    name="null_control",
    params=("stats", "train.seeds", "universality", "uncertainty.null_group"),
    inputs=lambda layout: [
        layout.stage_dir("null_measures"),
        layout.stage_dir("universality"),
        layout.result("stats.json"),
    ],
    outputs=lambda layout: [
        Out(layout.stage_dir("null_control")),
        Out(layout.result("null_control.json"), cache=False),
    ],
    run=run,
    render=_lines,
)

if __name__ == "__main__":
    stage_main(COMMAND, __doc__)
