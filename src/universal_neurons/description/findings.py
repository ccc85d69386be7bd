"""Pooled findings: one verdict per finding over the whole group, with an effect-size interval.

Each model compares its live universal neurons (``n_u``) with its other live neurons
(``n_o``) on one metric; the models are strata. Pooling keeps every comparison within a
model (a metric's scale may differ from model to model):

- **test**: van Elteren's stratified Wilcoxon-Mann-Whitney test. Per model the
  Mann-Whitney statistic ``U_m`` of the universal neurons (ties count 1/2) is centred by
  ``n_u n_o / 2`` and weighted by ``1 / (N_m + 1)`` (``N_m = n_u + n_o``);
  ``z = sum_m (U_m - E U_m) / (N_m + 1) / sqrt(sum_m Var U_m / (N_m + 1)^2)`` with the
  tie-corrected variance ``Var U = n_u n_o / 12 * ((N + 1) - sum_t (t^3 - t) / (N (N - 1)))``;
  two-sided ``p = 2 (1 - Phi(|z|))`` (normal approximation). ``z > 0``: universal neurons
  tend to have larger values.
- **effect**: the stratified rank-biserial correlation
  ``r = sum_m (2 U_m - n_u n_o) / sum_m n_u n_o = P(X_u > X_o) - P(X_u < X_o)`` over all
  (universal, other) pairs of neurons of the same model; with one model it is the per-model
  ``effect_size`` of ``statistics.compare_groups``.
- **interval**: percentile interval of ``r`` over ``BOOTSTRAP_RESAMPLES`` stratified
  bootstrap resamples (within each model, the universal and the other neurons are each
  drawn with replacement), at ``POOLED_CONFIDENCE`` from generators seeded with
  ``POOLED_SEED`` (module constants: the stats stage's parameters do not name them).

A model without a universal (or without another) live neuron is left out of the pool.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats
from tqdm import tqdm

from universal_neurons.description.statistics import PAPER_FINDINGS

BOOTSTRAP_RESAMPLES = 1000
"""Stratified bootstrap resamples of the pooled effect's interval (a module constant: the
parameters are frozen; 1000 keeps the 2.5 % tail's percentile within about +-0.01 of r)."""

POOLED_CONFIDENCE = 0.95
"""Level of the pooled effect's percentile interval (the default of ``uncertainty.confidence``;
a constant so that the preset pipelines, whose parameter files have no ``uncertainty``
section, need none)."""

POOLED_SEED = 0
"""Seed of the pooled effect's bootstrap (the default of ``uncertainty.seed``)."""

POOLED_KEYS = (
    "effect_size",
    "ci_low",
    "ci_high",
    "z",
    "p_value",
    "n_universal",
    "n_other",
    "models",
)
"""What each metric's entry under ``pooled`` in ``results/stats.json`` holds."""


@dataclass(frozen=True)
class Stratum:
    """One model's two samples of a metric: ``universal [n_u]`` and ``other [n_o]`` (no NaN)."""

    universal: np.ndarray
    other: np.ndarray


def mann_whitney_u(universal: np.ndarray, other: np.ndarray) -> float:
    """Mann-Whitney U of ``universal [n_u]`` against ``other [n_o]``: the number of pairs with
    the universal value larger, ties counting 1/2 (``O((n_u + n_o) log n_o)``)."""
    ordered = np.sort(other)
    below = np.searchsorted(ordered, universal, side="left")
    up_to = np.searchsorted(ordered, universal, side="right")
    return float(np.sum(below) + 0.5 * np.sum(up_to - below))


def u_variance(universal: np.ndarray, other: np.ndarray) -> float:
    """Variance of U under no difference, corrected for ties (the normal approximation's)."""
    n_u, n_o = len(universal), len(other)
    total = n_u + n_o
    _, counts = np.unique(np.concatenate([universal, other]), return_counts=True)
    ties = float(np.sum(counts.astype(np.float64) ** 3 - counts)) / (total * (total - 1))
    return n_u * n_o / 12.0 * ((total + 1) - ties)


