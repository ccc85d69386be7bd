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

from collections.abc import Iterable

import numpy as np
import pandas as pd

from universal_neurons.errors import UserError

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
        raise UserError(f"no rows for model {model!r} in the {value} table")
    return rows.pivot_table(
        index=["layer", "index"], columns="partner", values=value, dropna=False, aggfunc="first"
    )


def _mean_baseline(baseline: pd.DataFrame, model: str, corr: pd.DataFrame) -> pd.DataFrame:
    """``[neurons, partners]`` of the baseline averaged over its draws, aligned with ``corr``."""
    base_mean = (
        baseline[baseline["model"] == model]
        .groupby(["partner", "layer", "index"], sort=False)["baseline"]
        .mean()
        .reset_index()
        .assign(model=model)
    )
    base = _per_partner(base_mean, model, "baseline")
    base = base.reindex(index=corr.index, columns=list(corr.columns))
    if base.isna().all(axis=None) and not corr.isna().all(axis=None):
        raise UserError(f"baseline table has no values for model {model!r}")
    return base


def _dead(maxima: pd.DataFrame, model: str, index: pd.Index) -> np.ndarray:
    """bool ``[neurons]`` in the order of ``index``: the neuron's variance was dead."""
    return (
        maxima[maxima["model"] == model]
        .groupby(["layer", "index"], sort=True)["dead"]
        .first()
        .reindex(index)
        .to_numpy(dtype=bool)
    )


def _live_values(frame: pd.DataFrame, dead: np.ndarray) -> np.ndarray:
    """float64 ``[neurons, partners]`` of ``frame`` with the rows of dead neurons NaN."""
    values = frame.to_numpy(dtype=np.float64, copy=True)
    values[dead] = np.nan
    return values


def _best_partner(
    maxima: pd.DataFrame, model: str, out: pd.DataFrame, values: np.ndarray, partners: list
) -> pd.DataFrame:
    """Which partner neuron gave each live neuron's overall maximum correlation: columns
    ``best_partner`` ("" if none), ``best_partner_layer``, ``best_partner_index`` (-1 if none)."""
    argmax = maxima[maxima["model"] == model].set_index(["partner", "layer", "index"])
    best = np.full(len(out), "", dtype=object)
    best_layer = np.full(len(out), -1, dtype=np.int64)
    best_index = np.full(len(out), -1, dtype=np.int64)
    choice = np.where(np.isnan(values), -np.inf, values).argmax(axis=1)
    live = ~out["dead"].to_numpy(bool)
    for row in np.flatnonzero(live & np.isfinite(out["max_corr"].to_numpy())):
        partner = partners[choice[row]]
        key = (partner, out.at[row, "layer"], out.at[row, "index"])
        best[row] = partner
        best_layer[row] = argmax.at[key, "argmax_layer"]
        best_index[row] = argmax.at[key, "argmax_index"]
    return out.assign(
        best_partner=best.astype(str), best_partner_layer=best_layer, best_partner_index=best_index
    )


def universality_table(
    maxima: pd.DataFrame, baseline: pd.DataFrame, model: str, threshold: float
) -> pd.DataFrame:
    """The neuron table of ``model`` (columns ``TABLE_COLUMNS``, one row per neuron, layer-major).

    ``maxima``: rows ``model, partner, layer, index, dead, max_corr, argmax_layer, argmax_index``;
    ``baseline``: rows ``model, partner, sample, layer, index, baseline``.
    """
    corr = _per_partner(maxima, model, "max_corr")
    dead = _dead(maxima, model, corr.index)
    values = _live_values(corr, dead)
    base_values = _live_values(_mean_baseline(baseline, model, corr), dead)
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
    return _best_partner(maxima, model, out, values, list(corr.columns))[TABLE_COLUMNS]


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
    """The ``results/universality.json`` document (its headline: ``headline_metrics``)."""
    return {
        "threshold": float(threshold),
        "kept_positions": int(kept_positions),
        "mean_percent_universal": mean_percent_universal(summaries),
        "models": summaries,
    }


def mean_percent_universal(summaries: dict[str, dict]) -> float:
    """Mean over the models (``model_summary`` each) of the percentage of live neurons that
    are universal."""
    return float(np.mean([s["percent_universal"] for s in summaries.values()]))


def median_over_live(tables: Iterable[pd.DataFrame], column: str) -> float:
    """Median of ``column`` (e.g. ``mean_corr``, ``mean_baseline``) over every live neuron of
    every neuron table; NaN if there is none."""
    values = np.concatenate(
        [t.loc[~t["dead"].astype(bool), column].to_numpy(np.float64) for t in tables]
    )
    values = values[np.isfinite(values)]
    return float(np.median(values)) if len(values) else float("nan")


def headline_metrics(summaries: dict[str, dict], tables: dict[str, pd.DataFrame]) -> dict:
    """``metrics/universality.json``: the numbers people compare between runs (percent
    universal, mean and per model; median correlation with the partners and median baseline,
    both over every live neuron of every model). The whole document is
    ``universality_metrics``."""
    return {
        "mean_percent_universal": mean_percent_universal(summaries),
        "percent_universal": {name: s["percent_universal"] for name, s in summaries.items()},
        "median_corr": median_over_live(tables.values(), "mean_corr"),
        "median_baseline": median_over_live(tables.values(), "mean_baseline"),
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
