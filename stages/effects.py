"""Stage effects: what the universal neurons do when ablated (SPEC "What a neuron does").

Every universal neuron of every model, ``effects.controls`` matched control neurons per
universal neuron and its best partner in every other model are ablated (``effects.ablation``)
on the first ``effects.max_sequences`` held-out sequences; their weight-based roles
(entropy, attention (de)activation, prediction, suppression) are set beside the effects.

Writes ``data/effects/``: ``seed{s}.parquet`` (one row per measured neuron; columns in
``description/effects.py``) and ``effects.png`` (universal vs control effect per layer);
``results/effects.json`` (per model and layer), its headline ``metrics/effects.json`` and
``metrics/effects_per_layer.csv``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from universal_neurons.description.effects import (
    ModelInputs,
    add_group_columns,
    effects_summary,
    headline_metrics,
    measure_model,
    measured_neurons,
    per_layer_table,
    with_summary_columns,
)
from universal_neurons.io import atomic_outputs, read_parquet
from universal_neurons.matching.activations import excluded_token_ids
from universal_neurons.models.loading import check_device
from universal_neurons.outputs.effects_plot import plot_effects
from universal_neurons.pipeline.command import Out, Stage
from universal_neurons.pipeline.layout import Layout, model_name
from universal_neurons.pipeline.runner import stage_main
from universal_neurons.text.tokens import load_tokenizer, load_tokens

if TYPE_CHECKING:
    from universal_neurons.config import Params


def model_inputs(params: Params, layout: Layout, seed: int) -> ModelInputs:
    """What the measurement of the model of ``seed`` reads (the held-out token set)."""
    config = params.effects
    tokens = load_tokens(layout.tokens, "heldout")
    tokens = tokens if config.max_sequences == 0 else tokens[: config.max_sequences]
    excluded = excluded_token_ids(load_tokenizer(layout.tokens), params.analysis)
    return ModelInputs(
        directory=str(layout.model(seed)),
        stats=read_parquet(layout.table("stats", model_name(seed)), "stats"),
        moments=read_parquet(layout.model_dir("collect", seed) / "moments.parquet", "collect"),
        tokens=np.asarray(tokens, dtype=np.int64),
        excluded=excluded,
    )


def run(params: Params, layout: Layout, progress: bool = True) -> dict:
    """Measure every model's neurons and write the effects outputs; return the summary."""
    check_device(params.effects.device, "effects.device")
    inputs = {model_name(seed): model_inputs(params, layout, seed) for seed in params.train.seeds}
    max_corr = read_parquet(layout.stage_dir("correlate") / "max_corr.parquet", "correlate")
    stats = {name: found.stats for name, found in inputs.items()}
    targets = measured_neurons(stats, max_corr, params.effects)
    tables, per_token = {}, {}
    for name in tqdm(inputs, desc="effects", unit="model", disable=not progress):
        tables[name], found = measure_model(
            inputs[name], targets[name], params.effects, params.families, progress
        )
        per_token.update({(name, *key): values for key, values in found.items()})
    tables = {
        name: with_summary_columns(t) for name, t in add_group_columns(tables, per_token).items()
    }
    summary = effects_summary(tables, params.effects)
    with atomic_outputs() as outputs:  # the stage's outputs change together or not at all
        temp = outputs.path(layout.stage_dir("effects"))
        temp.mkdir()
        for name, table in tables.items():
            table.to_parquet(temp / f"{name}.parquet", index=False)
        per_layer = per_layer_table(tables)
        plot_effects(tables, temp / "effects.png")
        outputs.write_json(layout.result("effects.json"), summary)
        outputs.write_json(layout.metric("effects.json"), headline_metrics(summary))
        per_layer.to_csv(outputs.path(layout.metric("effects_per_layer.csv")), index=False)
    return summary


COMMAND = Stage(
    name="effects",
    params=("train.seeds", "analysis", "families", "effects"),
    inputs=lambda layout: [
        layout.tokens,
        layout.models,
        layout.stage_dir("collect"),
        layout.stage_dir("correlate"),
        layout.stage_dir("stats"),
    ],
    outputs=lambda layout: [
        Out(layout.stage_dir("effects")),
        Out(layout.result("effects.json"), cache=False),
        Out(layout.metric("effects.json"), kind="metrics", cache=False),
        Out(layout.metric("effects_per_layer.csv"), kind="plots", cache=False),
    ],
    run=run,
)

if __name__ == "__main__":
    stage_main(COMMAND, __doc__)
