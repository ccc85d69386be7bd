"""Stage uncertainty: intervals of % universal and each neuron's stability (block bootstrap).

The analysis sequences are cut into ``uncertainty.blocks`` contiguous blocks; one pass
through every model keeps, per block, the sums of each neuron with its
``uncertainty.candidates`` best partner neurons and rotated directions of the whole set
(``matching.block_products``); each of ``uncertainty.resamples`` resamples weights the blocks
with bootstrap counts and takes baseline draw ``r mod uncertainty.baseline_draws``, and
redoes the universality test (``matching.resampling``; docs/uncertainty.md).

Needs correlate's full pair statistics (``data/correlate/pairs/``: a group of at most
``correlate.full_pairs_max_neurons`` neurons per model). Writes
``data/uncertainty/seed{s}.parquet`` (one row per neuron: ``layer, index, dead,
is_universal, excess, excess_lo, excess_hi, stability``) and ``summary.json``,
``results/uncertainty.json`` (per model and layer: the percentile intervals, settings,
kept positions per block), its headline ``metrics/uncertainty.json`` and
``metrics/uncertainty_per_layer.csv``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from universal_neurons.errors import UserError
from universal_neurons.io import atomic_outputs, read_npy, read_parquet
from universal_neurons.matching.activations import load_analysis_set
from universal_neurons.matching.block_products import accumulate_blocks
from universal_neurons.matching.correlation import CrossMoments
from universal_neurons.matching.resampling import (
    CandidateSums,
    block_bounds,
    block_weights,
    candidate_links,
    rotated_key,
    rotation_draws,
)
from universal_neurons.matching.uncertainty import (
    model_uncertainty,
    per_layer_interval_rows,
    uncertainty_headline,
    uncertainty_results,
)
from universal_neurons.models.loading import check_device, load_model
from universal_neurons.pipeline.command import Out, Stage
from universal_neurons.pipeline.inputs import (
    check_same_inputs,
    collect_summaries,
    correlate_summary,
    summary_of,
    write_summary,
)
from universal_neurons.pipeline.layout import SUMMARY_FILE, Layout, model_name
from universal_neurons.pipeline.runner import stage_main

if TYPE_CHECKING:
    from universal_neurons.config import Params


def _candidate_sums(params: Params, layout: Layout, summary, names: list[str]):
    """The empty ``CandidateSums`` of the group and its rotation matrices per partner."""
    cfg = params.uncertainty
    seeds = {model_name(s): s for s in params.train.seeds}
    shape = (summary.n_layers, summary.d_mlp)
    rotations = rotation_draws(
        params.baseline.kind, names, seeds, shape, cfg.baseline_draws, cfg.seed
    )
    within = {
        name: read_npy(layout.model_dir("collect", seeds[name]) / "within_layer_cov.npy", "collect")
        for name in names
    }
    pairs_dir = layout.stage_dir("correlate") / "pairs"
    pairs = (
        (tuple(key.split("__")), CrossMoments.load(pairs_dir / f"{key}.safetensors")[0])
        for key in summary.pairs
    )
    dead_variance = params.correlate.dead_variance
    links = candidate_links(pairs, within, rotations, cfg.candidates, dead_variance)
    n = summary.n_layers * summary.d_mlp
    columns = {name: n for name in names}
    columns |= {rotated_key(p, d): n for p in names for d in range(cfg.baseline_draws)}
    return CandidateSums(cfg.blocks, columns, links), rotations


def _block_sums(params: Params, layout: Layout, summary, progress: bool) -> CandidateSums:
    """The group's per-block candidate sums: one pass over the analysis token set."""
    cfg = params.analysis
    if summary.outputs != "full_pairs":
        raise UserError(
            "uncertainty: needs correlate's full pair statistics (data/correlate/pairs/), "
            "written only up to correlate.full_pairs_max_neurons neurons per model"
        )
    check_device(cfg.device)
    tokens, excluded, _ = load_analysis_set(layout.tokens, cfg)
    block_bounds(len(tokens), params.uncertainty.blocks)  # enough sequences, before any work
    names = [model_name(seed) for seed in params.train.seeds]
    sums, rotations = _candidate_sums(params, layout, summary, names)
    models = {
        model_name(seed): load_model(str(layout.model(seed)), device=cfg.device)
        for seed in params.train.seeds
    }
    rotations = {name: torch.as_tensor(m) for name, m in rotations.items()}
    return accumulate_blocks(
        models,
        tokens,
        excluded,
        cfg.batch_size,
        sums,
        rotations,
        summary.n_layers,
        device=cfg.device,
        progress=progress,
    )


def _settings(params: Params) -> dict:
    """What the intervals were made with (``results/uncertainty.json``)."""
    cfg = params.uncertainty
    keys = ("resamples", "blocks", "candidates", "baseline_draws", "confidence", "seed")
    return {
        **{key: getattr(cfg, key) for key in keys},
        "threshold": params.universality.threshold,
        "baseline_kind": params.baseline.kind,
    }


def run(params: Params, layout: Layout, progress: bool = True) -> dict:
    """Resample the group's universality test; write the tables and intervals; return the
    results document."""
    cfg = params.uncertainty
    summary = correlate_summary(params, layout)
    universality_path = layout.summary("universality")
    check_same_inputs(
        {
            layout.summary("correlate"): summary.provenance,
            universality_path: summary_of(universality_path),
            **collect_summaries(params, layout),
        }
    )
    sums = _block_sums(params, layout, summary, progress)
    weights = block_weights(cfg.blocks, cfg.resamples, cfg.seed)
    names = [model_name(seed) for seed in params.train.seeds]
    models = {
        name: model_uncertainty(
            sums,
            name,
            [p for p in names if p != name],
            weights,
            read_parquet(layout.table("universality", name), "universality"),
            draws=cfg.baseline_draws,
            threshold=params.universality.threshold,
            confidence=cfg.confidence,
            dead_variance=params.correlate.dead_variance,
        )
        for name in names
    }
    settings = _settings(params)
    results = uncertainty_results(models, sums, settings, cfg.confidence)
    with atomic_outputs() as outputs:  # the outputs change together or not at all
        temp = outputs.path(layout.stage_dir("uncertainty"))
        temp.mkdir()
        for name, model in models.items():
            model.table.to_parquet(temp / f"{name}.parquet", index=False)
        write_summary(temp / SUMMARY_FILE, summary.provenance.as_dict())
        outputs.write_json(layout.result("uncertainty.json"), results)
        outputs.write_json(layout.metric("uncertainty.json"), uncertainty_headline(results))
        per_layer = outputs.path(layout.metric("uncertainty_per_layer.csv"))
        per_layer_interval_rows(results).to_csv(per_layer, index=False)
    return results


COMMAND = Stage(
    name="uncertainty",
    params=(
        "analysis",
        "baseline.kind",
        "correlate.dead_variance",
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
        layout.tokens,
        layout.models,
        layout.stage_dir("collect"),
        layout.stage_dir("correlate"),
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
