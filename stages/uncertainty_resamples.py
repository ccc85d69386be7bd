"""Stage uncertainty_resamples: the block bootstrap of every neuron's excess correlation.

The analysis sequences are cut into ``uncertainty.blocks`` contiguous blocks; one pass
through every model keeps, per block, the sums of each neuron with its
``uncertainty.candidates`` best partner neurons and rotated directions of the whole set
(``matching.block_products``); each of ``uncertainty.resamples`` resamples weights the blocks
with bootstrap counts and takes baseline draw ``r mod uncertainty.baseline_draws``
(``matching.resampling``; docs/uncertainty.md). No threshold: the uncertainty stage applies
τ, so a new τ reruns only that cheap stage.

Candidates come from correlate, which takes them while it holds the full pair statistics
(``candidate_links.safetensors``, ``matching.pair_reductions``: a group of at most
``correlate.full_pairs_max_neurons`` neurons per model). Above that it never holds them, and
the stage finds the candidates itself, slab by slab of whole layers, never holding an
``[N, N]`` matrix (``matching.slabs``: models in correlate's dtype, products in its
precision, every ``[B, N]`` sum on ``analysis.device``; slabs sized to that device's memory,
the GPU's on CUDA, or ``UNIVERSAL_NEURONS_MEMORY_GB``; the rotation matrices memory-mapped
in the outputs' temporary folder under ``data/``, removed with it). Writes
``data/uncertainty_resamples/``: ``seed{s}_resampled.npy`` (float64 ``[resamples, neurons]``,
layer-major), ``seed{s}_whole.npy`` (``[neurons]``: every block once, the draws averaged),
``blocks.json`` (kept positions per block) and ``summary.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from universal_neurons.io import atomic_outputs
from universal_neurons.matching.activations import load_analysis_set
from universal_neurons.matching.block_products import accumulate_blocks
from universal_neurons.matching.pair_reductions import CandidateSettings, load_links
from universal_neurons.matching.plan import RUNTIME
from universal_neurons.matching.resampling import (
    CandidateSums,
    block_bounds,
    block_weights,
    rotated_key,
    rotation_draws,
)
from universal_neurons.matching.slabs import (
    CandidateInputs,
    accumulate_slabs,
    candidate_sums_bytes,
    device_memory_limit,
    mapped_npy,
    mapped_rotation_draws,
    plan_slabs,
    slab_candidate_links,
    slab_layers,
    slab_memory,
)
from universal_neurons.matching.uncertainty import group_resampled_excess
from universal_neurons.matching.units import PassSettings
from universal_neurons.models.loading import check_device, load_model, model_dtype
from universal_neurons.pipeline.command import Out, Stage
from universal_neurons.pipeline.inputs import (
    check_same_inputs,
    collect_summaries,
    correlate_summary,
    write_summary,
)
from universal_neurons.pipeline.layout import SUMMARY_FILE, Layout, model_name
from universal_neurons.pipeline.runner import stage_main
from universal_neurons.resources import check_memory

if TYPE_CHECKING:
    from universal_neurons.config import Params


def _columns(names: list[str], n: int, draws: int) -> dict[str, int]:
    """``{key: n}``: every model's neurons and every draw's rotated directions of it."""
    columns = {name: n for name in names}
    return columns | {rotated_key(p, d): n for p in names for d in range(draws)}


def _candidate_sums(params: Params, layout: Layout, summary, names: list[str]):
    """The empty ``CandidateSums`` of the group and its rotation matrices per partner."""
    cfg = params.uncertainty
    seeds = {model_name(s): s for s in params.train.seeds}
    shape = (summary.n_layers, summary.d_mlp)
    rotations = rotation_draws(
        params.baseline.kind, names, seeds, shape, cfg.baseline_draws, cfg.seed
    )
    links = load_links(layout.stage_dir("correlate"), CandidateSettings.of(params))
    n = summary.n_layers * summary.d_mlp
    return CandidateSums(cfg.blocks, _columns(names, n, cfg.baseline_draws), links), rotations


def _slab_layers(params: Params, summary, models: dict, batch_tokens: int) -> int:
    """Whole layers per slab: the most that fit beside the loaded models in the memory of
    ``analysis.device`` (``slabs.device_memory_limit``: on CUDA the GPU's, where the slab's
    ``[B, N]`` sums live), after checking that the candidate sums and the process fit the
    host (``resources.check_memory``; on the CPU everything shares one limit)."""
    cfg, device = params.uncertainty, params.analysis.device
    n = summary.n_layers * summary.d_mlp
    sums = candidate_sums_bytes(cfg.blocks, len(models), cfg.baseline_draws, n, cfg.candidates)
    weights = sum(p.numel() * p.element_size() for m in models.values() for p in m.parameters())
    host = {
        "the candidate sums": ("uncertainty.blocks", sums),
        "the process": ("analysis", RUNTIME),
    }
    fixed = {"the models": ("train.seeds", weights)}
    if torch.device(device).type == "cuda":
        check_memory(host, "uncertainty_resamples's candidate sums on the host")
    else:
        fixed |= host
    shape = (len(models), summary.n_layers, summary.d_mlp)
    return slab_layers(
        summary.n_layers,
        lambda layers: slab_memory(*shape, layers, batch_tokens),
        fixed,
        device_memory_limit(device),
    )


def _slab_models(params: Params, layout: Layout) -> dict:
    """``{name: model}`` of the group on ``analysis.device``, in correlate's dtype
    (``loading.model_dtype``: bfloat16 on CUDA, float32 on the CPU)."""
    device = params.analysis.device
    dtype = getattr(torch, model_dtype(device))
    return {
        model_name(s): load_model(str(layout.model(s)), device=device, dtype=dtype)
        for s in params.train.seeds
    }


def _slab_sums(params: Params, layout: Layout, summary, analysis_set, scratch: Path, progress):
    """The group's per-block candidate sums without full pair statistics: candidates and
    sums slab by slab (``matching.slabs``) in correlate's model dtype and ``products``
    precision (its summary's), the rotation matrices memory-mapped in ``scratch``;
    ``analysis_set``: ``(tokens [sequences, pos], excluded ids)``."""
    cfg, analysis = params.uncertainty, params.analysis
    seeds = {model_name(s): s for s in params.train.seeds}
    models = _slab_models(params, layout)
    shape = (summary.n_layers, summary.d_mlp)
    rotations = mapped_rotation_draws(
        params.baseline.kind, seeds, shape, cfg.baseline_draws, cfg.seed, scratch
    )
    within = {
        name: mapped_npy(layout.model_dir("collect", s) / "within_layer_cov.npy", "collect")
        for name, s in seeds.items()
    }
    inputs = CandidateInputs(within, rotations, cfg.candidates, params.correlate.dead_variance)
    settings = PassSettings(analysis.batch_size, summary.products, analysis.device)
    layers = _slab_layers(params, summary, models, analysis.batch_size * analysis_set[0].shape[1])
    slabs = plan_slabs(list(models), *shape, layers)
    links = slab_candidate_links(slabs, models, analysis_set, settings, inputs)
    columns = _columns(list(models), shape[0] * shape[1], cfg.baseline_draws)
    sums = CandidateSums(cfg.blocks, columns, links)
    return accumulate_slabs(models, analysis_set, settings, sums, rotations, slabs, progress)


def _block_sums(
    params: Params, layout: Layout, summary, progress: bool, scratch: Path
) -> CandidateSums:
    """The group's per-block candidate sums: one pass over the analysis token set with
    correlate's full pair statistics, else slab by slab (``_slab_sums``, in ``scratch``)."""
    cfg = params.analysis
    check_device(cfg.device)
    tokens, excluded, _ = load_analysis_set(layout.tokens, cfg)
    block_bounds(len(tokens), params.uncertainty.blocks)  # enough sequences, before any work
    if summary.outputs != "full_pairs":
        return _slab_sums(params, layout, summary, (tokens, excluded), scratch, progress)
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
    with atomic_outputs() as outputs:
        temp = outputs.path(layout.stage_dir("uncertainty_resamples"))
        # scratch (memory-mapped rotations) beside the output in its temporary folder: removed
        # with it, and one left by a killed run is removed by the next run's write
        sums = _block_sums(params, layout, summary, progress, temp.parent / "rotations")
        weights = block_weights(cfg.blocks, cfg.resamples, cfg.seed)
        names = [model_name(seed) for seed in params.train.seeds]
        dead_variance = params.correlate.dead_variance
        excess = group_resampled_excess(
            sums, names, weights, draws=cfg.baseline_draws, dead_variance=dead_variance
        )
        blocks = {"kept_positions_per_block": [int(c) for c in sums.count]}
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
