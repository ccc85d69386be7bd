"""Stage correlate: every pair's correlation statistics and per-neuron maxima.

The pairs are split into work units (pair x block of neurons x token shard, ``correlate.*``;
``analysis.units``) that an executor runs; with the defaults (inline, no neuron blocks, one
shard) that is one pass over the token set in this process, every model running once per
batch. Writes ``data/correlate/``: ``pairs/seed{a}__seed{b}.safetensors`` (the pair's
``CrossMoments``, x = seed a, y = seed b, a before b in train.seeds), ``max_corr.parquet``
(both directions of every pair, one row per (model, partner, neuron)) and ``summary.json``;
when the work was split, also ``units/`` (every unit's statistics) and a ``units`` summary.
"""

from __future__ import annotations

import json
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from universal_neurons.analysis.activations import (
    activation_memory,
    load_analysis_set,
    token_set_record,
)
from universal_neurons.analysis.pairs import (
    GroupStatistics,
    pair_key,
    pair_maxima,
    resolve_products,
)
from universal_neurons.analysis.units import (
    Unit,
    UnitContext,
    execute,
    merge_units,
    plan_units,
    units_summary,
)
from universal_neurons.io import atomic_path
from universal_neurons.models.loading import (
    ModelSpec,
    check_device,
    check_fits_tokens,
    check_group,
    load_model,
    model_dtype,
    model_spec,
)
from universal_neurons.pipeline.command import Out, Stage
from universal_neurons.pipeline.layout import Layout, model_name
from universal_neurons.resources import check_memory
from universal_neurons.text.tokens import tokenizer_vocab

if TYPE_CHECKING:
    from universal_neurons.config import Params


def load_specs(seeds: list[int], layout: Layout) -> dict[str, ModelSpec]:
    """``{name: ModelSpec}`` of the models of ``seeds``, each loaded once on the CPU."""
    return {
        model_name(seed): model_spec(load_model(str(layout.model(seed)), device="cpu"))
        for seed in seeds
    }


def group_specs(seeds: list[int], layout: Layout, tokens: np.ndarray) -> dict[str, ModelSpec]:
    """The ``ModelSpec`` of every model, checked to share one shape and one tokenizer and to
    accept the token set ``tokens``."""
    specs = load_specs(seeds, layout)
    check_group(specs)
    vocab = tokenizer_vocab(layout.tokens)
    for name, spec in specs.items():
        check_fits_tokens(spec, name, tokens, *vocab)
    return specs


def _check_memory(params: Params, spec: ModelSpec, shape: tuple[int, int]) -> None:
    """Stop before the pass if the pair statistics and one batch's activations of the group
    need more memory than there is."""
    seeds = params.train.seeds
    n_layers, d_mlp = spec.n_layers, spec.d_mlp
    n = n_layers * d_mlp
    held = len(seeds) * (len(seeds) - 1) // 2
    pairs = (f"train.seeds={seeds} ({n} neurons per model)", 2 * 8 * held * n * n)
    batch = activation_memory(params.analysis, shape, n_layers, d_mlp, len(seeds))
    check_memory(
        {"pair statistics": pairs, "activations of one batch": batch},
        f"correlating {len(seeds)} models of {n} neurons",
    )


@contextmanager
def _work_folder(output_dir: Path):
    """A fresh folder beside ``output_dir`` for the unit files, removed afterwards."""
    work = output_dir.parent / f".{output_dir.name}-units.tmp"
    shutil.rmtree(work, ignore_errors=True)
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _summary(params: Params, stats: GroupStatistics, products: str, excluded, dead) -> dict:
    """``summary.json``: the group, its pairs, the token set and how it was computed (the
    token set's record is added by ``run``)."""
    return {
        "models": stats.names,
        "group": stats.names,
        "pairs": [pair_key(a, b) for a, b in stats.pairs],
        "kept_positions": int(stats.kept_positions),
        "batches": stats.batches,
        "n_layers": stats.n_layers,
        "d_mlp": stats.d_mlp,
        "products": products,
        "device": params.analysis.device,
        "dead": dead,
        "excluded_ids": [int(i) for i in excluded],
    }


def _write(output_dir: Path, stats: GroupStatistics, summary: dict, maxima, units_dir) -> None:
    """Write the pairs, the maxima and the summary (and the unit files, if given) atomically."""
    with atomic_path(output_dir) as temp:
        (temp / "pairs").mkdir(parents=True)
        if units_dir is not None:
            shutil.move(str(units_dir), str(temp / "units"))
        for (a, b), pair in stats.pairs.items():
            pair.save(temp / "pairs" / f"{pair_key(a, b)}.safetensors", {"x": a, "y": b})
        maxima.to_parquet(temp / "max_corr.parquet", index=False)
        (temp / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")


def _unit_context(params: Params, layout: Layout, products: str, work: Path) -> UnitContext:
    """What the unit runs need, as plain values (absolute paths: workers may run elsewhere)."""
    device = params.analysis.device
    return UnitContext(
        models={model_name(s): str(layout.model(s).resolve()) for s in params.train.seeds},
        tokens_dir=str(Path(layout.tokens).resolve()),
        analysis=params.analysis.model_dump(),
        products=products,
        device=device,
        units_dir=str(work.resolve()),
        dtype=model_dtype(device),  # bf16 models on CUDA (docs/scale.md)
        one_pass=not params.correlate.split(),
    )


def _run_units(params: Params, units: list[Unit], context: UnitContext, progress: bool, n: int):
    """Run every unit with the configured executor; merge them into every pair's statistics
    ``[n, n]``."""
    corr = params.correlate
    execute(
        units, context, corr.executor, corr.workers, corr.log_dir, corr.slurm.model_dump(), progress
    )
    return merge_units(units, context.units_dir, n)


def run(params: Params, layout: Layout, progress: bool = True) -> dict:
    """Correlate every pair of the group; return the summary."""
    cfg, corr = params.analysis, params.correlate
    products = resolve_products(corr.products, cfg.device)
    check_device(cfg.device)
    tokens, excluded, kept = load_analysis_set(layout.tokens, cfg)
    names = [model_name(seed) for seed in params.train.seeds]
    spec = group_specs(params.train.seeds, layout, tokens)[names[0]]
    _check_memory(params, spec, tokens.shape)
    n = spec.n_layers * spec.d_mlp
    units = plan_units(names, n, len(tokens), cfg.batch_size, corr.neuron_block, corr.token_shards)
    output_dir = layout.stage_dir("correlate")
    with _work_folder(output_dir) as work:
        context = _unit_context(params, layout, products, work)
        pairs, batches = _run_units(params, units, context, progress, n)
        stats = GroupStatistics(names, spec.n_layers, spec.d_mlp, kept, batches, pairs)
        assert next(iter(pairs.values())).count == kept
        maxima, dead = pair_maxima(stats, corr.dead_variance)
        summary = _summary(params, stats, products, excluded, dead)
        summary["token_set"] = token_set_record(tokens, excluded, kept, cfg.split)
        if corr.split():
            summary["units"] = units_summary(units) | {"executor": corr.executor}
        _write(output_dir, stats, summary, maxima, work if corr.split() else None)
    return summary


COMMAND = Stage(
    name="correlate",
    params=("analysis", "correlate", "train.seeds"),
    inputs=lambda layout: [layout.tokens, layout.models],
    outputs=lambda layout: [Out(layout.stage_dir("correlate"))],
    run=run,
    render=lambda summary: json.dumps(
        {k: summary[k] for k in ("pairs", "kept_positions", "dead")}, indent=2
    ),
)
