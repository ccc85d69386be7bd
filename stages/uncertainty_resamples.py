"""Stage uncertainty_resamples: the block bootstrap of every neuron's excess correlation.

The analysis sequences are cut into ``uncertainty.blocks`` contiguous blocks; one pass
through every model keeps, per block, the sums of each neuron with its
``uncertainty.candidates`` best partner neurons and rotated directions of the whole set
(``matching.block_products``); each of ``uncertainty.resamples`` resamples weights the blocks
with bootstrap counts and takes baseline draw ``r mod uncertainty.baseline_draws``
(``matching.resampling``; docs/uncertainty.md). No threshold: the uncertainty stage applies
τ, so a new τ reruns only that cheap stage.

Needs correlate's full pair statistics (``data/correlate/pairs/``: a group of at most
``correlate.full_pairs_max_neurons`` neurons per model). Writes
``data/uncertainty_resamples/``: ``seed{s}_resampled.npy`` (float64 ``[resamples, neurons]``,
layer-major), ``seed{s}_whole.npy`` (``[neurons]``: every block once, the draws averaged),
``blocks.json`` (kept positions per block) and ``summary.json``.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np
import torch

from universal_neurons.errors import UserError
from universal_neurons.io import atomic_outputs, read_npy
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
from universal_neurons.matching.uncertainty import group_resampled_excess
from universal_neurons.models.loading import check_device, load_model
from universal_neurons.pipeline.command import Out, Stage
from universal_neurons.pipeline.inputs import (
    check_same_inputs,
    collect_summaries,
    correlate_summary,
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


def run(params: Params, layout: Layout, progress: bool = True) -> dict:
    """Resample every model's excess correlation; write the arrays; return the block counts."""
    cfg = params.uncertainty
    summary = correlate_summary(params, layout)
    check_same_inputs(
        {layout.summary("correlate"): summary.provenance, **collect_summaries(params, layout)}
    )
    sums = _block_sums(params, layout, summary, progress)
    weights = block_weights(cfg.blocks, cfg.resamples, cfg.seed)
    names = [model_name(seed) for seed in params.train.seeds]
    excess = group_resampled_excess(
        sums, names, weights, draws=cfg.baseline_draws, dead_variance=params.correlate.dead_variance
    )
    blocks = {"kept_positions_per_block": [int(c) for c in sums.count]}
    with atomic_outputs() as outputs:
        temp = outputs.path(layout.stage_dir("uncertainty_resamples"))
        temp.mkdir()
        for name, (resampled, whole) in excess.items():
            np.save(temp / f"{name}_resampled.npy", resampled)
            np.save(temp / f"{name}_whole.npy", whole)
        (temp / "blocks.json").write_text(json.dumps(blocks, indent=2) + "\n")
        write_summary(temp / SUMMARY_FILE, summary.provenance.as_dict())
    return blocks


COMMAND = Stage(
    name="uncertainty_resamples",
    params=(
        "analysis",
        "baseline.kind",
        "correlate.dead_variance",
        "train.seeds",
        "uncertainty.resamples",
        "uncertainty.blocks",
        "uncertainty.candidates",
        "uncertainty.baseline_draws",
        "uncertainty.seed",
    ),
    inputs=lambda layout: [
        layout.tokens,
        layout.models,
        layout.stage_dir("collect"),
        layout.stage_dir("correlate"),
    ],
    outputs=lambda layout: [Out(layout.stage_dir("uncertainty_resamples"))],
    run=run,
)

if __name__ == "__main__":
    stage_main(COMMAND, __doc__)
