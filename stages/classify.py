"""Stage classify: family of each universal neuron (variance reduction of features).

The classify_candidates stage classified every candidate (excess above
``universality.candidate_threshold``, at most τ) in a pass over the analysis token set; this
stage keeps the universal neurons' rows (the stats tables' ``is_universal``; with
``families.neurons`` a list or ``all``, every row) and counts the families, so a new τ costs
seconds here.

Writes ``data/families/seed{s}.parquet`` (+ ``topics.json``), ``results/families.json`` (its
headline, the counts per activation family over all models: ``metrics/families.json``),
``metrics/families_per_layer.csv`` and ``metrics/families_per_layer.png``.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pandas as pd

from universal_neurons.description.families import (
    FAMILIES,
    VOCAB_FAMILIES,
    family_metrics,
    headline_counts,
    per_layer_rows,
    select_universal,
)
from universal_neurons.io import atomic_outputs, read_json, read_parquet
from universal_neurons.outputs.plots import plot_family_counts
from universal_neurons.pipeline.command import Out, Stage, as_json
from universal_neurons.pipeline.layout import Layout, model_name
from universal_neurons.pipeline.runner import stage_main

if TYPE_CHECKING:
    from pathlib import Path

    from universal_neurons.config import Params


def family_table(params: Params, layout: Layout, seed: int) -> tuple[pd.DataFrame, dict]:
    """The family table of the model of ``seed`` (its candidates' rows that ``families.neurons``
    asks for, ``is_universal`` from its neuron table) and its family counts."""
    label = model_name(seed)
    stats = read_parquet(layout.table("stats", label), "stats")
    candidates = read_parquet(layout.table("classify_candidates", label), "classify_candidates")
    table = select_universal(candidates, stats, params.families)
    n_layers = int(stats["layer"].max()) + 1
    return table, family_metrics(table, stats, n_layers, params.families)


def _write_tables(temp: Path, tables: dict[str, pd.DataFrame], topics: dict) -> None:
    """``data/families`` (at ``temp``): the family table of every model and the topic words."""
    temp.mkdir()
    for label, table in tables.items():
        table.to_parquet(temp / f"{label}.parquet", index=False)
    (temp / "topics.json").write_text(json.dumps(topics, indent=2) + "\n")


def _write(layout: Layout, tables: dict[str, pd.DataFrame], topics: dict, metrics: dict) -> None:
    """The family tables and topic words, the metrics, the per-layer counts and their plot."""
    with atomic_outputs() as outputs:  # the five outputs change together or not at all
        _write_tables(outputs.path(layout.stage_dir("families")), tables, topics)
        outputs.write_json(layout.result("families.json"), metrics)
        outputs.write_json(layout.metric("families.json"), headline_counts(metrics))
        per_layer = outputs.path(layout.metric("families_per_layer.csv"))
        per_layer_rows(metrics).to_csv(per_layer, index=False)
        figure = outputs.path(layout.metric("families_per_layer.png"))
        plot_family_counts(metrics, [*FAMILIES, *VOCAB_FAMILIES], figure)


def run(params: Params, layout: Layout) -> dict:
    """The family tables and counts of every model; write tables, metrics, CSV and plot."""
    topics_path = layout.stage_dir("classify_candidates") / "topics.json"
    metrics: dict = {"models": {}}
    tables: dict[str, pd.DataFrame] = {}
    for seed in params.train.seeds:
        label = model_name(seed)
        tables[label], metrics["models"][label] = family_table(params, layout, seed)
    _write(layout, tables, read_json(topics_path), metrics)
    return metrics


def _summary(metrics: dict) -> str:
    keys = ("n_universal", "n_explained", "percent_explained", "counts")
    return as_json(
        {model: {k: entry[k] for k in keys} for model, entry in metrics["models"].items()}
    )


COMMAND = Stage(
    name="classify",
    params=("families", "train.seeds"),
    inputs=lambda layout: [layout.stage_dir("classify_candidates"), layout.stage_dir("stats")],
    outputs=lambda layout: [
        Out(layout.stage_dir("families")),
        Out(layout.result("families.json"), cache=False),
        Out(layout.metric("families.json"), kind="metrics", cache=False),
        Out(layout.metric("families_per_layer.csv"), kind="plots", cache=False),
        Out(layout.metric("families_per_layer.png"), kind="plots", cache=False),
    ],
    run=run,
    render=_summary,
)

if __name__ == "__main__":
    stage_main(COMMAND, __doc__)
