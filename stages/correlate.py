"""Stage correlate: every pair's correlation statistics, reduced to what the later stages read.

The pairs are split into work units (pair x block of neurons x token shard, ``correlate.*``;
``analysis.units``) that an executor runs; with the defaults (inline, no neuron blocks, one
shard) that is one pass over the token set in this process, every model running once per
batch. Writes ``data/correlate/``: ``max_corr.parquet`` (both directions of every pair, one
row per (model, partner, neuron)), ``baseline_draws.parquet`` (the baseline maxima of every
draw of ``params.baseline``, which the baseline stage checks and summarises) and
``summary.json``. Nothing ``[N, N]`` is written at any size (docs/sharing.md):

- for a group of at most ``correlate.full_pairs_max_neurons`` neurons per model the pass
  merges every pair's full ``CrossMoments`` in memory, and ``matching.pair_reductions`` takes
  from them the baseline draws, the one-to-one matching (for the one_to_one stage) and the
  candidate links of ``uncertainty.candidates`` (for uncertainty_resamples), with each model's
  within-layer covariances taken here by collect's pass (``within_covariances``); when the
  work was split, also ``units/`` (every unit's statistics) and a ``units`` summary;
- above it each unit reduces its block to per-neuron maxima and the baseline draws
  (collect's within-layer covariances); one_to_one is then not available, and
  uncertainty_resamples finds its candidates itself.

Units write their files into ``data/.correlate-units.tmp/`` with the digest of their inputs;
a rerun after a kill runs only the units without a complete file there.
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from universal_neurons.errors import MissingInputError, UserError
from universal_neurons.io import atomic_path
from universal_neurons.matching.activations import load_analysis_set, token_set_record
from universal_neurons.matching.collect import collect_model
from universal_neurons.matching.maxima import BaselineDraws, check_whole_layers, pair_tables
from universal_neurons.matching.pair_reductions import (
    BASELINE_DRAWS,
    CandidateSettings,
    Reductions,
    reduce_pairs,
    save_reductions,
)
from universal_neurons.matching.pairs import (
    GroupStatistics,
    pair_key,
    pair_maxima,
    resolve_products,
)
from universal_neurons.matching.plan import GroupShape, check_memory, shape_from_config
from universal_neurons.matching.units import (
    Unit,
    UnitContext,
    execute,
    merge_block_maxima,
    merge_units,
    pending_units,
    plan_units,
    unit_manifest,
    units_summary,
)
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
from universal_neurons.pipeline.inputs import (
    CorrelateSummary,
    Provenance,
    check_same_inputs,
    collect_summaries,
    write_summary,
)
from universal_neurons.pipeline.layout import SUMMARY_FILE, Layout, model_name
from universal_neurons.pipeline.runner import stage_main
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


def _work_folder(output_dir: Path) -> Path:
    """The folder beside ``output_dir`` where the units' files wait for the merge; it
    survives a killed run (the next run reuses its complete files) and is removed once the
    outputs are written."""
    return output_dir.parent / f".{output_dir.name}-units.tmp"


def _summary(
    params: Params, stats: GroupStatistics, products: str, excluded, dead, **fields
) -> CorrelateSummary:
    """``summary.json``: the group, its pairs, how it was computed, and ``fields`` (the token
    set's record, what it wrote)."""
    return CorrelateSummary(
        models=stats.names,
        pairs=[pair_key(a, b) for a, b in stats.pairs],
        kept_positions=int(stats.kept_positions),
        batches=stats.batches,
        n_layers=stats.n_layers,
        d_mlp=stats.d_mlp,
        products=products,
        device=params.analysis.device,
        dead=dead,
        excluded_ids=[int(i) for i in excluded],
        **fields,
    )


def _write(
    output_dir: Path,
    reductions: Reductions | None,
    summary: CorrelateSummary,
    tables: dict,
    units_dir,
) -> None:
    """Write the tables (``{file name: DataFrame}``), the summary, the pair statistics'
    ``reductions`` (None above the threshold) and the unit files (if given), atomically."""
    with atomic_path(output_dir) as temp:
        temp.mkdir(parents=True)
        if units_dir is not None:
            shutil.move(str(units_dir), str(temp / "units"))
        if reductions is not None:
            save_reductions(temp, reductions)
        for name, table in tables.items():
            table.to_parquet(temp / name, index=False)
        write_summary(temp / SUMMARY_FILE, summary.as_dict())


def within_covariances(
    params: Params, layout: Layout, analysis_set: tuple[np.ndarray, np.ndarray], progress: bool
) -> dict[str, np.ndarray]:
    """Per model, the within-layer covariance ``[layers, d_mlp, d_mlp]`` float64 of its
    post-activations over ``analysis_set`` (``(tokens [sequences, pos], excluded ids)``), by
    collect's own pass (``matching.collect.collect_model``: the numbers collect writes above
    ``correlate.full_pairs_max_neurons``, bit for bit). Below that size collect leaves them
    out of its outputs (docs/sharing.md), and they are small: ``[layers, d, d]``."""
    cfg = params.analysis
    if progress:
        print(
            "correlate: each model's within-layer covariances, by collect's pass", file=sys.stderr
        )
    within = {}
    for seed in params.train.seeds:
        model = load_model(str(layout.model(seed)), device=cfg.device)
        result = collect_model(
            model,
            model_name(seed),
            *analysis_set,
            cfg.batch_size,
            device=cfg.device,
            progress=progress,
        )
        within[model_name(seed)] = result.within_layer_covariance()
    return within


def pair_reductions(params: Params, pairs: dict, within: dict) -> Reductions:
    """What the baseline, one_to_one and uncertainty_resamples stages read of the full pair
    statistics ``pairs`` (``{(a, b): CrossMoments}``; ``matching.pair_reductions``);
    ``within``: ``within_covariances``."""
    partner_ids = {model_name(seed): seed for seed in params.train.seeds}
    return reduce_pairs(
        pairs,
        partner_ids,
        within,
        params.baseline,
        CandidateSettings.of(params),
        params.correlate.dead_variance,
    )


def _group_shape(params: Params, layout: Layout, spec: ModelSpec, context: int) -> GroupShape:
    """The group's ``GroupShape`` for the memory check (``d_model`` from the first model's
    config); ``context``: tokens per sequence of the analysis set."""
    first = shape_from_config(layout.model(params.train.seeds[0]), len(params.train.seeds))
    return GroupShape(
        len(params.train.seeds), spec.n_layers, spec.d_mlp, first.d_model, spec.d_vocab, context
    )


def _check_within_file(path: Path) -> None:
    """Stop before the pass unless collect's within-layer covariances ``path`` are a whole
    ``.npy`` array (a memory map checks the header against the size and reads nothing)."""
    rerun = "rerun collect with this params.yaml"
    if not path.is_file():
        raise MissingInputError(
            f"{path}: not found (collect writes it above correlate.full_pairs_max_neurons: {rerun})"
        )
    try:
        np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        reason = " ".join(str(exc).split())[:160]
        raise UserError(f"{path}: not a readable .npy array ({reason}); {rerun}") from None


def _draws(params: Params, layout: Layout, work: Path) -> BaselineDraws:
    """The baseline draws the units take above the threshold (``params.baseline``), with
    collect's within-layer covariances and a cache of drawn matrices in the work folder."""
    cfg = params.baseline
    seeds = params.train.seeds
    paths = {model_name(s): layout.model_dir("collect", s) / "within_layer_cov.npy" for s in seeds}
    for path in paths.values():
        _check_within_file(path)
    within = {name: str(path.resolve()) for name, path in paths.items()}
    collect_summaries(params, layout)  # each folder's output is about its own model
    partner_ids = {model_name(s): s for s in seeds}
    cache = str((work / "mixing").resolve())
    return BaselineDraws(cfg.kind, cfg.samples, cfg.seed, partner_ids, within, cache)


def _unit_context(params: Params, layout: Layout, products: str, work: Path, shape) -> UnitContext:
    """What the unit runs need, as plain values (absolute paths: workers may run elsewhere);
    ``shape``: ``(n_layers, d_mlp)`` of the group."""
    device = params.analysis.device
    full = params.correlate.full_pairs(shape[0] * shape[1])
    return UnitContext(
        models={model_name(s): str(layout.model(s).resolve()) for s in params.train.seeds},
        tokens_dir=str(Path(layout.tokens).resolve()),
        analysis=params.analysis.model_dump(),
        products=products,
        device=device,
        units_dir=str(work.resolve()),
        dtype=model_dtype(device),  # bf16 models on CUDA (docs/scale.md)
        one_pass=not params.correlate.split(),
        draws=None if full else _draws(params, layout, work),
        dead_variance=params.correlate.dead_variance,
        d_mlp=shape[1],
    )


def _manifest(context: UnitContext, tokens: np.ndarray, excluded: np.ndarray) -> str:
    """The digest of the inputs of every unit: models, token set, precision, device, draws."""
    settings = {
        "excluded": [int(i) for i in excluded],
        "products": context.products,
        "device": context.device,
        "dtype": context.dtype,
        "draws": None if context.draws is None else asdict(context.draws) | {"cache_dir": ""},
        "dead_variance": context.dead_variance,
    }
    return unit_manifest(context.models, tokens, settings)


def _run_units(params: Params, units: list[Unit], context: UnitContext, progress: bool) -> None:
    """Run every unit that has no complete file yet with the configured executor."""
    corr = params.correlate
    pending = pending_units(units, context.units_dir, context.manifest)
    if len(pending) < len(units):
        print(
            f"correlate: {len(units) - len(pending)} of {len(units)} units complete from an "
            f"earlier run; running {len(pending)}",
            file=sys.stderr,
        )
    if pending:
        slurm = corr.slurm.model_dump()
        execute(pending, context, corr.executor, corr.workers, corr.log_dir, slurm, progress)


def _full_outputs(params: Params, within: dict, units, context, stats_of: tuple, n: int):
    """Below the threshold: the maxima table and the reductions of every pair's full
    statistics (merged in memory, never written); ``within``: ``within_covariances``."""
    names, spec, kept = stats_of
    pairs, batches = merge_units(units, context.units_dir, n)
    stats = GroupStatistics(names, spec.n_layers, spec.d_mlp, kept, batches, pairs)
    maxima, dead = pair_maxima(stats, params.correlate.dead_variance)
    reductions = pair_reductions(params, pairs, within)
    return stats, reductions, {"max_corr.parquet": maxima}, dead


def _maxima_outputs(params: Params, _within: None, units, context, stats_of: tuple, n: int):
    """Above the threshold: the maxima and baseline tables from the units' block maxima."""
    names, spec, kept = stats_of
    pairs, batches = merge_block_maxima(units, context, n)
    maxima, baselines, dead = pair_tables(
        pairs, names, spec.n_layers, spec.d_mlp, params.correlate.dead_variance
    )
    stats = GroupStatistics(names, spec.n_layers, spec.d_mlp, kept, batches, pairs)
    tables = {"max_corr.parquet": maxima, BASELINE_DRAWS: baselines}
    return stats, None, tables, dead


def run(params: Params, layout: Layout, progress: bool = True) -> dict:
    """Correlate every pair of the group; return the summary."""
    cfg, corr = params.analysis, params.correlate
    products = resolve_products(corr.products, cfg.device)
    check_device(cfg.device)
    tokens, excluded, kept = load_analysis_set(layout.tokens, cfg)
    names = [model_name(seed) for seed in params.train.seeds]
    spec = group_specs(params.train.seeds, layout, tokens)[names[0]]
    n = spec.n_layers * spec.d_mlp
    full = corr.full_pairs(n)
    if not full:
        check_whole_layers(corr.neuron_block, spec.d_mlp)
    check_memory(params, _group_shape(params, layout, spec, tokens.shape[1]))
    record = token_set_record(tokens, excluded, kept, cfg.split)
    # collect's outputs (moments, and above the threshold the covariances the baseline draws
    # read after the pass): checked before it
    analysis_set = {Path(layout.tokens): Provenance(record, group=names)}
    check_same_inputs(analysis_set | collect_summaries(params, layout))
    within = within_covariances(params, layout, (tokens, excluded), progress) if full else None
    units = plan_units(names, n, len(tokens), cfg.batch_size, corr.neuron_block, corr.token_shards)
    output_dir = layout.stage_dir("correlate")
    work = _work_folder(output_dir)
    context = _unit_context(params, layout, products, work, (spec.n_layers, spec.d_mlp))
    context = replace(context, manifest=_manifest(context, tokens, excluded))
    try:
        _run_units(params, units, context, progress)
    except UserError:  # bad input: no unit file is worth resuming (a kill keeps them)
        shutil.rmtree(work, ignore_errors=True)
        raise
    outputs = _full_outputs if full else _maxima_outputs
    stats, reductions, tables, dead = outputs(
        params, within, units, context, (names, spec, kept), n
    )
    assert stats.kept_positions == kept
    summary = _summary(
        params,
        stats,
        products,
        excluded,
        dead,
        outputs="full_pairs" if full else "maxima",
        token_set=record,
        baseline=params.baseline.model_dump(),
        units=units_summary(units) | {"executor": corr.executor} if corr.split() else None,
    )
    keep_units = work if corr.split() and full else None
    _write(output_dir, reductions, summary, tables, keep_units)
    shutil.rmtree(work, ignore_errors=True)
    return summary.as_dict()


COMMAND = Stage(
    name="correlate",
    params=(
        "analysis",
        "baseline",
        "correlate",
        "train.seeds",
        "uncertainty.baseline_draws",
        "uncertainty.candidates",
        "uncertainty.seed",
    ),
    inputs=lambda layout: [layout.tokens, layout.models, layout.stage_dir("collect")],
    outputs=lambda layout: [Out(layout.stage_dir("correlate"))],
    run=run,
    render=lambda summary: json.dumps(
        {k: summary[k] for k in ("pairs", "kept_positions", "dead")}, indent=2
    ),
)

if __name__ == "__main__":
    stage_main(COMMAND, __doc__)
