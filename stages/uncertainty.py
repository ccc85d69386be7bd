"""Stage uncertainty: intervals of % universal and each neuron's stability, at τ.

The threshold ``universality.threshold`` applied to every resample of
``uncertainty_resamples`` (the block bootstrap of each neuron's excess correlation): per
model and layer the ``uncertainty.confidence`` percentile interval of % universal, per
neuron its stability (the fraction of resamples in which it is universal) and its excess
interval (docs/uncertainty.md). Seconds: a new τ reruns this, not the resampling.

Writes ``data/uncertainty/seed{s}.parquet`` (one row per neuron: ``layer, index, dead,
is_universal, excess, excess_lo, excess_hi, stability``) and ``summary.json``,
``results/uncertainty.json`` (per model and layer: the percentile intervals, settings,
kept positions per block), its headline ``metrics/uncertainty.json`` and
``metrics/uncertainty_per_layer.csv``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from universal_neurons.io import atomic_outputs, read_json, read_npy, read_parquet
from universal_neurons.matching.uncertainty import (
    model_uncertainty,
    per_layer_interval_rows,
    uncertainty_headline,
    uncertainty_results,
)
from universal_neurons.pipeline.command import Out, Stage
from universal_neurons.pipeline.inputs import check_same_inputs, summary_of, write_summary
from universal_neurons.pipeline.layout import SUMMARY_FILE, Layout, model_name
from universal_neurons.pipeline.runner import stage_main

if TYPE_CHECKING:
    from universal_neurons.config import Params


def _settings(params: Params) -> dict:
    """What the intervals were made with (``results/uncertainty.json``)."""
    cfg = params.uncertainty
    keys = ("resamples", "blocks", "candidates", "baseline_draws", "confidence", "seed")
    return {
        **{key: getattr(cfg, key) for key in keys},
        "threshold": params.universality.threshold,
        "baseline_kind": params.baseline.kind,
    }


def _model(params: Params, layout: Layout, name: str):
    """One model's ``ModelUncertainty`` from its resampled excess and neuron table."""
    folder = layout.stage_dir("uncertainty_resamples")
    return model_uncertainty(
        read_npy(folder / f"{name}_resampled.npy", "uncertainty_resamples"),
        read_npy(folder / f"{name}_whole.npy", "uncertainty_resamples"),
        read_parquet(layout.table("universality", name), "universality"),
        threshold=params.universality.threshold,
        confidence=params.uncertainty.confidence,
    )


def run(params: Params, layout: Layout) -> dict:
    """Threshold every resample; write the tables and intervals; return the results document."""
    resamples_path = layout.summary("uncertainty_resamples")
    universality_path = layout.summary("universality")
    provenance = summary_of(resamples_path)
    check_same_inputs(
        {resamples_path: provenance, universality_path: summary_of(universality_path)}
    )
    models = {name: _model(params, layout, name) for name in map(model_name, params.train.seeds)}
    blocks = read_json(layout.stage_dir("uncertainty_resamples") / "blocks.json")
    counts = blocks["kept_positions_per_block"]
    results = uncertainty_results(models, counts, _settings(params), params.uncertainty.confidence)
    with atomic_outputs() as outputs:  # the outputs change together or not at all
        temp = outputs.path(layout.stage_dir("uncertainty"))
        temp.mkdir()
        for name, model in models.items():
            model.table.to_parquet(temp / f"{name}.parquet", index=False)
        write_summary(temp / SUMMARY_FILE, provenance.as_dict())
        outputs.write_json(layout.result("uncertainty.json"), results)
        outputs.write_json(layout.metric("uncertainty.json"), uncertainty_headline(results))
        per_layer = outputs.path(layout.metric("uncertainty_per_layer.csv"))
        per_layer_interval_rows(results).to_csv(per_layer, index=False)
    return results


COMMAND = Stage(
    name="uncertainty",
    params=(
        "baseline.kind",
        "train.seeds",
        "uncertainty.resamples",
        "uncertainty.blocks",
        "uncertainty.candidates",
        "uncertainty.baseline_draws",
        "uncertainty.confidence",
        "uncertainty.seed",
        "universality.threshold",
    ),
    inputs=lambda layout: [
        layout.stage_dir("uncertainty_resamples"),
        layout.stage_dir("universality"),
    ],
    outputs=lambda layout: [
        Out(layout.stage_dir("uncertainty")),
        Out(layout.result("uncertainty.json"), cache=False),
        Out(layout.metric("uncertainty.json"), kind="metrics", cache=False),
        Out(layout.metric("uncertainty_per_layer.csv"), kind="plots", cache=False),
    ],
    run=run,
)

if __name__ == "__main__":
    stage_main(COMMAND, __doc__)
