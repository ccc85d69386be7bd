"""The uncertainty stage's tables and documents, from the resampled universality test.

Per model: the neuron table (whole-set excess, its percentile interval, stability), the
percentile intervals of % universal (whole model and per layer) and % universal in every
resample; for the group, the interval of the mean over the models (the models share the
resampled blocks, so the mean is resampled as one statistic).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from universal_neurons.matching.resampling import (
    CandidateSums,
    draw_per_resample,
    neuron_stability,
    percent_intervals,
    percent_per_resample,
    percentile_interval,
    resampled_excess,
    whole_set_excess,
)

TABLE_COLUMNS = [
    "layer",
    "index",
    "dead",
    "is_universal",
    "excess",
    "excess_lo",
    "excess_hi",
    "stability",
]
"""``data/uncertainty/seed{s}.parquet``: ``is_universal`` from the universality stage,
``excess`` on the whole set with this stage's draws, the rest over the resamples."""


@dataclass(frozen=True)
class ModelUncertainty:
    """One model's result: ``table`` (``TABLE_COLUMNS``), ``intervals`` (``percent_intervals``),
    ``percent [resamples]`` (% universal of its live neurons per resample), ``point`` (% of
    the universality stage) and ``whole_set`` (% with the whole-set excess of this stage)."""

    table: pd.DataFrame
    intervals: dict
    percent: np.ndarray
    point: float
    whole_set: float


def group_resampled_excess(
    sums: CandidateSums,
    names: list[str],
    weights: np.ndarray,
    *,
    draws: int,
    dead_variance: float = 0.0,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per model of ``names`` (each against the others): ``(resampled [resamples, n],
    whole set [n])`` excess correlations, ``weights [resamples, blocks]``, resample r with
    baseline draw ``r mod draws``. No threshold: what the uncertainty stage thresholds."""
    draw_weights = draw_per_resample(draws, len(weights))
    result = {}
    for name in names:
        partners = [p for p in names if p != name]
        resampled = resampled_excess(sums, name, partners, weights, draw_weights, dead_variance)
        result[name] = (resampled, whole_set_excess(sums, name, partners, draws, dead_variance))
    return result


def model_uncertainty(
    excess: np.ndarray,
    whole: np.ndarray,
    universality: pd.DataFrame,
    *,
    threshold: float,
    confidence: float,
) -> ModelUncertainty:
    """One model's resampled universality test at ``threshold``: ``excess [resamples, n]`` and
    ``whole [n]`` from ``group_resampled_excess``; ``universality``: its neuron table
    (layer-major, as the sums), whose dead neurons stay out of every percentage."""
    dead = universality["dead"].to_numpy(bool)
    layers = universality["layer"].to_numpy(np.int64)
    live = ~dead
    with np.errstate(invalid="ignore"):
        universal = excess > threshold
        whole_universal = whole > threshold
    stability = neuron_stability(excess, threshold, confidence)
    table = pd.DataFrame(
        {
            "layer": layers,
            "index": universality["index"].to_numpy(np.int64),
            "dead": dead,
            "is_universal": universality["is_universal"].to_numpy(bool),
            "excess": whole,
            **stability,
        }
    )[TABLE_COLUMNS]
    flags = universality["is_universal"].to_numpy(bool)
    point = flags[live].mean() * 100 if live.any() else 0.0
    intervals = percent_intervals(universal, layers, live, confidence)
    for row in intervals["per_layer"]:
        in_layer = live & (layers == row["layer"])
        row["percent_universal"] = float(flags[in_layer].mean() * 100) if in_layer.any() else None
    return ModelUncertainty(
        table=table,
        intervals=intervals,
        percent=percent_per_resample(universal, live),
        point=float(point),
        whole_set=float(whole_universal[live].mean() * 100) if live.any() else 0.0,
    )


def _model_document(result: ModelUncertainty) -> dict:
    """A model's entry of ``results/uncertainty.json``."""
    table = result.table
    live = ~table["dead"].to_numpy(bool)
    universal = table["is_universal"].to_numpy(bool)
    return {
        "percent_universal": result.point,
        "percent_universal_whole_set": result.whole_set,
        "percent_universal_lo": result.intervals["lo"],
        "percent_universal_hi": result.intervals["hi"],
        "percent_universal_median": result.intervals["median"],
        "per_layer": result.intervals["per_layer"],
        "n_live": int(live.sum()),
        "n_universal": int(universal.sum()),
        "mean_stability_of_universal": (
            float(table["stability"].to_numpy()[universal].mean()) if universal.any() else None
        ),
    }


def uncertainty_results(
    models: dict[str, ModelUncertainty], block_counts: list[int], settings: dict, confidence: float
) -> dict:
    """The ``results/uncertainty.json`` document: ``settings``, kept positions per block, per
    model its entry, and the interval of the mean % universal over the models."""
    mean = np.mean([m.percent for m in models.values()], axis=0)
    lo, hi = percentile_interval(mean, confidence)
    return {
        "settings": settings,
        "kept_positions_per_block": [int(c) for c in block_counts],
        "models": {name: _model_document(result) for name, result in models.items()},
        "mean_percent_universal": float(np.mean([m.point for m in models.values()])),
        "mean_percent_universal_lo": float(lo),
        "mean_percent_universal_hi": float(hi),
    }


def uncertainty_headline(results: dict) -> dict:
    """``metrics/uncertainty.json``: the interval of the mean and of each model."""
    keys = ("percent_universal_lo", "percent_universal_hi")
    return {
        "mean_percent_universal_lo": results["mean_percent_universal_lo"],
        "mean_percent_universal_hi": results["mean_percent_universal_hi"],
        **{name: {k: entry[k] for k in keys} for name, entry in results["models"].items()},
    }


def per_layer_interval_rows(results: dict) -> pd.DataFrame:
    """``model, layer, percent_universal, lo, hi, median`` (the DVC plot's table;
    ``percent_universal``: the universality stage's)."""
    return pd.DataFrame(
        [
            {"model": model, **row}
            for model, entry in results["models"].items()
            for row in entry["per_layer"]
        ],
        columns=["model", "layer", "percent_universal", "lo", "hi", "median"],
    )


def interval_plot_inputs(results: dict) -> tuple[dict, dict]:
    """From ``results/uncertainty.json``: ``(points, intervals)`` for
    ``outputs.plots.percent_with_intervals`` (per model and layer, the universality stage's
    % universal and the bootstrap ``(lo, hi)``)."""
    points, intervals = {}, {}
    for model, entry in results["models"].items():
        points[model] = [row["percent_universal"] for row in entry["per_layer"]]
        intervals[model] = [(row["lo"], row["hi"]) for row in entry["per_layer"]]
    return points, intervals
