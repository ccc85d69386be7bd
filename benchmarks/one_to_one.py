"""Time and memory of the one-to-one matching of one pair (docs/scale.md, "One-to-one matching
at scale"): ``python benchmarks/one_to_one.py 1024 2048 4096``, one process per size.

Each size N gets a correlation-like ``[N, N]`` float64 matrix (weak Gaussian noise, σ 0.05,
plus a planted permutation of strong matches, 0.1-0.9) and one ``match_pair`` call: the
assignment's wall time, the whole call's (with the mutual best matches), and the peak memory
above the matrix (the process's max RSS, in a fresh process per size).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

import numpy as np


def measure(n: int) -> dict:
    """One size in this process: seconds and MiB (see the module docstring)."""
    from universal_neurons.matching.one_to_one import match_pair

    rng = np.random.default_rng(0)
    corr = rng.standard_normal((n, n)) * 0.05
    corr[np.arange(n), rng.permutation(n)] += rng.uniform(0.1, 0.9, n)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    match = match_pair(corr)
    total = time.perf_counter() - start
    extra = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024  # kB -> MiB
    return {
        "n": n,
        "assignment_s": round(match.seconds, 3),
        "match_pair_s": round(total, 3),
        "extra_mib": round(extra, 1),
        "matrix_mib": round(corr.nbytes / 2**20, 1),
    }


def main(sizes: list[int]) -> None:
    """Print one JSON line per size, each measured in a fresh process."""
    for n in sizes:
        one = [sys.executable, __file__, "--one", str(n)]
        print(subprocess.run(one, check=True, capture_output=True, text=True).stdout.strip())


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--one":
        print(json.dumps(measure(int(sys.argv[2]))))
    else:
        main([int(arg) for arg in sys.argv[1:]] or [1024])
