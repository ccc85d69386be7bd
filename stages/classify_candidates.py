"""Stage classify_candidates: the family of each candidate neuron (variance reduction of
features), independent of τ.

With ``families.neurons: universal`` the neurons classified are the candidates, those whose
excess correlation is above ``universality.candidate_threshold`` (at most τ); a list or
``all`` is classified as given. The classify stage then keeps the universal neurons' rows and
counts the families: a new τ at or above the candidate threshold reruns no pass over the
token set.

Reads the token set, the syntax labels, each model, collect's moments, correlate's maxima and
the baseline; writes ``data/classify_candidates/seed{s}.parquet`` (the family tables, with
``is_universal`` = candidate and each neuron's top contexts), ``topics.json`` and
``seed{s}.pages.safetensors`` (each neuron's top contexts with the activation of every token,
its activation histogram and the vocabulary tokens its output weights raise and lower most)
and ``seed{s}.histograms/<layer>.<index>.png`` (that histogram drawn): what the report's
neuron pages show, so that the report makes no pass over the token set, loads no model and
draws no histogram. The weight statistics come from the weight_stats stage.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from universal_neurons.description.families import (
    STORED_TOP_CONTEXTS,
    classify_model,
    parse_neurons,
    universal_mask,
    with_top_contexts,
)
from universal_neurons.description.features import FeatureSet, load_analysis_features
from universal_neurons.description.neuron_profile import activation_pass, with_vocab
from universal_neurons.description.page_store import (
    NeuronActivations,
    histogram_file,
    histograms_dir,
    pageable_neurons,
    pages_file,
    save_activations,
)
from universal_neurons.errors import MissingInputError
from universal_neurons.io import atomic_outputs
from universal_neurons.matching.activations import count_kept, token_set_record
from universal_neurons.models.loading import load_model, model_shape
from universal_neurons.outputs.plots import neuron_histogram
from universal_neurons.pipeline.command import Out, Stage
from universal_neurons.pipeline.inputs import (
    Provenance,
    check_same_inputs,
    group_names,
    summary_of,
)
from universal_neurons.pipeline.layout import Layout, model_name
from universal_neurons.pipeline.runner import stage_main

# ``python -P`` (as DVC runs a stage) leaves this folder off the import path: the folder above
# it goes on the end of it, for the candidates' neuron tables (``stats.candidate_tables``).
sys.path.append(str(Path(__file__).resolve().parents[1]))
from stages.stats import candidate_tables  # noqa: E402

if TYPE_CHECKING:
    import pandas as pd

    from universal_neurons.config import Params


def classify_seed(
    params: Params,
    layout: Layout,
    seed: int,
    analysis_set: tuple[np.ndarray, FeatureSet, np.ndarray],
    stats: pd.DataFrame,
    pages: bool = False,
) -> tuple[pd.DataFrame, NeuronActivations | None]:
    """The family table (with each neuron's top contexts, for the ``neuron`` command) of the
    model of ``seed``; ``analysis_set``: ``(tokens, features, excluded ids)``; ``stats``: its
    neuron table with the candidates as ``is_universal``. With ``pages``, also what the report's
    neuron pages show of the candidates that can get one (``pageable_neurons``: at most
    ``PAGES_PER_MODEL``), in a second pass: top contexts, histograms, vocabulary extremes."""
    config = params.families
    tokens, features, excluded = analysis_set
    model = load_model(str(layout.model(seed)), device=params.analysis.device)
    n_layers, d_mlp = model_shape(model)
    neurons = parse_neurons(config.neurons, n_layers, d_mlp, universal_mask(stats, n_layers, d_mlp))
    found, paged = None, pageable_neurons(stats)
    if pages and paged:  # no candidate: no pages (the report makes none either)
        batch_size, device = params.analysis.batch_size, params.analysis.device
        found = with_vocab(
            activation_pass(model, tokens, paged, excluded, batch_size, device), model
        )
    table, top = classify_model(
        model,
        tokens,
        features,
        neurons,
        excluded,
        params.analysis,
        config,
        stats,
        desc=f"classify {model_name(seed)}",
        top_k=STORED_TOP_CONTEXTS,
    )
    return (table if top is None else with_top_contexts(table, top)), found


def _check_correlate_inputs(params: Params, layout: Layout, tokens, excluded) -> None:
    """Correlate's outputs (the candidates' excess) were made from this analysis token set."""
    correlate = layout.summary("correlate")
    current = token_set_record(
        tokens, excluded, count_kept(tokens, excluded), params.analysis.split
    )
    source = layout.tokens / f"{params.analysis.split}_tokens.npy"
    check_same_inputs(
        {correlate: summary_of(correlate), source: Provenance(current)}, group_names(params)
    )


def run(params: Params, layout: Layout) -> dict:
    """Classify the chosen neurons (the candidates) of every model; write their tables and
    return the number of rows per model."""
    syntax_dir = layout.stage_dir("syntax")
    if not syntax_dir.exists():
        raise MissingInputError(f"{syntax_dir}: syntax labels not found (run the syntax stage)")
    tokens, features, excluded, _ = load_analysis_features(
        layout.tokens, params.analysis, params.families, syntax_dir
    )
    _check_correlate_inputs(params, layout, tokens, excluded)
    stats = candidate_tables(params, layout)
    tables, pages = {}, {}
    for seed in params.train.seeds:
        label = model_name(seed)
        tables[label], pages[label] = classify_seed(
            params, layout, seed, (tokens, features, excluded), stats[label], pages=True
        )
    write_tables(layout, tables, features.topic_words, pages)
    return {label: len(table) for label, table in tables.items()}


def write_tables(
    layout: Layout,
    tables: dict[str, pd.DataFrame],
    topics: dict,
    pages: dict[str, NeuronActivations | None] | None = None,
) -> None:
    """``data/classify_candidates``: the family table of every model, the topic words and
    each model's page activations (``pages_file``) and histograms (``histograms_dir``), in
    one atomic step."""
    with atomic_outputs() as outputs:
        temp = outputs.path(layout.stage_dir("classify_candidates"))
        temp.mkdir()
        for label, table in tables.items():
            table.to_parquet(temp / f"{label}.parquet", index=False)
        (temp / "topics.json").write_text(json.dumps(topics, indent=2) + "\n")
        for label, found in (pages or {}).items():
            if found is not None:
                save_activations(found, temp / pages_file(label))
                draw_histograms(label, found, temp / histograms_dir(label))


def draw_histograms(model: str, found: NeuronActivations, folder: Path) -> None:
    """Each neuron's page histogram of ``found`` as ``folder/<layer>.<index>.png``."""
    for n, (layer, index) in enumerate(found.neurons):
        edges, counts = found.histogram.display(n)
        neuron_histogram(model, layer, index, edges, counts, folder / histogram_file(layer, index))


COMMAND = Stage(
    name="classify_candidates",
    params=(
        "analysis",
        "families",
        "train.seeds",
        "universality.candidate_threshold",
    ),
    inputs=lambda layout: [
        layout.tokens,
        layout.stage_dir("syntax"),
        layout.models,
        layout.stage_dir("weight_stats"),
        layout.stage_dir("collect"),
        layout.stage_dir("correlate"),
        layout.stage_dir("baseline"),
    ],
    outputs=lambda layout: [Out(layout.stage_dir("classify_candidates"))],
    run=run,
)

if __name__ == "__main__":
    stage_main(COMMAND, __doc__)
