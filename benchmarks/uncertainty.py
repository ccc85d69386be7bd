"""Benchmark of the uncertainty stage's pass on one real pair of a finished pipeline.

Reads (never writes) a workspace that has trained its group: two models and the token set (the
within-layer covariances are taken over the same sequences by collect's pass, as correlate
takes them below ``correlate.full_pairs_max_neurons``). Times, for the first ``--sequences`` analysis sequences
cut into ``--blocks`` blocks: the pair's statistics over them (``correlate_group``: correlate
keeps no ``[N, N]`` file, it takes the candidates in memory), choosing the candidates
(both directions, ``--draws`` rotation draws), the pass (``accumulate_blocks``), one batch's
forward pass per model, its products (``BlockProducts.add``: both models' within-layer
products and the pair's ``[N, N]``), one block's reduction (``BlockProducts.totals``) and
200 resamples of one model against its partner. Prints one JSON document, with the mean
shift of the resampled excess from the whole-set excess.

Usage: ``python benchmarks/uncertainty.py --root /work/main --sequences 640 --blocks 10``.
Extrapolate to a group of M models over B batches: forward M x B x (per model), products
B x (M within + M(M-1)/2 pairs), reductions blocks x M(M-1)/2 x (per pair).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from universal_neurons.config import params_from_dict  # noqa: E402
from universal_neurons.io import read_yaml_document  # noqa: E402
from universal_neurons.matching.activations import (  # noqa: E402
    iter_batches,
    kept_mask,
    load_analysis_set,
)
from universal_neurons.matching.block_products import (  # noqa: E402
    BlockProducts,
    accumulate_blocks,
)
from universal_neurons.matching.collect import collect_model, kept_activations  # noqa: E402
from universal_neurons.matching.pairs import correlate_group  # noqa: E402
from universal_neurons.matching.resampling import (  # noqa: E402
    CandidateSums,
    block_weights,
    candidate_links,
    draw_per_resample,
    resampled_excess,
    rotated_key,
    rotation_draws,
    whole_set_excess,
)
from universal_neurons.models.loading import load_model  # noqa: E402


def _timed(function, *args):
    """``(result, seconds)`` of one call."""
    start = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - start


def _setup(models: dict, tokens_of: tuple, draws: int, k: int, batch_size: int):
    """The pair's ``(shape, rotations, links)``, the seconds of its statistics over the
    ``tokens_of`` ``(tokens, excluded ids)`` and the seconds to choose the candidates."""
    names = list(models)
    stats, stats_s = _timed(
        lambda: correlate_group(models, *tokens_of, batch_size, progress=False).pairs
    )
    within = {
        n: collect_model(model, n, *tokens_of, batch_size, progress=False).within_layer_covariance()
        for n, model in models.items()
    }
    shape = (within[names[0]].shape[0], within[names[0]].shape[1])
    seeds = [int(n.removeprefix("seed")) for n in names]
    start = time.perf_counter()
    rotations = rotation_draws(
        "rotation", names, dict(zip(names, seeds, strict=True)), shape, draws, 0
    )
    links = candidate_links(stats.items(), within, rotations, k)
    return shape, rotations, links, stats_s, time.perf_counter() - start


def main() -> None:
    """Run the benchmark and print its JSON document."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=Path("."))
    parser.add_argument("--sequences", type=int, default=640)
    parser.add_argument("--blocks", type=int, default=10)
    parser.add_argument("--draws", type=int, default=4)
    parser.add_argument("--candidates", type=int, default=8)
    args = parser.parse_args()
    params = params_from_dict(read_yaml_document(args.root / "params.yaml", "params"))
    tokens, excluded, _ = load_analysis_set(args.root / "data/tokens", params.analysis)
    tokens = tokens[: args.sequences]
    names = ["seed1", "seed2"]
    models = {n: load_model(str(args.root / "models" / n)) for n in names}
    batch_size = params.analysis.batch_size
    shape, rotations, links, statistics_s, candidates_s = _setup(
        models, (tokens, excluded), args.draws, args.candidates, batch_size
    )
    n = shape[0] * shape[1]
    columns = {name: n for name in names}
    columns |= {rotated_key(p, d): n for p in names for d in range(args.draws)}
    sums = CandidateSums(args.blocks, columns, links)
    matrices = {p: torch.as_tensor(m) for p, m in rotations.items()}
    _, pass_s = _timed(
        accumulate_blocks, models, tokens, excluded, batch_size, sums, matrices, shape[0]
    )
    _, batch = next(iter_batches(tokens, batch_size))
    mask = kept_mask(batch, excluded)
    values, forward_s = _timed(
        lambda: {m: kept_activations(models[m], m, batch, mask, 0)["post"] for m in names}
    )
    products = BlockProducts(names, shape[0], shape[1], {})
    _, add_s = _timed(products.add, values)
    _, reduce_s = _timed(products.totals, sums.candidates, matrices)
    weights = block_weights(args.blocks, 200, 0)
    excess, resample_s = _timed(
        resampled_excess, sums, names[0], [names[1]], weights, draw_per_resample(args.draws, 200)
    )
    whole = whole_set_excess(sums, names[0], [names[1]], args.draws)
    print(
        json.dumps(
            {
                "sequences": args.sequences,
                "blocks": args.blocks,
                "kept_positions": int(sums.count.sum()),
                "batch_kept_positions": int(mask.sum()),
                "pair_statistics_s": statistics_s,
                "candidates_s": candidates_s,
                "pass_s": pass_s,
                "forward_per_model_s": forward_s / 2,
                "products_per_batch_s": add_s,
                "reduction_per_block_s": reduce_s,
                "resamples_200_s": resample_s,
                "sums_mb": sums.memory_bytes() / 1e6,
                "mean_resampled_minus_whole_excess": float(np.nanmean(excess - whole)),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
