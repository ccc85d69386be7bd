"""Stage classify: family of each universal neuron (variance reduction of features).

Reads the token set, the syntax labels, each model and its stats table; writes
``data/families/seed{s}.parquet`` (+ ``topics.json``), ``results/families.json`` (its
headline, the counts per activation family over all models: ``metrics/families.json``),
``metrics/families_per_layer.csv`` and ``metrics/families_per_layer.png``.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from universal_neurons.description.families import (
    FAMILIES,
    STORED_TOP_CONTEXTS,
    VOCAB_FAMILIES,
    classify_model,
    family_metrics,
    headline_counts,
    parse_neurons,
    per_layer_rows,
    universal_mask,
    with_top_contexts,
)
from universal_neurons.description.features import FeatureSet, load_analysis_features
from universal_neurons.errors import MissingInputError
from universal_neurons.io import atomic_outputs, read_parquet
from universal_neurons.matching.activations import count_kept, token_set_record
from universal_neurons.models.loading import load_model, model_shape
from universal_neurons.outputs.plots import plot_family_counts
from universal_neurons.pipeline.command import Out, Stage, as_json
from universal_neurons.pipeline.inputs import (
    Provenance,
    check_same_inputs,
    group_names,
    summary_of,
)
from universal_neurons.pipeline.layout import Layout, model_name
from universal_neurons.pipeline.runner import stage_main

if TYPE_CHECKING:
    from pathlib import Path

    from universal_neurons.config import Params


def classify_seed(
    params: Params,
    layout: Layout,
    seed: int,
    analysis_set: tuple[np.ndarray, FeatureSet, np.ndarray],
) -> tuple[pd.DataFrame, dict]:
    """The family table (with each neuron's top contexts, for the ``neuron`` command) and the
    family counts of the model of ``seed``; ``analysis_set``: ``(tokens, features, excluded ids)``."""
    config, label = params.families, model_name(seed)
    tokens, features, excluded = analysis_set
    stats = read_parquet(layout.table("stats", label), "stats")
    model = load_model(str(layout.model(seed)), device=params.analysis.device)
    n_layers, d_mlp = model_shape(model)
    neurons = parse_neurons(config.neurons, n_layers, d_mlp, universal_mask(stats, n_layers, d_mlp))
    table, top = classify_model(
        model,
        tokens,
        features,
        neurons,
        excluded,
        params.analysis,
        config,
        stats,
        desc=f"classify {label}",
        top_k=STORED_TOP_CONTEXTS,
    )
    if top is not None:
        table = with_top_contexts(table, top)
    return table, family_metrics(table, stats, n_layers, config)


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


def _check_stats_inputs(params: Params, layout: Layout, tokens, excluded) -> None:
    """The stats stage's tables were made from this analysis token set and group."""
    stats = layout.summary("stats")
    current = token_set_record(
        tokens, excluded, count_kept(tokens, excluded), params.analysis.split
    )
    source = layout.tokens / f"{params.analysis.split}_tokens.npy"
    check_same_inputs({stats: summary_of(stats), source: Provenance(current)}, group_names(params))


def run(params: Params, layout: Layout) -> dict:
    """Classify the chosen neurons of every model; write tables, metrics, CSV and plot."""
    syntax_dir = layout.stage_dir("syntax")
    if not syntax_dir.exists():
        raise MissingInputError(f"{syntax_dir}: syntax labels not found (run the syntax stage)")
    tokens, features, excluded, _ = load_analysis_features(
        layout.tokens, params.analysis, params.families, syntax_dir
    )
    _check_stats_inputs(params, layout, tokens, excluded)
    metrics: dict = {"models": {}}
    tables: dict[str, pd.DataFrame] = {}
    for seed in params.train.seeds:
        label = model_name(seed)
        tables[label], metrics["models"][label] = classify_seed(
            params, layout, seed, (tokens, features, excluded)
        )
    _write(layout, tables, features.topic_words, metrics)
    return metrics


def _summary(metrics: dict) -> str:
    keys = ("n_universal", "n_explained", "percent_explained", "counts")
    return as_json(
        {model: {k: entry[k] for k in keys} for model, entry in metrics["models"].items()}
    )


COMMAND = Stage(
    name="classify",
    params=("analysis", "families", "train.seeds"),
    inputs=lambda layout: [
        layout.tokens,
        layout.stage_dir("syntax"),
        layout.stage_dir("stats"),
        layout.models,
    ],
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
