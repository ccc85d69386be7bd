"""Small, internally consistent pipeline results with the shapes the analysis stages write.

``write_results(workdir)`` fills a workspace with ``results/{universality,stats,families}.json``,
their headlines ``metrics/{universality,families}.json``,
``data/universality/seed{s}.parquet``, ``data/families/seed{s}.parquet`` and
``models/seed{s}/{curve.csv,training.json}`` for seeds 1 and 2 (2 layers x 20 neurons), with
planted, hand-checkable numbers (see ``EXPECTED``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

SEEDS = (1, 2)
N_LAYERS, D_MLP = 2, 20

# Planted per seed: universal neurons per layer and dead neurons per layer.
UNIVERSAL = {1: (3, 1), 2: (0, 2)}
DEAD = {1: (1, 0), 2: (0, 2)}

# Hand-computed from the plants above: seed1 4 universal / 39 live = 10.2564...%,
# seed2 2 / 38 = 5.2631...%; mean 7.7598...%.
EXPECTED = {
    "seed1": {"percent": "10.26%", "per_layer": [3 / 19 * 100, 1 / 20 * 100]},
    "seed2": {"percent": "5.26%", "per_layer": [0.0, 2 / 18 * 100]},
    "mean_percent": "7.76%",
    "kept_positions": "12,345",
}


def universality_table(seed: int) -> pd.DataFrame:
    """A neuron table ``[N_LAYERS * D_MLP rows]`` with the planted universal and dead neurons."""
    rng = np.random.default_rng(seed)
    rows = []
    for layer in range(N_LAYERS):
        for index in range(D_MLP):
            dead = index < DEAD[seed][layer]
            universal = DEAD[seed][layer] <= index < DEAD[seed][layer] + UNIVERSAL[seed][layer]
            baseline = rng.uniform(0.1, 0.3, size=3)
            corr = baseline + (rng.uniform(0.6, 0.7, 3) if universal else rng.uniform(0.0, 0.3, 3))
            row = {
                "layer": layer,
                "index": index,
                "dead": dead,
                "max_corr": corr.max(),
                "mean_corr": corr.mean(),
                "min_corr": corr.min(),
                "max_baseline": baseline.max(),
                "mean_baseline": baseline.mean(),
                "min_baseline": baseline.min(),
            }
            if dead:
                row.update({k: np.nan for k in row if k.endswith(("_corr", "_baseline"))})
            rows.append(row)
    table = pd.DataFrame(rows)
    table["excess_corr"] = table["mean_corr"] - table["mean_baseline"]
    table["is_universal"] = (table["excess_corr"] > 0.5).fillna(False)
    return table


def families_table(seed: int) -> pd.DataFrame:
    """One row per universal neuron: family, best feature and its variance reduction."""
    table = universality_table(seed)
    universal = table[table["is_universal"]].reset_index(drop=True)
    families = ["unigram", "position", "unexplained", "unigram"]
    return pd.DataFrame(
        {
            "layer": universal["layer"],
            "index": universal["index"],
            "family": [families[i % len(families)] for i in range(len(universal))],
            "best_feature": [f"token_{seed}_{i}" for i in range(len(universal))],
            "best_vr": [0.9 - 0.1 * i for i in range(len(universal))],
        }
    )


def write_results(workdir: Path) -> dict:
    """Write every result file into ``workdir``; return the JSON documents written."""
    workdir = Path(workdir)
    for sub in ("metrics", "results", "data/universality", "data/families"):
        (workdir / sub).mkdir(parents=True, exist_ok=True)
    universality: dict = {"threshold": 0.5, "kept_positions": 12345, "models": {}}
    stats: dict = {"models": {}}
    families: dict = {"models": {}}
    for seed in SEEDS:
        name = f"seed{seed}"
        table = universality_table(seed)
        table.to_parquet(workdir / "data" / "universality" / f"{name}.parquet")
        live = table[~table["dead"]]
        per_layer = [
            float(live[live["layer"] == layer]["is_universal"].mean() * 100)
            for layer in range(N_LAYERS)
        ]
        universality["models"][name] = {
            "percent_universal": float(live["is_universal"].mean() * 100),
            "n_universal": int(live["is_universal"].sum()),
            "n_neurons": len(table),
            "n_dead": int(table["dead"].sum()),
            "percent_universal_per_layer": per_layer,
        }
        stats["models"][name] = {
            "sparsity": {
                "median_universal": 0.025,
                "median_other": 0.2 + seed / 100,
                "effect_size": -0.8,
                "p_value": 1.5e-6,
            },
            "input_bias": {
                "median_universal": -0.79,
                "median_other": -0.1,
                "effect_size": -0.6,
                "p_value": None,  # e.g. too few universal neurons for the test
            },
        }
        fam = families_table(seed)
        fam.to_parquet(workdir / "data" / "families" / f"{name}.parquet")
        counts = fam["family"].value_counts().to_dict()
        families["models"][name] = {
            "n_universal": len(fam),
            "n_explained": int((fam["family"] != "unexplained").sum()),
            "percent_explained": float((fam["family"] != "unexplained").mean() * 100),
            "counts": {k: int(v) for k, v in sorted(counts.items())},
            "counts_per_layer": {
                family: [
                    int(((fam["family"] == family) & (fam["layer"] == layer)).sum())
                    for layer in range(N_LAYERS)
                ]
                for family in sorted(counts)
            },
        }
        model_dir = workdir / "models" / name
        model_dir.mkdir(parents=True, exist_ok=True)
        lines = ["step,tokens,train_loss,heldout_loss"]
        for step in range(1, 7):
            heldout = f"{5.0 - 0.1 * step - 0.01 * seed:.4f}" if step % 2 == 0 else ""
            lines.append(f"{step},{step * 512},{5.2 - 0.1 * step:.4f},{heldout}")
        (model_dir / "curve.csv").write_text("\n".join(lines) + "\n")
        (model_dir / "training.json").write_text(
            json.dumps(
                {
                    "seed": seed,
                    "steps": 6,
                    "tokens": 3072,
                    "heldout_loss": [4.39, 4.38][seed - 1],
                    "unigram_entropy": 5.3,
                    "wall_time_s": 1.0,
                    "device": "cpu",
                }
            )
        )
    universality["mean_percent_universal"] = float(
        np.mean([m["percent_universal"] for m in universality["models"].values()])
    )
    documents = {"universality": universality, "stats": stats, "families": families}
    for name, document in documents.items():
        (workdir / "results" / f"{name}.json").write_text(json.dumps(document, indent=2))
    headline = {
        "mean_percent_universal": universality["mean_percent_universal"],
        "percent_universal": {
            name: model["percent_universal"] for name, model in universality["models"].items()
        },
    }
    (workdir / "metrics" / "universality.json").write_text(json.dumps(headline, indent=2))
    return documents
