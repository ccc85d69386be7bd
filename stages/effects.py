"""Stage effects: what the universal neurons do when ablated (SPEC "What a neuron does").

Every universal neuron of every model, ``effects.controls`` matched control neurons per
universal neuron and its best partner in every other model were ablated (``effects.ablation``)
on the first ``effects.max_sequences`` held-out sequences by the effects_candidates stage,
which measures every candidate (excess above ``universality.candidate_threshold``, at most
τ); this stage keeps the rows of the universal neurons (the stats tables' ``is_universal``),
so a new τ costs seconds here.

Writes ``data/effects/``: ``seed{s}.parquet`` (one row per measured neuron; columns in
``description/effects.py``) and ``effects.png`` (universal vs control effect per layer);
``results/effects.json`` (per model and layer), its headline ``metrics/effects.json`` and
``metrics/effects_per_layer.csv``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from universal_neurons.description.effects import (
    effects_summary,
    headline_metrics,
    per_layer_table,
    select_universal,
    with_summary_columns,
)
from universal_neurons.description.neuron_profile import universal_neurons
from universal_neurons.io import atomic_outputs, read_parquet
from universal_neurons.outputs.effects_plot import plot_effects
from universal_neurons.pipeline.command import Out, Stage
from universal_neurons.pipeline.layout import Layout, model_name
from universal_neurons.pipeline.runner import stage_main

if TYPE_CHECKING:
    from universal_neurons.config import Params


def run(params: Params, layout: Layout) -> dict:
    """Select the universal neurons' rows of the candidates' effects; write the effects
    outputs and return the summary."""
    names = [model_name(seed) for seed in params.train.seeds]
    candidates = {
        name: read_parquet(layout.table("effects_candidates", name), "effects_candidates")
        for name in names
    }
    universal = {
        name: universal_neurons(read_parquet(layout.table("stats", name), "stats"))
        for name in names
    }
    selected = select_universal(candidates, universal)
    tables = {name: with_summary_columns(table) for name, table in selected.items()}
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
    params=("train.seeds", "effects"),
    inputs=lambda layout: [layout.stage_dir("effects_candidates"), layout.stage_dir("stats")],
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
