"""universality: correlate's maxima + baseline -> the neuron table per model and the headline metric.

Writes ``data/universality/seed{s}.parquet`` (columns ``universality.TABLE_COLUMNS``),
``metrics/universality.json`` and ``metrics/universality_per_layer.csv``.
"""

from pathlib import Path

import pandas as pd

from stages.paths import BASELINE_DIR, CORRELATE_DIR, METRICS_DIR, UNIVERSALITY_DIR, model_name
from universal_neurons.config import Params
from universal_neurons.io import atomic_path, read_json, write_json
from universal_neurons.universality import (
    model_summary,
    per_layer_rows,
    universality_metrics,
    universality_table,
)


def _read_parquet(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found (run the stage that writes it)")
    return pd.read_parquet(path)


def run(
    params: Params,
    correlate_dir: Path = CORRELATE_DIR,
    baseline_dir: Path = BASELINE_DIR,
    output_dir: Path = UNIVERSALITY_DIR,
    metrics_dir: Path = METRICS_DIR,
) -> dict:
    """Build every model's neuron table and the universality metrics; return the metrics."""
    threshold = params.universality.threshold
    summary = read_json(correlate_dir / "summary.json")
    maxima = _read_parquet(correlate_dir / "max_corr.parquet")
    baseline = _read_parquet(baseline_dir / "baseline.parquet")
    names = [model_name(seed) for seed in params.train.seeds]
    if summary["models"] != names:
        raise ValueError(
            f"{correlate_dir / 'summary.json'}: models {summary['models']} do not match "
            f"train.seeds {params.train.seeds}; rerun correlate"
        )
    tables = {name: universality_table(maxima, baseline, name, threshold) for name in names}
    summaries = {name: model_summary(table, summary["n_layers"]) for name, table in tables.items()}
    metrics = universality_metrics(summaries, threshold, summary["kept_positions"])
    with atomic_path(output_dir) as temp:
        temp.mkdir()
        for name, table in tables.items():
            table.to_parquet(temp / f"{name}.parquet", index=False)
    write_json(metrics_dir / "universality.json", metrics)
    with atomic_path(metrics_dir / "universality_per_layer.csv") as temp:
        per_layer_rows(summaries).to_csv(temp, index=False)
    return metrics
