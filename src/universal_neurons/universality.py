"""Universality: a neuron is universal when it correlates with the other seeds well above baseline.

Inputs are long tables with one row per (model, partner, neuron):
``max_corr`` (correlate) and ``baseline`` (baseline, averaged over its draws). For
neuron i of model a, over its partners m (every other model of the group)::

    max_corr_i = max_m max_corr_i^{a,m}    mean_corr_i = mean_m    min_corr_i = min_m
    (the same for the baseline)
    excess_corr_i = mean_corr_i - mean_baseline_i,   universal iff excess_corr_i > τ

Dead neurons (zero variance) have NaN correlations, are never universal and are left
out of the percentages.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

CONTRACT_COLUMNS = [
    "layer",
    "index",
    "dead",
    "max_corr",
    "mean_corr",
    "min_corr",
    "max_baseline",
    "mean_baseline",
    "min_baseline",
    "excess_corr",
    "is_universal",
]
"""The columns later stages rely on (docs/ARCHITECTURE.md)."""

TABLE_COLUMNS = [*CONTRACT_COLUMNS, "best_partner", "best_partner_layer", "best_partner_index"]


def _per_partner(table: pd.DataFrame, model: str, value: str) -> pd.DataFrame:
    """``[neurons (layer, index), partners]`` of ``value`` for one model."""
    rows = table[table["model"] == model]
    if rows.empty:
        raise ValueError(f"no rows for model {model!r} in the {value} table")
    return rows.pivot_table(
        index=["layer", "index"], columns="partner", values=value, dropna=False, aggfunc="first"
    )


def universality_table(
    maxima: pd.DataFrame, baseline: pd.DataFrame, model: str, threshold: float
) -> pd.DataFrame:
    """The neuron table of ``model`` (columns ``TABLE_COLUMNS``, one row per neuron, layer-major).

    ``maxima``: rows ``model, partner, layer, index, dead, max_corr, argmax_layer, argmax_index``;
    ``baseline``: rows ``model, partner, sample, layer, index, baseline``.
    """
    corr = _per_partner(maxima, model, "max_corr")
    partners = list(corr.columns)
    base_mean = (
        baseline[baseline["model"] == model]
        .groupby(["partner", "layer", "index"], sort=False)["baseline"]
        .mean()
        .reset_index()
        .assign(model=model)
    )
    base = _per_partner(base_mean, model, "baseline").reindex(index=corr.index, columns=partners)
    if base.isna().all(axis=None) and not corr.isna().all(axis=None):
        raise ValueError(f"baseline table has no values for model {model!r}")
    dead = (
        maxima[maxima["model"] == model]
        .groupby(["layer", "index"], sort=True)["dead"]
        .first()
        .reindex(corr.index)
        .to_numpy(dtype=bool)
    )
    values = corr.to_numpy(dtype=np.float64, copy=True)
    values[dead] = np.nan
    base_values = base.to_numpy(dtype=np.float64, copy=True)
    base_values[dead] = np.nan
    live = ~dead
    out = pd.DataFrame(
        {
            "layer": corr.index.get_level_values("layer").to_numpy(np.int64),
            "index": corr.index.get_level_values("index").to_numpy(np.int64),
            "dead": dead,
        }
    )
    with np.errstate(invalid="ignore"):
        for name, arr in (("corr", values), ("baseline", base_values)):
            out[f"max_{name}"] = _reduce(np.nanmax, arr, live)
            out[f"mean_{name}"] = _reduce(np.nanmean, arr, live)
            out[f"min_{name}"] = _reduce(np.nanmin, arr, live)
    out["excess_corr"] = out["mean_corr"] - out["mean_baseline"]
    out["is_universal"] = (out["excess_corr"] > threshold).fillna(False).astype(bool)

    # which partner neuron gave the overall maximum
    argmax = maxima[maxima["model"] == model].set_index(["partner", "layer", "index"])
    best = np.full(len(out), "", dtype=object)
    best_layer = np.full(len(out), -1, dtype=np.int64)
    best_index = np.full(len(out), -1, dtype=np.int64)
    filled = np.where(np.isnan(values), -np.inf, values)
    choice = filled.argmax(axis=1)
    for row in np.flatnonzero(live & np.isfinite(out["max_corr"].to_numpy())):
        partner = partners[choice[row]]
        key = (partner, out.at[row, "layer"], out.at[row, "index"])
        best[row] = partner
        best_layer[row] = argmax.at[key, "argmax_layer"]
        best_index[row] = argmax.at[key, "argmax_index"]
    out["best_partner"] = best.astype(str)
    out["best_partner_layer"] = best_layer
    out["best_partner_index"] = best_index
    return out[TABLE_COLUMNS]


def _reduce(func, values: np.ndarray, live: np.ndarray) -> np.ndarray:
    """``func`` over partners for live neurons whose row has a value; NaN elsewhere."""
    result = np.full(values.shape[0], np.nan)
    rows = live & ~np.isnan(values).all(axis=1)
    if rows.any():
        result[rows] = func(values[rows], axis=1)
    return result


def model_summary(table: pd.DataFrame, n_layers: int) -> dict:
    """``percent_universal`` (over non-dead neurons), counts, and the per-layer percentages.

    A layer without live neurons gets ``None`` (it has no percentage).
    """
    live = ~table["dead"].to_numpy(bool)
    universal = table["is_universal"].to_numpy(bool)
    layers = table["layer"].to_numpy()
    per_layer = []
    for layer in range(n_layers):
        in_layer = live & (layers == layer)
        per_layer.append(
            float(100.0 * universal[in_layer].sum() / in_layer.sum()) if in_layer.any() else None
        )
    n_live = int(live.sum())
    return {
        "percent_universal": float(100.0 * universal.sum() / n_live) if n_live else 0.0,
        "n_universal": int(universal.sum()),
        "n_neurons": int(len(table)),
        "n_dead": int((~live).sum()),
        "percent_universal_per_layer": per_layer,
    }


def universality_metrics(summaries: dict[str, dict], threshold: float, kept_positions: int) -> dict:
    """The ``metrics/universality.json`` document."""
    return {
        "threshold": float(threshold),
        "kept_positions": int(kept_positions),
        "mean_percent_universal": float(
            np.mean([s["percent_universal"] for s in summaries.values()])
        ),
        "models": summaries,
    }


def per_layer_rows(summaries: dict[str, dict]) -> pd.DataFrame:
    """``model, layer, percent_universal`` (the DVC plot's table)."""
    return pd.DataFrame(
        [
            {"model": model, "layer": layer, "percent_universal": percent}
            for model, summary in summaries.items()
            for layer, percent in enumerate(summary["percent_universal_per_layer"])
        ]
    )
