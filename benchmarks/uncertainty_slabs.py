"""Benchmark of the slab path's per-block reductions at GPT-2's width (``matching.slabs``).

Above ``correlate.full_pairs_max_neurons`` the uncertainty stage reduces, at the end of every
block of every slab, (1) each x neuron's candidate rotated directions of every partner
(``rotated_cross``, ``[rows, k, d_mlp]`` gathers) and (2) the rotated directions' squares
``Σỹ²`` of the slab's layers. Measured in one run on this machine, on random float64 sums of
GPT-2's width (``--d-mlp`` 3,072), the fastest of 3 calls each:

1. the rotated cross reduction of a slab of ``--layers`` layers in chunks of 256 rows (the
   former ``ROTATED_ROWS``) against ``slabs.rotated_rows``' cache-sized chunks: ratio, and
   whether the two agree to the bit;
2. the rotated squares from one block's ``Σ y yᵀ`` (``block_products.rotated_columns``: a
   ``d_mlp³`` product per layer, draw and block) against the token-by-token sums of that
   block's ``--block-tokens`` positions (``SlabProducts`` with ``rotations``): ratio, and the
   largest relative difference. ``slabs.rotate_per_token`` picks the token path when the
   analysis set has fewer positions than ``blocks × d_mlp``.

Prints one JSON document. Usage: ``python benchmarks/uncertainty_slabs.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from universal_neurons.matching.block_products import rotated_columns, rotated_cross  # noqa: E402
from universal_neurons.matching.slabs import (  # noqa: E402
    Slab,
    SlabProducts,
    rotated_rows,
)


def _timed(function, *args, repeats: int = 3):
    """``(result, seconds)``: the fastest of ``repeats`` calls."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        result = function(*args)
        best = min(best, time.perf_counter() - start)
    return result, best


def _chunked(cross, matrices, candidates, rows: int) -> torch.Tensor:
    """``rotated_cross`` ``rows`` x rows at a time."""
    return torch.cat(
        [
            rotated_cross(cross[s : s + rows], matrices, candidates[s : s + rows])
            for s in range(0, cross.shape[0], rows)
        ]
    )


def rotated_cross_chunks(d_mlp: int, layers: int, k: int, generator) -> dict:
    """Part 1: the rotated cross reduction of a slab of ``layers`` layers against one partner
    of as many layers."""
    n = layers * d_mlp
    cross = torch.randn(n, n, dtype=torch.float64, generator=generator)
    matrices = torch.randn(layers, d_mlp, d_mlp, dtype=torch.float64, generator=generator)
    candidates = torch.randint(0, n, (n, k), generator=generator)
    rows = rotated_rows(torch.device("cpu"), k, d_mlp)
    old, old_s = _timed(_chunked, cross, matrices, candidates, 256)
    new, new_s = _timed(_chunked, cross, matrices, candidates, rows)
    return {
        "rows_before": 256,
        "rows_now": rows,
        "seconds_before": round(old_s, 3),
        "seconds_now": round(new_s, 3),
        "speed_up": round(old_s / new_s, 2),
        "identical": bool(torch.equal(old, new)),
    }


def rotated_squares(d_mlp: int, block_tokens: int, generator) -> dict:
    """Part 2: one layer's rotated squares of one block and one draw, both ways."""
    slab = Slab("x", (0, 1), d_mlp)
    values = {"x": torch.randn(block_tokens, d_mlp, generator=generator)}
    q, _ = torch.linalg.qr(torch.randn(d_mlp, d_mlp, dtype=torch.float64, generator=generator))
    rotations = q[None, None]  # [draws, layers, d_mlp, d_mlp]

    def by_block():
        sums = SlabProducts(slab, [], d_mlp, {})
        sums.add(values)
        return rotated_columns(sums.first, sums.within, rotations[0])[1]

    def by_token():
        sums = SlabProducts(slab, [], d_mlp, {}, rotations=rotations)
        sums.add(values)
        return sums.rotated_second[0]

    block, block_s = _timed(by_block)
    token, token_s = _timed(by_token)
    return {
        "block_tokens": block_tokens,
        "seconds_block_sums": round(block_s, 3),
        "seconds_token_sums": round(token_s, 3),
        "speed_up": round(block_s / token_s, 2),
        "max_relative_difference": float(((token - block).abs() / block.abs()).max()),
    }


def main() -> None:
    """Run both parts and print the JSON report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d-mlp", type=int, default=3072)
    parser.add_argument("--layers", type=int, default=3, help="layers of the slab and partner")
    parser.add_argument("--k", type=int, default=8, help="uncertainty.candidates")
    parser.add_argument("--block-tokens", type=int, default=100)
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    report = {
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "rotated_cross": rotated_cross_chunks(args.d_mlp, args.layers, args.k, generator),
        "rotated_squares": rotated_squares(args.d_mlp, args.block_tokens, generator),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
