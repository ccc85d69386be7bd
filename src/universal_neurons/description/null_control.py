"""The null control of the findings: what the selection of universal neurons alone produces.

The rotation baseline favours sparse neurons, so "universal neurons are sparser" can come
from the selection rule itself. The null group is a group without real universality (the
group's models at initialisation); on it the same selection is made and the same findings
are tested:

- **selection** (``top_k_selection``): per null model, the ``K`` live neurons of highest
  ``excess_corr`` (ties broken by ``(layer, index)``), ``K`` = the number of universal
  neurons of the real model of the same seed. The null's own selection by ``excess_corr >
  tau`` (``is_universal``) is counted too (usually 0: nothing to compare).
- **comparison**: universal vs other on the selected null neurons, per model
  (``statistics.compare_universal``) and pooled (``findings.pooled_findings``).
- **verdict** (``against_null``), per finding, on the signed effect ``s = sign * r`` (``sign``:
  the paper's direction): ``does not hold`` when the real pooled verdict is not ``holds``;
  ``explained by selection`` when the null's pooled verdict also holds and the real effect's
  interval reaches the null's (``low_real <= high_null`` in ``s``); otherwise ``beyond
  selection``.

``pooled_rows`` / ``pooled_lines``: the ``findings`` tool's pooled table against the null.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from universal_neurons.description.statistics import (
    OUTCOME_CELLS,
    PAPER_FINDINGS,
    compare_universal,
    finding_outcome,
)

SELECTED_COLUMN = "is_selected"
"""The null table's column of the neurons the real group's selection size picks."""

VERDICTS = ("does not hold", "explained by selection", "beyond selection", "no null control")


def top_k_selection(table: pd.DataFrame, k: int) -> np.ndarray:
    """``[neurons]`` bool: the ``k`` live neurons of ``table`` (rows ``layer, index, dead,
    excess_corr``) of highest ``excess_corr``, ties by ``(layer, index)``; fewer when fewer
    live neurons have a defined excess."""
    alive = ~table["dead"].astype(bool).to_numpy() & np.isfinite(table["excess_corr"].to_numpy())
    order = np.lexsort(
        (table["index"].to_numpy(), table["layer"].to_numpy(), -table["excess_corr"].to_numpy())
    )
    order = order[alive[order]][: max(int(k), 0)]
    chosen = np.zeros(len(table), dtype=bool)
    chosen[order] = True
    return chosen


def with_selection(table: pd.DataFrame, k: int) -> pd.DataFrame:
    """A copy of the neuron ``table`` with the ``SELECTED_COLUMN`` of ``top_k_selection``."""
    return table.assign(**{SELECTED_COLUMN: top_k_selection(table, k)})


def null_model_summary(table: pd.DataFrame, k: int) -> dict[str, Any]:
    """One null model: ``k`` (the real model's universal count), ``n_selected``,
    ``n_universal_own`` (its own tau-selection), ``min_selected_excess`` (the K-th largest
    excess, None without a selection) and the per-metric ``comparison`` of the selected
    neurons with the other live ones (``statistics.compare_universal``)."""
    selected = table[SELECTED_COLUMN].astype(bool)
    alive = ~table["dead"].astype(bool)
    excess = table.loc[selected, "excess_corr"]
    return {
        "k": int(k),
        "n_selected": int(selected.sum()),
        "n_universal_own": int((table["is_universal"].astype(bool) & alive).sum()),
        "min_selected_excess": float(excess.min()) if len(excess) else None,
        "comparison": compare_universal(table.assign(is_universal=selected)),
    }


def _signed_interval(entry: Mapping[str, Any], sign: int) -> tuple[float, float]:
    """``(low, high)`` of ``sign * r``'s interval (NaN when the entry has none)."""
    low, high = entry.get("ci_low"), entry.get("ci_high")
    if low is None or high is None:
        return float("nan"), float("nan")
    return min(sign * low, sign * high), max(sign * low, sign * high)


def null_verdict(
    real: Mapping[str, Any], null: Mapping[str, Any] | None, sign: int, alpha: float
) -> str:
    """One of ``VERDICTS`` for a finding from its real and null pooled entries
    (``findings.POOLED_KEYS``); ``null`` None: the null control was not run."""
    if finding_outcome(real, sign, alpha) != "holds":
        return "does not hold"
    if null is None:
        return "no null control"
    if finding_outcome(null, sign, alpha) != "holds":
        return "beyond selection"
    low_real, _ = _signed_interval(real, sign)
    _, high_null = _signed_interval(null, sign)
    if np.isnan(low_real) or np.isnan(high_null) or low_real <= high_null:
        return "explained by selection"
    return "beyond selection"


def against_null(
    real_pooled: Mapping[str, Any], null_pooled: Mapping[str, Any] | None, alpha: float
) -> dict[str, dict[str, Any]]:
    """Per finding's metric: its name, the real and null pooled outcomes and effects, and
    ``verdict`` (``null_verdict``). ``null_pooled`` None: the null control was not run."""
    result = {}
    for finding, metric, sign in PAPER_FINDINGS:
        real = real_pooled.get(metric) or {}
        null = None if null_pooled is None else (null_pooled.get(metric) or {})
        result[metric] = {
            "finding": finding,
            "real": finding_outcome(real, sign, alpha),
            "real_effect": real.get("effect_size"),
            "null": None if null is None else finding_outcome(null, sign, alpha),
            "null_effect": None if null is None else null.get("effect_size"),
            "verdict": null_verdict(real, null, sign, alpha),
        }
    return result


def _signed(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.2f}"


def pooled_cell(entry: Mapping[str, Any] | None, sign: int, alpha: float) -> str:
    """A pooled entry as ``holds +0.54 [+0.15,+0.85]`` (outcome, r, interval); ``n/a``."""
    if not entry:
        return "n/a"
    outcome = finding_outcome(entry, sign, alpha)
    if outcome == "undefined":
        return OUTCOME_CELLS[outcome]
    interval = f" [{_signed(entry.get('ci_low'))},{_signed(entry.get('ci_high'))}]"
    return f"{OUTCOME_CELLS[outcome]} {_signed(entry['effect_size'])}" + interval


def _p_cell(entry: Mapping[str, Any] | None) -> str:
    p_value = (entry or {}).get("p_value")
    return "n/a" if p_value is None else f"p={p_value:.2g}"


def null_pooled(null_result: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """The null control's pooled findings (``results/null_control.json``), or None when the
    control is missing or was not run."""
    if not null_result or not null_result.get("run"):
        return None
    return null_result.get("pooled") or {}


def pooled_rows(
    stats: Mapping[str, Any], null_result: Mapping[str, Any] | None, alpha: float
) -> list[list[str]]:
    """The pooled table as strings: header ``finding, pooled, p, selection alone, against
    null`` and one row per paper finding; ``[]`` when ``stats`` has no ``pooled`` entry."""
    pooled = stats.get("pooled")
    if not isinstance(pooled, Mapping):
        return []
    null = null_pooled(null_result)
    rows = [["finding", "pooled over the group", "p", "selection alone", "against null"]]
    for finding, metric, sign in PAPER_FINDINGS:
        real = pooled.get(metric) or {}
        null_entry = None if null is None else (null.get(metric) or {})
        null_cell = "not run" if null is None else pooled_cell(null_entry, sign, alpha)
        verdict = null_verdict(real, null_entry, sign, alpha)
        rows.append([f"{finding} ({metric})", pooled_cell(real, sign, alpha), _p_cell(real)])
        rows[-1] += [null_cell.split(" [")[0], verdict]
    return rows


def pooled_lines(
    stats: Mapping[str, Any], null_result: Mapping[str, Any] | None, alpha: float
) -> list[str]:
    """README sentences of the pooled table: per finding the pooled outcome, ``r`` [interval],
    ``z`` and ``p``, what selection alone gives and the verdict against it."""
    rows = pooled_rows(stats, null_result, alpha)
    if not rows:
        return []
    pooled, null = stats["pooled"], null_pooled(null_result)
    lines = [f"Pooled over the group (van Elteren's stratified test, p < {alpha}):"]
    for (finding, metric, _), row in zip(PAPER_FINDINGS, rows[1:], strict=True):
        entry = pooled.get(metric) or {}
        z = entry.get("z")
        selection = "not run" if null is None else row[3]
        lines.append(
            f"- {finding} ({metric}): {row[1]}, z = {'n/a' if z is None else f'{z:.2f}'}, "
            f"{row[2].replace('=', ' = ')}, over {len(entry.get('models') or [])} models; "
            f"selection alone: {selection}; {row[4]}."
        )
    return lines
