"""baseline: correlate's pair statistics + collect's within-layer covariances -> baseline maxima.

Writes ``data/baseline/``: ``baseline.parquet`` (rows ``model, partner, sample, layer, index,
baseline``) and ``summary.json``; and ``metrics/baseline.json`` (mean baseline per model and
its spread across the draws).
"""

import json
from pathlib import Path

import numpy as np
import pandas as pd

from stages.paths import BASELINE_DIR, COLLECT_DIR, CORRELATE_DIR, METRICS_DIR, model_name
from universal_neurons.baseline import baseline_spread, pair_baselines
from universal_neurons.config import Params
from universal_neurons.correlation import CrossMoments
from universal_neurons.io import atomic_path, read_json, write_json


def run(
    params: Params,
    correlate_dir: Path = CORRELATE_DIR,
    collect_root: Path = COLLECT_DIR,
    output_dir: Path = BASELINE_DIR,
    metrics_dir: Path = METRICS_DIR,
) -> dict:
    """Compute the baseline of every ordered pair; return the metrics."""
    cfg = params.baseline
    summary = read_json(correlate_dir / "summary.json")
    seeds = {model_name(seed): seed for seed in params.train.seeds}
    if summary["models"] != list(seeds):
        raise ValueError(
            f"{correlate_dir / 'summary.json'}: models {summary['models']} do not match "
            f"train.seeds {params.train.seeds}; rerun correlate"
        )
    within = {}
    for name in seeds:
        collected = read_json(collect_root / name / "summary.json")
        if collected["kept_positions"] != summary["kept_positions"]:
            raise ValueError(
                f"{collect_root / name}: {collected['kept_positions']} kept positions, but correlate "
                f"saw {summary['kept_positions']}; rerun collect and correlate with the same analysis"
            )
        within[name] = np.load(collect_root / name / "within_layer_cov.npy", allow_pickle=False)
    frames = []
    for key in summary["pairs"]:
        a, b = key.split("__")
        stats, _ = CrossMoments.load(correlate_dir / "pairs" / f"{key}.safetensors")
        frames.append(
            pair_baselines(
                stats,
                (a, b),
                (seeds[a], seeds[b]),
                (within[a], within[b]),
                cfg.kind,
                cfg.samples,
                cfg.seed,
                params.correlate.dead_variance,
            )
        )
    table = pd.concat(frames, ignore_index=True)
    metrics = {
        "kind": cfg.kind,
        "samples": cfg.samples,
        "seed": cfg.seed,
        "models": baseline_spread(table),
    }
    with atomic_path(output_dir) as temp:
        temp.mkdir()
        table.to_parquet(temp / "baseline.parquet", index=False)
        (temp / "summary.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    write_json(metrics_dir / "baseline.json", metrics)
    return metrics
