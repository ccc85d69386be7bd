"""correlate: every model of the group, one streaming pass -> every pair's statistics and maxima.

Writes ``data/correlate/``: ``pairs/seed{a}__seed{b}.safetensors`` (the pair's ``CrossMoments``,
x = seed a, y = seed b, a before b in train.seeds), ``max_corr.parquet`` (both directions of
every pair, one row per (model, partner, neuron)) and ``summary.json``.
"""

import json
from pathlib import Path

from stages.paths import CORRELATE_DIR, MODELS_DIR, TOKENS_DIR, model_name
from universal_neurons.collect import load_analysis_set
from universal_neurons.config import Params
from universal_neurons.io import atomic_path
from universal_neurons.models import check_device, check_fits_tokens, check_group, load_model
from universal_neurons.pairs import correlate_group, pair_key, pair_maxima, resolve_products
from universal_neurons.tokens import tokenizer_vocab


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
    models = {name: load_model(str(models_dir / name), device=cfg.device) for name in names}
    check_group(models)
    for name, model in models.items():
        check_fits_tokens(model, name, tokens, *tokenizer_vocab(tokens_dir))
    stats = correlate_group(
        models, tokens, excluded, cfg.batch_size, products, cfg.device, progress
    )
    assert stats.kept_positions == kept, (stats.kept_positions, kept)
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
    with atomic_path(output_dir) as temp:
        (temp / "pairs").mkdir(parents=True)
        for (a, b), pair in stats.pairs.items():
            pair.save(temp / "pairs" / f"{pair_key(a, b)}.safetensors", {"x": a, "y": b})
        maxima.to_parquet(temp / "max_corr.parquet", index=False)
        (temp / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary
