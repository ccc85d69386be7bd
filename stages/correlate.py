"""correlate: every model of the group, one streaming pass -> every pair's statistics and maxima.

Writes ``data/correlate/``: ``pairs/seed{a}__seed{b}.safetensors`` (the pair's ``CrossMoments``,
x = seed a, y = seed b, a before b in train.seeds), ``max_corr.parquet`` (both directions of
every pair, one row per (model, partner, neuron)) and ``summary.json``.
"""

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import torch

from stages.paths import CORRELATE_DIR, MODELS_DIR, TOKENS_DIR, model_name
from universal_neurons.collect import load_analysis_set
from universal_neurons.config import Params
from universal_neurons.io import atomic_path
from universal_neurons.models import (
    check_device,
    check_fits_tokens,
    check_group,
    load_model,
    model_dtype,
    model_shape,
)
from universal_neurons.pairs import (
    GroupStatistics,
    correlate_group,
    pair_key,
    pair_maxima,
    resolve_products,
)
from universal_neurons.tokens import tokenizer_vocab
from universal_neurons.units import UnitContext, execute, merge_units, plan_units, units_summary


def run(
    params: Params,
    tokens_dir: Path = TOKENS_DIR,
    models_dir: Path = MODELS_DIR,
    output_dir: Path = CORRELATE_DIR,
    progress: bool = True,
) -> dict:
    """Correlate every pair of the group; return the summary."""
    cfg = params.analysis
    products = resolve_products(params.correlate.products, cfg.device)
    check_device(cfg.device)
    tokens, excluded, kept = load_analysis_set(tokens_dir, cfg)
    names = [model_name(seed) for seed in params.train.seeds]
    if params.correlate.split():
        return _run_units(
            params,
            products,
            tokens,
            excluded,
            kept,
            names,
            tokens_dir,
            models_dir,
            output_dir,
            progress,
        )
    dtype = getattr(torch, model_dtype(cfg.device))  # bf16 models on CUDA (docs/scale.md)
    models = {name: load_model(str(models_dir / name), cfg.device, dtype) for name in names}
    check_group(models)
    for name, model in models.items():
        check_fits_tokens(model, name, tokens, *tokenizer_vocab(tokens_dir))
    stats = correlate_group(
        models, tokens, excluded, cfg.batch_size, products, cfg.device, progress
    )
    assert stats.kept_positions == kept, (stats.kept_positions, kept)
    return _write(params, stats, products, excluded, output_dir)


def _write(
    params: Params,
    stats: GroupStatistics,
    products: str,
    excluded,
    output_dir: Path,
    units=None,
    units_dir=None,
) -> dict:
    """Maxima + summary from the pairs' statistics; write ``output_dir`` atomically.

    ``units`` / ``units_dir``: the work units and where their files are (moved into
    ``output_dir/units``), when correlate ran in units.
    """
    kept = stats.kept_positions
    names = stats.names
    cfg = params.analysis
    maxima, dead = pair_maxima(stats, params.correlate.dead_variance)
    summary = {
        "models": names,
        "pairs": [pair_key(a, b) for a, b in stats.pairs],
        "kept_positions": int(kept),
        "batches": stats.batches,
        "n_layers": stats.n_layers,
        "d_mlp": stats.d_mlp,
        "products": products,
        "device": cfg.device,
        "dead": dead,
        "excluded_ids": [int(i) for i in excluded],
    }
    if units is not None:
        summary["units"] = units_summary(units) | {"executor": params.correlate.executor}
    with atomic_path(output_dir) as temp:
        (temp / "pairs").mkdir(parents=True)
        if units_dir is not None:
            shutil.move(str(units_dir), str(temp / "units"))
        for (a, b), pair in stats.pairs.items():
            pair.save(temp / "pairs" / f"{pair_key(a, b)}.safetensors", {"x": a, "y": b})
        maxima.to_parquet(temp / "max_corr.parquet", index=False)
        (temp / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary


def _run_units(
    params: Params,
    products,
    tokens,
    excluded,
    kept,
    names,
    tokens_dir,
    models_dir,
    output_dir,
    progress,
) -> dict:
    """correlate split into work units (pair x neuron block x token shard) run by an executor.

    The models are loaded here one at a time only to check them; the units load their own.
    Unit files are written to ``output_dir/units`` (via a work folder beside it) and merged.
    """
    cfg, corr = params.analysis, params.correlate
    shapes = {}
    for name in names:
        model = load_model(str(models_dir / name), device="cpu")
        check_fits_tokens(model, name, tokens, *tokenizer_vocab(tokens_dir))
        shapes[name] = SimpleNamespace(cfg=model.cfg)
        del model
    check_group(shapes)
    n_layers, d_mlp = model_shape(shapes[names[0]])
    units = plan_units(
        names, n_layers * d_mlp, len(tokens), cfg.batch_size, corr.neuron_block, corr.token_shards
    )
    work = Path(output_dir).parent / f".{Path(output_dir).name}-units.tmp"
    shutil.rmtree(work, ignore_errors=True)
    context = UnitContext(
        models={name: str((models_dir / name).resolve()) for name in names},
        tokens_dir=str(Path(tokens_dir).resolve()),
        analysis=cfg.model_dump(),
        products=products,
        device=cfg.device,
        units_dir=str(work.resolve()),
        dtype=model_dtype(cfg.device),
    )
    execute(
        units, context, corr.executor, corr.workers, corr.log_dir, corr.slurm.model_dump(), progress
    )
    pairs, batches = merge_units(units, work, n_layers * d_mlp)
    stats = GroupStatistics(
        names, n_layers, d_mlp, next(iter(pairs.values())).count, batches, pairs
    )
    assert stats.kept_positions == kept, (stats.kept_positions, kept)
    return _write(params, stats, products, excluded, output_dir, units, work)
