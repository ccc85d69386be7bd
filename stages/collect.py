"""collect: one model, one streaming pass -> per-neuron moments + within-layer covariance.

Writes ``data/collect/seed{s}/``: ``moments.parquet`` (one row per neuron), ``within_layer_cov.npy``
(float64 ``[layers, d_mlp, d_mlp]``, population covariance of post-activations over the kept
positions) and ``summary.json``.
"""

import json
from pathlib import Path

import numpy as np

from stages.paths import MODELS_DIR, TOKENS_DIR, collect_dir, model_name
from universal_neurons.collect import collect_model, load_analysis_set, moments_table
from universal_neurons.config import Params
from universal_neurons.io import atomic_path
from universal_neurons.models import check_device, check_fits_tokens, load_model
from universal_neurons.tokens import tokenizer_vocab


def run(
    params: Params,
    seed: int,
    tokens_dir: Path = TOKENS_DIR,
    models_dir: Path = MODELS_DIR,
    output_dir: Path | None = None,
    progress: bool = True,
) -> dict:
    """Collect the statistics of the model of ``seed``; return the summary."""
    if seed not in params.train.seeds:
        raise ValueError(f"--seed: {seed} is not one of train.seeds {params.train.seeds}")
    cfg = params.analysis
    name = model_name(seed)
    output_dir = output_dir or collect_dir(seed)
    check_device(cfg.device)
    tokens, excluded, kept = load_analysis_set(tokens_dir, cfg)
    model = load_model(str(models_dir / name), device=cfg.device)
    check_fits_tokens(model, name, tokens, *tokenizer_vocab(tokens_dir))
    result = collect_model(
        model, name, tokens, excluded, cfg.batch_size, cfg.device, progress=progress
    )
    assert result.kept_positions == kept, (result.kept_positions, kept)
    summary = {
        "model": name,
        "kept_positions": int(kept),
        "sequences": int(len(tokens)),
        "batches": result.batches,
        "excluded_ids": [int(i) for i in excluded],
        "n_layers": result.n_layers,
        "d_mlp": result.d_mlp,
        "zero_variance_post": int((result.moments["post"].var == 0).sum()),
    }
    with atomic_path(output_dir) as temp:
        temp.mkdir()
        moments_table(result).to_parquet(temp / "moments.parquet", index=False)
        with (temp / "within_layer_cov.npy").open("wb") as handle:
            np.save(handle, result.within_layer_covariance(), allow_pickle=False)
        (temp / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary
