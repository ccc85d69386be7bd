"""One-to-one matching: a stricter notion of a neuron recurring in another model.

The max-correlation definition (``universality``) lets many neurons of model a pick the same
neuron of partner m. One-to-one matching (convergent learning, Li et al. 2016) pairs every
neuron of a with a different neuron of m: the maximum-weight assignment on the correlation
matrix ``ρ [N_a, N_m]`` (``scipy.optimize.linear_sum_assignment``). A pair (i, j) is a
*mutual best match* when j is i's most correlated neuron of m and i is j's of a.

Per neuron i of model a, over its partners m::

    mean_assigned_corr_i = mean_m ρ_{i, π_m(i)}       (π_m: the assignment with m)
    one_to_one_excess_i  = mean_assigned_corr_i - mean_baseline_i   (universality's baseline)
    is_one_to_one_universal_i  iff  one_to_one_excess_i > τ
    mutual_partners_i = #{m : i and π_m(i) are mutual best matches}

A dead neuron (NaN correlation row or column) is matched last: its entries weigh
``DEAD_WEIGHT``, below any correlation, so a live neuron is paired with a dead one only when
no live one is left; such a pair has no correlation (NaN, partner -1) and the mean is over the
partners where the neuron got a live one (NaN if none). Dead neurons are never universal.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment

from universal_neurons.errors import UserError

DEAD_WEIGHT = -2.0
"""The weight of a NaN (dead) correlation in the assignment: below every correlation (>= -1)."""

NOT_AVAILABLE = "not available at this size (no full pair statistics)"
"""The result when correlate wrote per-neuron maxima instead of the pairs' statistics."""


@dataclass(frozen=True)
class PairMatch:
    """The one-to-one matching of models a and b, from a's side.

    ``partner [N_a]`` int64: the neuron of b (flat, layer-major) assigned to each neuron of a,
    -1 where none live; ``corr [N_a]`` float64: its correlation (NaN where none);
    ``mutual [N_a]`` bool: the assigned pair is a mutual best match; ``seconds``: the
    assignment's wall time.
    """

    partner: np.ndarray
    corr: np.ndarray
    mutual: np.ndarray
    seconds: float = 0.0

    def reversed(self, n_b: int) -> PairMatch:
        """The same matching from b's side (``N_b`` = ``n_b`` neurons): the inverse assignment."""
        partner = np.full(n_b, -1, dtype=np.int64)
        corr = np.full(n_b, np.nan)
        mutual = np.zeros(n_b, dtype=bool)
        rows = np.flatnonzero(self.partner >= 0)
        cols = self.partner[rows]
        partner[cols], corr[cols], mutual[cols] = rows, self.corr[rows], self.mutual[rows]
        return PairMatch(partner, corr, mutual, self.seconds)


