"""Stage emergence: the percentage of universal neurons at every training checkpoint.

The universality threshold τ applied to what ``emergence_points`` measured at every point
(every ``train.checkpoint_tokens`` checkpoint and the end of training): a neuron is
universal at a point iff its excess there is above ``universality.threshold``. Seconds of
work: a new τ reruns this stage, never the measurement. Writes ``data/emergence/``
(``neurons.parquet``: one row per point and neuron; ``points.json``) and
``metrics/emergence.csv`` (the DVC plot, tokens on x).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from universal_neurons.io import atomic_outputs, read_json, read_parquet
from universal_neurons.matching.emergence import GroupMeasures, GroupUniversality
from universal_neurons.pipeline.command import Out, Stage
from universal_neurons.pipeline.layout import Layout, model_name
from universal_neurons.pipeline.runner import stage_main

if TYPE_CHECKING:
    from universal_neurons.config import Params

NEURON_COLUMNS = ["dead", "mean_corr", "mean_baseline", "excess_corr", "is_universal"]


def point_row(tokens: int, result: GroupUniversality, losses: dict[str, float]) -> dict:
    """One point of the curve: percentages, medians and losses (JSON-ready)."""
    return {
        "tokens": tokens,
        "mean_percent_universal": result.mean_percent_universal(),
        "median_corr": result.median("mean_corr"),
        "median_baseline": result.median("mean_baseline"),
        "mean_heldout_loss": float(np.mean(list(losses.values()))),
        "models": {
            name: {
                "percent_universal": summary["percent_universal"],
                "n_universal": summary["n_universal"],
                "percent_universal_per_layer": summary["percent_universal_per_layer"],
                "heldout_loss": losses[name],
            }
            for name, summary in result.summaries.items()
        },
        "kept_positions": result.kept_positions,
    }


def neuron_rows(tokens: int, result: GroupUniversality) -> pd.DataFrame:
    """``model, tokens, layer, index`` + ``NEURON_COLUMNS`` of every neuron at one point."""
    frames = [
        table[["layer", "index", *NEURON_COLUMNS]].assign(model=name, tokens=tokens)
        for name, table in result.tables.items()
    ]
    table = pd.concat(frames, ignore_index=True)
    return table[["model", "tokens", "layer", "index", *NEURON_COLUMNS]]


def curve_table(rows: list[dict]) -> pd.DataFrame:
    """The DVC plot table: one row per point, ``tokens`` first, then the group's summary and
    every model's percentage (``{model}_percent_universal``)."""
    records = []
    for row in rows:
        record = {key: row[key] for key in ("tokens", "mean_percent_universal", "median_corr")}
        record |= {
            "median_baseline": row["median_baseline"],
            "mean_heldout_loss": row["mean_heldout_loss"],
        }
        record |= {
            f"{m}_percent_universal": v["percent_universal"] for m, v in row["models"].items()
        }
        records.append(record)
    return pd.DataFrame(records)


def point_measures(layout: Layout, point: dict, names: list[str]) -> GroupMeasures:
    """What ``emergence_points`` measured at one point, models in the order of ``names``."""
    path = layout.stage_dir("emergence_points") / point["file"]
    table = read_parquet(path, "emergence_points")
    tables = {
        name: table[table["model"] == name].drop(columns="model").reset_index(drop=True)
        for name in names
    }
    return GroupMeasures(tables, int(point["n_layers"]), int(point["kept_positions"]))


def _write(layout: Layout, rows: list[dict], frames: list[pd.DataFrame], summary: dict) -> None:
    """``data/emergence`` (neurons.parquet, points.json) and ``metrics/emergence.csv``."""
    with atomic_outputs() as outputs:  # the two outputs change together or not at all
        temp = outputs.path(layout.stage_dir("emergence"))
        temp.mkdir()
        pd.concat(frames, ignore_index=True).to_parquet(temp / "neurons.parquet", index=False)
        (temp / "points.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
        curve_table(rows).to_csv(outputs.path(layout.metric("emergence.csv")), index=False)


def run(params: Params, layout: Layout) -> list[dict]:
    """Apply the threshold at every measured point; write the outputs; return the points."""
    measured = read_json(layout.stage_dir("emergence_points") / "points.json")
    names = [model_name(seed) for seed in params.train.seeds]
    threshold = params.universality.threshold
    rows, frames = [], []
    for point in measured["points"]:
        result = point_measures(layout, point, names).at_threshold(threshold)
        rows.append(point_row(point["tokens"], result, point["heldout_loss"]))
        frames.append(neuron_rows(point["tokens"], result))
    summary = {"sequences": measured["sequences"], "threshold": threshold, "points": rows}
    _write(layout, rows, frames, summary)
    return rows


def _lines(rows: list[dict]) -> str:
    return "\n".join(
        f"{row['tokens']:>12,} tokens: {row['mean_percent_universal']:6.2f} % universal, "
        f"median corr {row['median_corr']:.3f}, median baseline {row['median_baseline']:.3f}, "
        f"held-out loss {row['mean_heldout_loss']:.3f}"
        for row in rows
    )


COMMAND = Stage(
    name="emergence",
    params=("train.seeds", "universality"),
    inputs=lambda layout: [layout.stage_dir("emergence_points")],
    outputs=lambda layout: [
        Out(layout.stage_dir("emergence")),
        Out(layout.metric("emergence.csv"), kind="plots", cache=False),
    ],
    run=run,
    render=_lines,
)

if __name__ == "__main__":
    stage_main(COMMAND, __doc__)
