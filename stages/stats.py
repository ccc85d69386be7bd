"""stats: universality table + activation moments + processed weights -> the neuron table per model,
the universal-vs-other comparison (``metrics/stats.json``) and its figures."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from tqdm import tqdm

from stages.paths import METRICS_DIR, MODELS_DIR
from universal_neurons.config import Params
from universal_neurons.io import atomic_path, read_parquet, write_json
from universal_neurons.statistics import (
    activation_statistics,
    compare_universal,
    neuron_table,
    per_layer_medians,
    universal_percentile_summary,
    weight_statistics,
)

COLLECT_DIR = Path("data/collect")
EMERGENCE_NEURONS = Path("data/emergence/neurons.parquet")
UNIVERSALITY_DIR = Path("data/universality")
STATS_DIR = Path("data/stats")
STATS_METRICS = METRICS_DIR / "stats.json"
STATS_PERCENTILES_CSV = METRICS_DIR / "stats_percentiles.csv"


def _read_parquet(path: Path, stage: str) -> pd.DataFrame:
    return read_parquet(path, stage)


def model_table(
    params: Params,
    seed: int,
    models_dir: Path,
    collect_dir: Path,
    universality_dir: Path,
    first_universal: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """The neuron table of the model of ``seed``; ``first_universal``: the emergence stage's
    ``first_universal_tokens`` of every model (None: no emergence measurement)."""
    from universal_neurons.models import load_model, processed_weights

    universality = _read_parquet(universality_dir / f"seed{seed}.parquet", "universality")
    moments = _read_parquet(collect_dir / f"seed{seed}" / "moments.parquet", "collect")
    model = load_model(str(models_dir / f"seed{seed}"))
    weights = weight_statistics(processed_weights(model), params.stats.neuron_chunk)
    del model
    emergence = None
    if first_universal is not None:
        emergence = first_universal[first_universal["model"] == f"seed{seed}"]
    return neuron_table(universality, weights, activation_statistics(moments, "pre"), emergence)


def run(
    params: Params,
    models_dir: Path = MODELS_DIR,
    collect_dir: Path = COLLECT_DIR,
    universality_dir: Path = UNIVERSALITY_DIR,
    output_dir: Path = STATS_DIR,
    metrics_path: Path = STATS_METRICS,
    percentiles_csv: Path = STATS_PERCENTILES_CSV,
    emergence_path: Path | None = None,
) -> dict:
    """Write ``{output_dir}/seed{s}.parquet``, ``per_layer.csv`` and ``plots/*.png``, the
    comparison to ``metrics_path`` and the pooled percentiles to ``percentiles_csv``;
    return the comparison ``{"models": {"seed{s}": {metric: {...}}}}``. ``emergence_path``:
    the emergence stage's ``neurons.parquet`` (the trained group), or None."""
    from universal_neurons.statistics_plots import plot_per_layer, plot_percentile_boxen

    first_universal = None
    if emergence_path is not None:
        from universal_neurons.emergence import first_universal_tokens

        first_universal = first_universal_tokens(_read_parquet(emergence_path, "emergence"))
    tables = {
        f"seed{seed}": model_table(
            params, seed, models_dir, collect_dir, universality_dir, first_universal
        )
        for seed in tqdm(params.train.seeds, desc="stats", unit="model")
    }
    comparison = {"models": {model: compare_universal(table) for model, table in tables.items()}}
    with atomic_path(output_dir) as temp:
        (temp / "plots").mkdir(parents=True)
        for model, table in tables.items():
            table.to_parquet(temp / f"{model}.parquet", index=False)
        per_layer = pd.concat(
            [per_layer_medians(t).assign(model=m) for m, t in tables.items()], ignore_index=True
        )
        per_layer.insert(0, "model", per_layer.pop("model"))
        per_layer.to_csv(temp / "per_layer.csv", index=False)
        plot_percentile_boxen(tables, temp / "plots" / "universal_percentiles.png")
        plot_per_layer(tables, temp / "plots" / "per_layer.png")
    with atomic_path(percentiles_csv) as temp:
        universal_percentile_summary(tables).to_csv(temp, index=False)
    write_json(metrics_path, comparison)
    return comparison