def assignment(corr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The maximum-weight one-to-one assignment of ``corr [N_a, N_b]`` (float, NaN = dead).

    Returns ``(rows, cols)`` int64, as ``linear_sum_assignment(w, maximize=True)`` gives them
    with ``w`` = ``corr`` where finite, ``DEAD_WEIGHT`` elsewhere: ``min(N_a, N_b)`` pairs,
    ``rows`` increasing.
    """
    weights = np.where(np.isfinite(corr), corr, DEAD_WEIGHT).astype(np.float64, copy=False)
    rows, cols = linear_sum_assignment(weights, maximize=True)
    return rows.astype(np.int64), cols.astype(np.int64)


def best_matches(corr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row and per column of ``corr [N_a, N_b]``, the index of its largest finite entry
    (the first one on ties), -1 where the row or column has none: ``([N_a], [N_b])`` int64."""
    finite = np.isfinite(corr)
    filled = np.where(finite, corr, -np.inf)
    by_row = np.where(finite.any(axis=1), filled.argmax(axis=1), -1)
    by_col = np.where(finite.any(axis=0), filled.argmax(axis=0), -1)
    return by_row.astype(np.int64), by_col.astype(np.int64)


def mutual_best(corr: np.ndarray) -> np.ndarray:
    """``[N_a]`` int64: for each row i of ``corr [N_a, N_b]``, its mutual best match j (i's
    argmax is j and j's argmax is i), -1 where there is none."""
    by_row, by_col = best_matches(corr)
    rows = np.arange(corr.shape[0])
    mutual = (by_row >= 0) & (by_col[np.maximum(by_row, 0)] == rows)
    return np.where(mutual, by_row, -1)


def match_pair(corr: np.ndarray) -> PairMatch:
    """The one-to-one matching of a pair from a's side (``PairMatch``); ``corr [N_a, N_b]``
    the Pearson correlations, NaN in the rows and columns of dead neurons."""
    start = time.perf_counter()
    rows, cols = assignment(corr)
    seconds = time.perf_counter() - start
    partner = np.full(corr.shape[0], -1, dtype=np.int64)
    values = np.full(corr.shape[0], np.nan)
    assigned = corr[rows, cols]
    live = np.isfinite(assigned)
    partner[rows[live]], values[rows[live]] = cols[live], assigned[live]
    mutual = (partner >= 0) & (mutual_best(corr) == partner)
    return PairMatch(partner, values, mutual, seconds)


def one_to_one_table(
    universality: pd.DataFrame, matches: Mapping[str, PairMatch], threshold: float
) -> pd.DataFrame:
    """A model's one-to-one table, one row per neuron (the rows of its ``universality`` table,
    layer-major): ``layer, index, dead, is_universal, mean_baseline``, per partner m
    ``partner_{m}`` (flat neuron index of m, -1: none), ``corr_{m}``, ``mutual_{m}``; then
    ``mean_assigned_corr``, ``one_to_one_excess``, ``is_one_to_one_universal`` (excess >
    ``threshold``, never for a dead neuron) and ``mutual_partners`` (partners with a mutual
    best match). ``matches``: per partner name, the ``PairMatch`` from this model's side."""
    columns = ["layer", "index", "dead", "is_universal", "mean_baseline"]
    if missing := [column for column in columns if column not in universality.columns]:
        raise UserError(f"universality table: columns {missing} missing; rerun universality")
    out = universality[columns].copy()
    out = out.reset_index(drop=True)
    dead = out["dead"].to_numpy(bool)
    for name, match in matches.items():
        out[f"partner_{name}"] = match.partner
        out[f"corr_{name}"] = match.corr
        out[f"mutual_{name}"] = match.mutual & ~dead
    values = np.stack([m.corr for m in matches.values()], axis=1)
    has = ~np.isnan(values).all(axis=1) & ~dead
    mean = np.full(len(out), np.nan)
    if has.any():
        mean[has] = np.nanmean(values[has], axis=1)
    out["mean_assigned_corr"] = mean
    out["one_to_one_excess"] = mean - out["mean_baseline"].to_numpy(np.float64)
    out["is_one_to_one_universal"] = (out["one_to_one_excess"] > threshold).fillna(False)
    out["is_one_to_one_universal"] &= ~dead
    mutual = np.stack([m.mutual for m in matches.values()], axis=1) & ~dead[:, None]
    out["mutual_partners"] = mutual.sum(axis=1).astype(np.int64)
    return out


def match_pairs(
    pairs: Iterable[tuple[tuple[str, str], np.ndarray]],
) -> dict[tuple[str, str], tuple[PairMatch, dict]]:
    """Match every pair once, from a's side (correlate does this while it holds the pair
    statistics). ``pairs``: ``((a, b), corr [N_a, N_b])``, a generator may load each in turn.
    Returns ``{(a, b): (PairMatch, record)}``, the record: ``mean_assigned_corr`` and
    ``mutual_fraction`` over a's live neurons (no wall time: the record goes into results/,
    which a rerun must write byte for byte the same)."""
    matched = {}
    for (a, b), corr in pairs:
        match = match_pair(corr)
        live = np.isfinite(corr).any(axis=1)
        matched[(a, b)] = (
            match,
            {
                "mean_assigned_corr": _finite_mean(match.corr),
                "mutual_fraction": float(match.mutual[live].mean()) if live.any() else None,
            },
        )
    return matched


def matches_by_model(
    pair_matches: Iterable[tuple[tuple[str, str], PairMatch]], n_b: int
) -> dict[str, dict[str, PairMatch]]:
    """``{a: {m: PairMatch}}``: every pair's matching from both sides (its reverse is the
    inverse assignment: the optimum of ρᵀ is the same set of pairs), in the order of
    ``pair_matches`` (``((a, b), match from a's side)``); ``n_b``: neurons per model."""
    matches: dict[str, dict[str, PairMatch]] = {}
    for (a, b), match in pair_matches:
        matches.setdefault(a, {})[b] = match
        matches.setdefault(b, {})[a] = match.reversed(n_b)
    return matches


def model_comparison(table: pd.DataFrame) -> dict:
    """One model's max-correlation vs one-to-one numbers (over live neurons, percentages in
    %): ``n_live``, ``percent_universal`` (max-corr), ``percent_one_to_one_universal``,
    ``percent_mutual_all`` (mutual best match with every partner), and the overlap counts
    ``n_universal``, ``n_one_to_one_universal``, ``n_both``, ``n_universal_mutual_all``."""
    live = ~table["dead"].to_numpy(bool)
    universal = table["is_universal"].to_numpy(bool) & live
    strict = table["is_one_to_one_universal"].to_numpy(bool) & live
    partners = sum(1 for column in table.columns if column.startswith("partner_"))
    mutual_all = (table["mutual_partners"].to_numpy() == partners) & live
    n_live = int(live.sum())

    def percent(flags: np.ndarray) -> float:
        return float(100.0 * flags.sum() / n_live) if n_live else 0.0

    return {
        "n_live": n_live,
        "percent_universal": percent(universal),
        "percent_one_to_one_universal": percent(strict),
        "percent_mutual_all": percent(mutual_all),
        "n_universal": int(universal.sum()),
        "n_one_to_one_universal": int(strict.sum()),
        "n_both": int((universal & strict).sum()),
        "n_universal_mutual_all": int((universal & mutual_all).sum()),
    }


def side_by_side_rows(results: dict) -> list[dict]:
    """Rows the report shows, one per model: ``model``, ``% universal (max corr)``,
    ``% one-to-one universal``, ``% mutual with every partner``, ``universal and one-to-one``
    (a count). ``results``: the ``results/one_to_one.json`` document; no rows when it was not
    available at the group's size."""
    if not results.get("available"):
        return []
    return [
        {
            "model": model,
            "% universal (max corr)": round(row["percent_universal"], 2),
            "% one-to-one universal": round(row["percent_one_to_one_universal"], 2),
            "% mutual with every partner": round(row["percent_mutual_all"], 2),
            "universal and one-to-one": row["n_both"],
        }
        for model, row in results["models"].items()
    ]


def headline(results: dict) -> dict:
    """``metrics/one_to_one.json``: mean over the models of the three percentages, and the
    fraction of max-corr universal neurons that are also one-to-one universal (None: none
    universal); ``available: false`` alone when the group was too large."""
    if not results.get("available"):
        return {"available": False}
    models = results["models"].values()
    universal = sum(m["n_universal"] for m in models)
    return {
        "available": True,
        "mean_percent_universal": _mean(m["percent_universal"] for m in models),
        "mean_percent_one_to_one_universal": _mean(
            m["percent_one_to_one_universal"] for m in models
        ),
        "mean_percent_mutual_all": _mean(m["percent_mutual_all"] for m in models),
        "universal_also_one_to_one": (
            sum(m["n_both"] for m in models) / universal if universal else None
        ),
    }


def _mean(values: Iterable[float]) -> float:
    return float(np.mean(list(values)))


def _finite_mean(values: np.ndarray) -> float | None:
    """Mean of the finite entries, None if there is none."""
    values = values[np.isfinite(values)]
    return float(values.mean()) if len(values) else None
