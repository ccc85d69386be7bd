"""classify: family of each universal neuron (variance reduction of token-set features).

Reads the token set, the syntax labels, each model and its stats table; writes
``data/families/seed{s}.parquet`` (+ ``topics.json``), ``metrics/families.json``,
``metrics/families_per_layer.csv`` and ``metrics/families_per_layer.png``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from stages.paths import METRICS_DIR, MODELS_DIR, TOKENS_DIR
from stages.syntax import SYNTAX_DIR
from universal_neurons.config import Params
from universal_neurons.families import (
    add_vocab_families,
    classify_neurons,
    collect_feature_sums,
    family_metrics,
    parse_neurons,
    per_layer_rows,
    plot_family_counts,
)
from universal_neurons.features import load_analysis_features
from universal_neurons.io import atomic_path, read_parquet, write_json

STATS_DIR = Path("data/stats")
FAMILIES_DIR = Path("data/families")
METRICS_PATH = METRICS_DIR / "families.json"
PER_LAYER_CSV = METRICS_DIR / "families_per_layer.csv"
PLOT_PATH = METRICS_DIR / "families_per_layer.png"


def read_stats(path: Path) -> pd.DataFrame:
    """The stats table of one model (needs ``layer, index, is_universal, vocab_*``)."""
    return read_parquet(path, "stats")


def universal_mask(stats: pd.DataFrame, n_layers: int, d_mlp: int) -> np.ndarray:
    """bool ``[layers, d_mlp]`` from the stats table's ``is_universal``."""
    mask = np.zeros((n_layers, d_mlp), bool)
    rows = stats[stats["is_universal"].astype(bool)]
    if len(rows) and (rows["layer"].max() >= n_layers or rows["index"].max() >= d_mlp):
        raise ValueError(f"stats table: neurons beyond the model ({n_layers} x {d_mlp})")
    mask[rows["layer"].to_numpy(), rows["index"].to_numpy()] = True
    return mask


def run(
    params: Params,
    tokens_dir: Path = TOKENS_DIR,
    models_dir: Path = MODELS_DIR,
    stats_dir: Path = STATS_DIR,
    syntax_dir: Path = SYNTAX_DIR,
    output_dir: Path = FAMILIES_DIR,
    metrics_path: Path = METRICS_PATH,
    csv_path: Path = PER_LAYER_CSV,
    plot_path: Path = PLOT_PATH,
) -> dict:
    """Classify the chosen neurons of every model; write tables, metrics, CSV and plot."""
    from universal_neurons.models import load_model, model_shape

    if not Path(syntax_dir).exists():
        raise FileNotFoundError(f"{syntax_dir}: syntax labels not found (run the syntax stage)")
    config = params.families
    tokens, features, excluded, _ = load_analysis_features(
        tokens_dir, params.analysis, params.families, syntax_dir
    )
    metrics: dict = {"models": {}}
    tables: dict[str, pd.DataFrame] = {}
    for seed in params.train.seeds:
        label = f"seed{seed}"
        stats = read_stats(Path(stats_dir) / f"{label}.parquet")
        model = load_model(str(Path(models_dir) / label), device=params.analysis.device)
        n_layers, d_mlp = model_shape(model)
        neurons = parse_neurons(
            config.neurons, n_layers, d_mlp, universal_mask(stats, n_layers, d_mlp)
        )
        sums, _ = collect_feature_sums(
            model,
            tokens,
            features,
            neurons,
            excluded,
            params.analysis.batch_size,
            params.analysis.device,
            desc=f"classify {label}",
        )
        table = add_vocab_families(classify_neurons(sums, features, neurons, config), stats, config)
        tables[label] = table
        metrics["models"][label] = family_metrics(table, stats, n_layers, config)
    with atomic_path(output_dir) as temp:
        temp.mkdir()
        for label, table in tables.items():
            table.to_parquet(temp / f"{label}.parquet", index=False)
        (temp / "topics.json").write_text(json.dumps(features.topic_words, indent=2) + "\n")
    write_json(metrics_path, metrics)
    with atomic_path(csv_path) as temp:
        per_layer_rows(metrics).to_csv(temp, index=False)
    with atomic_path(plot_path) as temp:
        plot_family_counts(metrics, temp)
    return metrics