def strata_of(
    tables: Mapping[str, pd.DataFrame], metric: str, selected: str = "is_universal"
) -> dict[str, Stratum]:
    """Per model, the live neurons' ``metric`` split by the boolean column ``selected``; a
    model without both groups (after dropping NaN values) is left out."""
    strata = {}
    for model, table in tables.items():
        alive = table[~table["dead"].astype(bool)]
        chosen = alive[selected].astype(bool).to_numpy()
        values = alive[metric].to_numpy(np.float64)
        universal, other = values[chosen], values[~chosen]
        universal, other = universal[~np.isnan(universal)], other[~np.isnan(other)]
        if len(universal) and len(other):
            strata[model] = Stratum(universal, other)
    return strata


def pooled_effect(strata: Sequence[Stratum]) -> float:
    """Stratified rank-biserial ``r`` in [-1, 1] (NaN without strata)."""
    pairs = sum(len(s.universal) * len(s.other) for s in strata)
    if not pairs:
        return float("nan")
    wins = sum(2.0 * mann_whitney_u(s.universal, s.other) for s in strata)
    return wins / pairs - 1.0


def van_elteren(strata: Sequence[Stratum]) -> tuple[float, float]:
    """``(z, two-sided p)`` of van Elteren's stratified test (NaN, NaN without strata or
    when every value of every stratum ties)."""
    centred, variance = 0.0, 0.0
    for s in strata:
        n_u, n_o = len(s.universal), len(s.other)
        weight = 1.0 / (n_u + n_o + 1)
        centred += weight * (mann_whitney_u(s.universal, s.other) - n_u * n_o / 2.0)
        variance += weight**2 * u_variance(s.universal, s.other)
    if variance <= 0:
        return float("nan"), float("nan")
    z = centred / np.sqrt(variance)
    return float(z), float(2.0 * scipy_stats.norm.sf(abs(z)))


def bootstrap_interval(
    strata: Sequence[Stratum], confidence: float, rng: np.random.Generator, resamples: int
) -> tuple[float, float]:
    """Percentile interval at ``confidence`` of the pooled ``r`` over stratified resamples."""
    if not strata:
        return float("nan"), float("nan")
    values = np.empty(resamples)
    for k in range(resamples):
        drawn = [
            Stratum(
                s.universal[rng.integers(0, len(s.universal), len(s.universal))],
                s.other[rng.integers(0, len(s.other), len(s.other))],
            )
            for s in strata
        ]
        values[k] = pooled_effect(drawn)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(values, [tail, 1.0 - tail])
    return float(low), float(high)


def _number(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def pooled_comparison(
    strata: Mapping[str, Stratum],
    confidence: float,
    rng: np.random.Generator,
    resamples: int = BOOTSTRAP_RESAMPLES,
) -> dict[str, Any]:
    """One metric pooled over the models: ``POOLED_KEYS`` (None where undefined; ``models``:
    the models that entered the pool)."""
    kept = list(strata.values())
    z, p_value = van_elteren(kept)
    low, high = bootstrap_interval(kept, confidence, rng, resamples)
    return {
        "effect_size": _number(pooled_effect(kept)),
        "ci_low": _number(low),
        "ci_high": _number(high),
        "z": _number(z),
        "p_value": _number(p_value),
        "n_universal": int(sum(len(s.universal) for s in kept)),
        "n_other": int(sum(len(s.other) for s in kept)),
        "models": list(strata),
    }


def finding_metrics() -> tuple[str, ...]:
    """The metrics that test the paper's findings, in ``PAPER_FINDINGS`` order."""
    return tuple(metric for _, metric, _ in PAPER_FINDINGS)


def pooled_findings(
    tables: Mapping[str, pd.DataFrame],
    confidence: float = POOLED_CONFIDENCE,
    seed: int = POOLED_SEED,
    metrics: Sequence[str] | None = None,
    selected: str = "is_universal",
    progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """``{metric: pooled_comparison}`` over the neuron tables ``{model: table}`` (default: the
    findings' metrics), universal = the column ``selected``; each metric's bootstrap draws
    from its own generator, seeded by ``(seed, crc32 of its name)``: adding a metric
    changes none of the others."""
    metrics = finding_metrics() if metrics is None else tuple(metrics)
    return {
        metric: pooled_comparison(
            strata_of(tables, metric, selected),
            confidence,
            np.random.default_rng([seed, zlib.crc32(metric.encode())]),
        )
        for metric in tqdm(metrics, desc="pooled findings", unit="metric", disable=not progress)
    }
