"""Time of the rotation baseline in correlate's units at scale (``maxima.reduce_block``), with
each partner layer's ``diag(M Σ Mᵀ)`` kept for the process's later units (as correlate runs
them) against recomputed in every unit (as before 2026-12-03):
``python benchmarks/block_baselines.py [d_mlp] [layers] [draws]`` (default 1024 6 2).

One pair of synthetic models of ``layers`` layers of ``d_mlp`` neurons (Gaussian activations
with a shared component, 512 positions), the units of correlate at scale: one per layer of
``a``, each against all of ``b``, with ``draws`` rotation draws (the matrices are drawn once,
before the clock starts, as correlate's cache of drawn matrices does). Both ways run in this
process, interleaved, twice each (the faster time of each is kept), and must give the same
numbers bit for bit; the line printed holds the ratio of their times.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _model_activations(rng: np.random.Generator, shared: np.ndarray, n: int) -> np.ndarray:
    """``[positions, n]`` float64: a shared signal mixed in, plus independent noise."""
    return shared @ rng.standard_normal((shared.shape[1], n)) + rng.standard_normal(
        (shared.shape[0], n)
    )


def _within(values: np.ndarray, d_mlp: int) -> np.ndarray:
    """``[layers, d_mlp, d_mlp]`` population covariance of each layer."""
    layers = values.shape[1] // d_mlp
    return np.stack(
        [
            np.cov(values[:, k * d_mlp : (k + 1) * d_mlp], rowvar=False, bias=True)
            for k in range(layers)
        ]
    )


def run_units(x, y, d_mlp, draws, keep: bool) -> tuple[float, list]:
    """Seconds of every unit of the pair, and their tensors; ``keep``: the variances kept
    across units (False: cleared before each unit, the old per-unit recomputation)."""
    from universal_neurons.matching import maxima
    from universal_neurons.matching.correlation import CrossMoments

    maxima._MIXED_VARIANCES.clear()
    blocks, seconds = [], 0.0
    for r0 in range(0, x.shape[1], d_mlp):
        xs = torch.as_tensor(x[:, r0 : r0 + d_mlp])
        xc, yc = xs - xs.mean(0), y - y.mean(0)
        stats = CrossMoments(
            len(x), xs.mean(0), y.mean(0), (xc * xc).sum(0), (yc * yc).sum(0), xc.T @ yc
        )
        if not keep:
            maxima._MIXED_VARIANCES.clear()
        start = time.perf_counter()
        blocks.append(maxima.reduce_block(stats, ("a", "b"), (r0, r0 + d_mlp), d_mlp, draws))
        seconds += time.perf_counter() - start
    return seconds, blocks


def measure(d_mlp: int, layers: int, samples: int) -> dict:
    """Both ways on one pair (see the module docstring)."""
    from universal_neurons.matching.maxima import BaselineDraws

    rng = np.random.default_rng(0)
    shared = rng.standard_normal((512, 32))
    x = _model_activations(rng, shared, layers * d_mlp)
    y = _model_activations(rng, shared, layers * d_mlp)
    with tempfile.TemporaryDirectory() as folder:
        within = {}
        for name, values in (("a", x), ("b", y)):
            within[name] = str(Path(folder) / f"{name}.npy")
            np.save(within[name], _within(values, d_mlp))
        draws = BaselineDraws("rotation", samples, 0, {"a": 1, "b": 2}, within, folder)
        old = new = []
        for model in ("a", "b"):  # drawn before the clock, as correlate's cache keeps them
            for sample in range(samples):
                for layer in range(layers):
                    draws.matrix(model, sample, layer, d_mlp)
        y_tensor = torch.as_tensor(y)
        times = {False: [], True: []}
        for _ in range(2):  # interleaved, the faster of two each: no warm-up favours one
            for keep in (False, True):
                seconds, blocks = run_units(x, y_tensor, d_mlp, draws, keep)
                times[keep].append(seconds)
                old, new = (blocks, new) if not keep else (old, blocks)
        recomputed, kept = min(times[False]), min(times[True])
    same = all(_same(a, b, key) for a, b in zip(old, new, strict=True) for key in a.tensors)
    return {
        "d_mlp": d_mlp,
        "layers": layers,
        "draws": samples,
        "threads": torch.get_num_threads(),
        "recomputed_per_unit_s": round(recomputed, 2),
        "kept_per_process_s": round(kept, 2),
        "speed_up": round(recomputed / kept, 2),
        "bit_identical": same,
    }


def _same(a, b, key: str) -> bool:
    """The two blocks' tensor ``key`` equal bit for bit (NaN where NaN)."""
    first, second = a.tensors[key].numpy(), b.tensors[key].numpy()
    return np.array_equal(first, second, equal_nan=first.dtype.kind == "f")


if __name__ == "__main__":
    args = [int(arg) for arg in sys.argv[1:]] + [1024, 6, 2][len(sys.argv) - 1 :]
    print(json.dumps(measure(*args[:3])))
