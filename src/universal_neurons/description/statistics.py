"""Neuron statistics: the neuron table, and how universal neurons differ from the rest.

Per neuron ``i`` of layer ``l``, on the processed weights (LayerNorm folded, writing
weights and unembedding centred; see ``models.loading.processed_weights``):

- ``w_in_norm`` = ‖W_in[l, :, i]‖, ``w_out_norm`` = ‖W_out[l, i, :]‖ (Euclidean norms),
  ``input_bias`` = b_in[l, i], ``in_out_sim`` = cos(W_in[l, :, i], W_out[l, i, :]),
  ``l2_penalty`` = ‖W_in[l, :, i]‖² + ‖W_out[l, i, :]‖².
- ``vocab_mean, vocab_var, vocab_skew, vocab_kurt``: moments over the vocabulary of
  c_v = cos(W_out[l, i, :], W_U[:, v]): mean, population variance (divides by the
  vocabulary size), standardised skew, non-excess kurtosis (a Gaussian gives 3).
- ``mean, var, skew, kurt, sparsity``: the exact streaming moments of the neuron's
  pre-activation over the kept positions (the ``pre_*`` columns of the collect stage's
  ``moments.parquet``); ``sparsity`` is the fraction of positions with pre-activation > 0.
- ``{metric}_pct``: the metric's percentile within its layer, in percent:
  ``100 * rank / n`` with average ranks for ties, over the neurons of the layer whose
  value is defined (dead neurons included: they are neurons of the layer). The largest
  value of a layer gets 100, the smallest ``100 / n``.

The comparison (``compare_universal``) takes the live neurons (``dead`` False) and splits
them by ``is_universal``; per metric it reports both medians, the rank-biserial
correlation ``r = 2 U / (n_u n_o) - 1 = P(X_u > X_o) - P(X_u < X_o)`` (U: the
Mann-Whitney statistic of the universal group; r > 0: universal neurons tend to have
larger values) and the two-sided Mann-Whitney U p-value of ``scipy.stats.mannwhitneyu``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import stats as scipy_stats

from universal_neurons.errors import UserError
from universal_neurons.matching.moments import StreamingMoments
from universal_neurons.matching.universality import CONTRACT_COLUMNS

WEIGHT_METRICS = ("w_in_norm", "w_out_norm", "input_bias", "in_out_sim", "l2_penalty")
VOCAB_METRICS = ("vocab_mean", "vocab_var", "vocab_skew", "vocab_kurt")
ACTIVATION_METRICS = ("mean", "var", "skew", "kurt", "sparsity")
METRICS = WEIGHT_METRICS + VOCAB_METRICS + ACTIVATION_METRICS
"""Every per-neuron statistic of the neuron table, in column order."""

UNIVERSALITY_COLUMNS = tuple(CONTRACT_COLUMNS)
"""The universality stage's neuron table (docs/ARCHITECTURE.md), the first columns of ours."""

MOMENT_KINDS_COLUMNS = ("mean", "var", "skew", "kurt", "sparsity")

COMPARISON_KEYS = (
    "median_universal",
    "median_other",
    "effect_size",
    "p_value",
    "n_universal",
    "n_other",
)

BOOL_COLUMNS = ("dead", "is_universal")
INT_COLUMNS = ("layer", "index")


def percentile_column(metric: str) -> str:
    """Name of the within-layer percentile column of ``metric``."""
    return f"{metric}_pct"


EMERGENCE_COLUMN = "first_universal_tokens"
"""Training tokens of the first checkpoint at which the neuron was universal (NaN: never,
or no emergence measurement), from the emergence stage."""


def first_universal_tokens(neurons: pd.DataFrame) -> pd.DataFrame:
    """Per neuron, the first training-token count at which it was universal.

    ``neurons``: rows ``model, tokens, layer, index, is_universal`` (one per checkpoint and
    neuron). Returns ``model, layer, index, first_universal_tokens`` (float, NaN where the
    neuron was never universal), sorted by model, layer and index.
    """
    passed = neurons[neurons["is_universal"].to_numpy(bool)]
    first = passed.groupby(["model", "layer", "index"], sort=True)["tokens"].min()
    keys = neurons[["model", "layer", "index"]].drop_duplicates()
    out = keys.merge(
        first.rename(EMERGENCE_COLUMN).reset_index(), how="left", on=keys.columns.tolist()
    )
    out[EMERGENCE_COLUMN] = out[EMERGENCE_COLUMN].astype(np.float64)
    return out.sort_values(["model", "layer", "index"], kind="stable").reset_index(drop=True)


def table_columns() -> list[str]:
    """Every column of the neuron table, in order."""
    return [
        *UNIVERSALITY_COLUMNS,
        EMERGENCE_COLUMN,
        *METRICS,
        *(percentile_column(m) for m in METRICS),
    ]


def _float64(array: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().to(torch.float64).numpy()
    return np.asarray(array, dtype=np.float64)


def _checked_weights(
    weights: Mapping[str, torch.Tensor | np.ndarray],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(W_in, b_in, W_out, W_U)`` in float64, their shapes checked against each other."""
    missing = [key for key in ("W_in", "b_in", "W_out", "W_U") if key not in weights]
    if missing:
        raise UserError(f"weights: missing {', '.join(missing)}")
    w_in, b_in = _float64(weights["W_in"]), _float64(weights["b_in"])
    w_out, w_u = _float64(weights["W_out"]), _float64(weights["W_U"])
    if w_in.ndim != 3:
        raise UserError(f"weights W_in: expected [layers, d_model, d_mlp], got shape {w_in.shape}")
    n_layers, d_model, d_mlp = w_in.shape
    expected = {
        "b_in": (b_in, (n_layers, d_mlp)),
        "W_out": (w_out, (n_layers, d_mlp, d_model)),
    }
    for key, (array, shape) in expected.items():
        if array.shape != shape:
            raise UserError(f"weights {key}: expected shape {shape}, got {array.shape}")
    if w_u.ndim != 2 or w_u.shape[0] != d_model:
        raise UserError(f"weights W_U: expected [d_model={d_model}, vocab], got {w_u.shape}")
    return w_in, b_in, w_out, w_u


def _vocab_moments(
    out_unit: torch.Tensor, unembed_unit: torch.Tensor, neuron_chunk: int
) -> dict[str, np.ndarray]:
    """``VOCAB_METRICS`` ``[layers, d_mlp]``: moments over the vocabulary of the cosines of the
    unit output weights ``out_unit [layers, d_mlp, d_model]`` with the unit unembedding
    columns ``unembed_unit [d_model, vocab]``, ``neuron_chunk`` neurons at a time."""
    n_layers, d_mlp, _ = out_unit.shape
    vocab = {name: np.empty((n_layers, d_mlp)) for name in VOCAB_METRICS}
    for layer in range(n_layers):
        for start in range(0, d_mlp, neuron_chunk):
            cos = out_unit[layer, start : start + neuron_chunk] @ unembed_unit  # [chunk, vocab]
            moments = StreamingMoments.of_batch(cos.T)  # observations = vocabulary
            end = start + cos.shape[0]
            vocab["vocab_mean"][layer, start:end] = moments.mean
            vocab["vocab_var"][layer, start:end] = moments.var
            vocab["vocab_skew"][layer, start:end] = moments.skew
            vocab["vocab_kurt"][layer, start:end] = moments.kurt
    return vocab


def weight_statistics(
    weights: Mapping[str, torch.Tensor | np.ndarray], neuron_chunk: int = 256
) -> pd.DataFrame:
    """Weight and vocabulary statistics of every neuron, in float64.

    ``weights``: ``W_in [layers, d_model, d_mlp]``, ``b_in [layers, d_mlp]``,
    ``W_out [layers, d_mlp, d_model]``, ``W_U [d_model, vocab]`` (as
    ``models.loading.processed_weights`` returns them). Returns one row per neuron, ordered by
    ``(layer, index)``: ``layer, index`` and the columns of ``WEIGHT_METRICS`` and
    ``VOCAB_METRICS``. Cosines with a zero-norm vector are NaN. The vocabulary
    cosines are computed ``neuron_chunk`` neurons at a time (memory
    ``~ 6 * neuron_chunk * vocab * 8`` bytes).
    """
    w_in, b_in, w_out, w_u = _checked_weights(weights)
    n_layers, _, d_mlp = w_in.shape
    in_norm = np.linalg.norm(w_in, axis=1)  # [layers, d_mlp]
    out_norm = np.linalg.norm(w_out, axis=2)  # [layers, d_mlp]
    with np.errstate(divide="ignore", invalid="ignore"):
        in_out = np.einsum("ldn,lnd->ln", w_in, w_out) / (in_norm * out_norm)
        unembed_unit = torch.as_tensor(w_u / np.linalg.norm(w_u, axis=0))  # [d_model, vocab]
        out_unit = torch.as_tensor(w_out / out_norm[:, :, None])  # [layers, d_mlp, d_model]
    vocab = _vocab_moments(out_unit, unembed_unit, neuron_chunk)
    layer_ids, index_ids = np.meshgrid(np.arange(n_layers), np.arange(d_mlp), indexing="ij")
    columns = {
        "layer": layer_ids.ravel().astype(np.int64),
        "index": index_ids.ravel().astype(np.int64),
        "w_in_norm": in_norm.ravel(),
        "w_out_norm": out_norm.ravel(),
        "input_bias": b_in.ravel(),
        "in_out_sim": in_out.ravel(),
        "l2_penalty": (in_norm**2 + out_norm**2).ravel(),
    }
    columns.update({name: values.ravel() for name, values in vocab.items()})
    return pd.DataFrame(columns)


def activation_statistics(moments: pd.DataFrame, kind: str = "pre") -> pd.DataFrame:
    """``layer, index, mean, var, skew, kurt, sparsity`` from a collect-stage moments table.

    ``moments``: the contents of ``data/collect/seed{s}/moments.parquet`` (columns
    ``{kind}_mean, {kind}_var, ...``). The neuron table uses ``kind='pre'``.
    """
    wanted = ["layer", "index"] + [f"{kind}_{name}" for name in MOMENT_KINDS_COLUMNS]
    missing = [column for column in wanted if column not in moments.columns]
    if missing:
        raise UserError(f"moments table: missing columns {', '.join(missing)}")
    renamed = moments[wanted].rename(columns={f"{kind}_{n}": n for n in MOMENT_KINDS_COLUMNS})
    return renamed.astype({"layer": np.int64, "index": np.int64}).astype(
        {name: np.float64 for name in MOMENT_KINDS_COLUMNS}
    )


def _neuron_keys(frame: pd.DataFrame, name: str) -> pd.MultiIndex:
    for column in ("layer", "index"):
        if column not in frame.columns:
            raise UserError(f"{name}: missing column {column!r}")
    keys = pd.MultiIndex.from_frame(frame[["layer", "index"]].astype(np.int64))
    if keys.has_duplicates:
        raise UserError(f"{name}: a (layer, index) pair occurs more than once")
    return keys


def within_layer_percentiles(table: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """``{metric}_pct`` for each metric: ``100 * rank / n`` within the row's layer.

    Average ranks for ties; NaN values get NaN and do not count in ``n``.
    """
    grouped = table.groupby("layer", sort=False)
    return pd.DataFrame(
        {
            percentile_column(metric): grouped[metric].rank(method="average", pct=True) * 100.0
            for metric in metrics
        },
        index=table.index,
    )


def _check_same_neurons(
    universality: pd.DataFrame, weight_stats: pd.DataFrame, activation_stats: pd.DataFrame
) -> None:
    """Stop unless the three tables describe the same neurons (and universality has its columns)."""
    missing = [c for c in UNIVERSALITY_COLUMNS if c not in universality.columns]
    if missing:
        raise UserError(f"universality table: missing columns {', '.join(missing)}")
    reference = _neuron_keys(universality, "universality table")
    for name, frame in (("weight statistics", weight_stats), ("moments table", activation_stats)):
        keys = _neuron_keys(frame, name)
        if not keys.sort_values().equals(reference.sort_values()):
            raise UserError(
                f"{name}: its neurons ({len(keys)}) differ from the universality table's "
                f"({len(reference)}); were they computed for the same model?"
            )


def neuron_table(
    universality: pd.DataFrame,
    weight_stats: pd.DataFrame,
    activation_stats: pd.DataFrame,
    emergence: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """The neuron table of one model: one row per neuron, ordered by ``(layer, index)``.

    ``universality``: the universality stage's table; ``weight_stats``: from
    ``weight_statistics``; ``activation_stats``: from ``activation_statistics``. All
    three must describe the same neurons. ``emergence``: rows ``layer, index,
    first_universal_tokens`` of this model (``first_universal_tokens``), or None
    (the column is then NaN). Columns: ``table_columns()``.
    """
    _check_same_neurons(universality, weight_stats, activation_stats)
    table = (
        universality[list(UNIVERSALITY_COLUMNS)]
        .astype({"layer": np.int64, "index": np.int64})
        .merge(
            weight_stats[["layer", "index", *WEIGHT_METRICS, *VOCAB_METRICS]], on=["layer", "index"]
        )
        .merge(activation_stats[["layer", "index", *ACTIVATION_METRICS]], on=["layer", "index"])
        .sort_values(["layer", "index"], ignore_index=True)
    )
    if emergence is None:
        table[EMERGENCE_COLUMN] = np.nan
    else:
        table = table.merge(
            emergence[["layer", "index", EMERGENCE_COLUMN]], on=["layer", "index"], how="left"
        )
    table = table.astype(
        {
            **{c: np.int64 for c in INT_COLUMNS},
            **{c: bool for c in BOOL_COLUMNS},
            **{
                c: np.float64
                for c in table.columns
                if c not in INT_COLUMNS and c not in BOOL_COLUMNS
            },
        }
    )
    table = pd.concat([table, within_layer_percentiles(table, METRICS)], axis=1)
    return table[table_columns()]


def _number(value: float) -> float | None:
    """A JSON-safe float: None for NaN/inf."""
    value = float(value)
    return value if math.isfinite(value) else None


def compare_groups(universal: np.ndarray, other: np.ndarray) -> dict[str, Any]:
    """Medians, rank-biserial effect size and two-sided Mann-Whitney U p-value of two samples.

    NaN values are dropped first. Undefined entries (an empty group) are None.
    """
    universal = np.asarray(universal, dtype=np.float64)
    other = np.asarray(other, dtype=np.float64)
    universal, other = universal[~np.isnan(universal)], other[~np.isnan(other)]
    result: dict[str, Any] = {
        "median_universal": _number(np.median(universal)) if len(universal) else None,
        "median_other": _number(np.median(other)) if len(other) else None,
        "effect_size": None,
        "p_value": None,
        "n_universal": int(len(universal)),
        "n_other": int(len(other)),
    }
    if len(universal) and len(other):
        test = scipy_stats.mannwhitneyu(universal, other, alternative="two-sided")
        result["effect_size"] = _number(2.0 * test.statistic / (len(universal) * len(other)) - 1.0)
        result["p_value"] = _number(test.pvalue)
    return result


def compare_universal(
    table: pd.DataFrame, metrics: Sequence[str] = METRICS
) -> dict[str, dict[str, Any]]:
    """Per metric, universal vs other live neurons (dead neurons excluded): ``compare_groups``."""
    alive = table[~table["dead"].astype(bool)]
    universal = alive["is_universal"].astype(bool)
    return {
        metric: compare_groups(
            alive.loc[universal, metric].to_numpy(), alive.loc[~universal, metric].to_numpy()
        )
        for metric in metrics
    }


def per_layer_medians(table: pd.DataFrame, metrics: Sequence[str] = METRICS) -> pd.DataFrame:
    """Median of each metric per layer and group over the live neurons.

    Columns: ``layer, group`` (``universal`` / ``other``), ``n`` (live neurons of the
    group in the layer), then one column per metric. Groups without neurons are left out.
    """
    alive = table[~table["dead"].astype(bool)].copy()
    alive["group"] = np.where(alive["is_universal"].astype(bool), "universal", "other")
    grouped = alive.groupby(["layer", "group"], sort=True)
    medians = grouped[list(metrics)].median()
    medians.insert(0, "n", grouped.size())
    return medians.reset_index()


def pooled_universal(tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """The rows of the live universal neurons of every model's neuron table, together."""
    return pd.concat(
        [t[(~t["dead"].astype(bool)) & t["is_universal"].astype(bool)] for t in tables.values()]
    )


def universal_percentiles(
    tables: Mapping[str, pd.DataFrame], metrics: Sequence[str] = METRICS
) -> dict[str, np.ndarray]:
    """Per metric, the within-layer percentiles ``[universal neurons]`` of the live universal
    neurons of all models, pooled (NaN where a value is undefined)."""
    pooled = pooled_universal(tables)
    return {metric: pooled[percentile_column(metric)].to_numpy() for metric in metrics}


def universal_percentile_summary(
    tables: Mapping[str, pd.DataFrame], metrics: Sequence[str] = METRICS
) -> pd.DataFrame:
    """Within-layer percentiles of the live universal neurons of all models, pooled.

    One row per metric: ``metric, n_universal, median_percentile, q25_percentile,
    q75_percentile`` (NaN where there is no universal neuron). 50 is what a random
    set of neurons would give.
    """
    pooled = pooled_universal(tables)
    rows = []
    for metric in metrics:
        values = pooled[percentile_column(metric)].dropna().to_numpy(np.float64)
        quantiles = np.quantile(values, [0.5, 0.25, 0.75]) if len(values) else [np.nan] * 3
        rows.append(
            {
                "metric": metric,
                "n_universal": len(values),
                "median_percentile": quantiles[0],
                "q25_percentile": quantiles[1],
                "q75_percentile": quantiles[2],
            }
        )
    return pd.DataFrame(rows)


# The paper's findings (Gurnee et al. 2024, section 4.1): the metric that tests each one and
# the sign of the difference universal - other that the paper reports.
PAPER_FINDINGS = (
    ("larger weight norm", "l2_penalty", +1),
    ("more negative input bias", "input_bias", -1),
    ("higher skew", "skew", +1),
    ("higher kurtosis", "kurt", +1),
    ("lower activation frequency", "sparsity", -1),
)


def finding_outcome(entry: Mapping[str, Any], sign: int, alpha: float) -> str:
    """``holds``, ``not significant``, ``opposite`` or ``undefined`` for one model's comparison.

    ``holds``: the effect size has the paper's sign and ``p < alpha``; ``opposite``: the
    other sign and ``p < alpha``; ``not significant``: ``p >= alpha`` or no difference.
    """
    effect, p_value = entry.get("effect_size"), entry.get("p_value")
    if effect is None or p_value is None:
        return "undefined"
    if p_value >= alpha or effect == 0:
        return "not significant"
    return "holds" if effect * sign > 0 else "opposite"


def findings_holding(stats: Mapping[str, Any], alpha: float) -> dict[str, int]:
    """``metrics/findings.json``: for each of the paper's findings (keyed by the metric that
    tests it), the number of models of ``results/stats.json`` in which it holds."""
    models = stats.get("models") or {}
    return {
        metric: sum(
            finding_outcome(comparison[metric], sign, alpha) == "holds"
            for comparison in models.values()
        )
        for _, metric, sign in PAPER_FINDINGS
    }


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def _holds_summary(outcomes: list[str]) -> str:
    """``holds in all models`` / ``does not hold in any model`` / ``holds in k of n models``,
    followed by the counts of the other outcomes."""
    holds = outcomes.count("holds")
    if holds == len(outcomes):
        summary = "holds in all models"
    elif holds == 0:
        summary = "does not hold in any model"
    else:
        summary = f"holds in {holds} of {len(outcomes)} models"
    others = {o: outcomes.count(o) for o in ("opposite", "not significant", "undefined")}
    extra = ", ".join(f"{k}: {v}" for k, v in others.items() if v)
    return summary + (f" ({extra})" if extra else "")


def _model_entries(models: Mapping[str, Any], metric: str) -> dict[str, Mapping[str, Any]]:
    """``{model: its comparison entry of metric}``; a model without it is a user error."""
    entries = {}
    for model, comparison in models.items():
        entry = comparison.get(metric)
        if entry is None:
            raise UserError(f"stats: model {model} has no metric {metric!r}")
        entries[model] = entry
    return entries


def _finding_line(
    finding: str, metric: str, sign: int, models: Mapping[str, Any], alpha: float
) -> str:
    """One finding: its summary over the models, then each model's medians, r and p."""
    entries = _model_entries(models, metric)
    outcomes = [finding_outcome(entry, sign, alpha) for entry in entries.values()]
    details = [
        f"{model}: median {_fmt(entry['median_universal'])} vs "
        f"{_fmt(entry['median_other'])}, r = {_fmt(entry['effect_size'])}, "
        f"p = {_fmt(entry['p_value'])}"
        for model, entry in entries.items()
    ]
    return f"- {finding} ({metric}): {_holds_summary(outcomes)}; " + "; ".join(details) + "."


def _models(stats: Mapping[str, Any]) -> Mapping[str, Any]:
    """The per-model comparisons of ``metrics/stats.json``; none is a user error."""
    models = stats.get("models") or {}
    if not models:
        raise UserError("stats: no models in the metrics (expected {'models': {...}})")
    return models


def findings_verdict(stats: Mapping[str, Any], alpha: float = 0.05) -> str:
    """README sentences: which of the paper's findings hold for the models of ``results/stats.json``.

    One line per finding: in how many models it holds (same sign, Mann-Whitney
    ``p < alpha``), then per model the medians, the rank-biserial ``r`` and ``p``.
    """
    models = _models(stats)
    lines = [
        f"Universal vs other live neurons, {len(models)} models; a finding holds in a model "
        f"when the rank-biserial effect r has the paper's sign and the Mann-Whitney p < {alpha}:"
    ]
    lines += [_finding_line(*finding, models, alpha) for finding in PAPER_FINDINGS]
    return "\n".join(lines)


OUTCOME_CELLS = {
    "holds": "holds",
    "not significant": "n.s.",
    "opposite": "opposite",
    "undefined": "n/a",
}
"""Short cell text of each outcome in the findings table."""


def findings_cell(entry: Mapping[str, Any], sign: int, alpha: float) -> str:
    """One model's cell: the outcome and the effect size, e.g. ``holds r=+0.55``, ``n/a``."""
    outcome = finding_outcome(entry, sign, alpha)
    if outcome == "undefined":
        return OUTCOME_CELLS[outcome]
    return f"{OUTCOME_CELLS[outcome]} r={entry['effect_size']:+.2f}"


def _short_summary(outcomes: list[str]) -> str:
    """The verdict column: ``holds in all 5``, ``holds in none``, ``holds in 2 of 5``."""
    holds, total = outcomes.count("holds"), len(outcomes)
    if holds == total:
        return f"holds in all {total}"
    return "holds in none" if holds == 0 else f"holds in {holds} of {total}"


def findings_rows(stats: Mapping[str, Any], alpha: float = 0.05) -> list[list[str]]:
    """The findings x models table as strings: a header row ``finding, <models...>, verdict``
    and one row per paper finding (``findings_cell`` per model; verdict ``holds in k of n``)."""
    models = _models(stats)
    rows = [["finding", *models, "verdict"]]
    for finding, metric, sign in PAPER_FINDINGS:
        entries = _model_entries(models, metric).values()
        outcomes = [finding_outcome(entry, sign, alpha) for entry in entries]
        cells = [findings_cell(entry, sign, alpha) for entry in entries]
        rows.append([f"{finding} ({metric})", *cells, _short_summary(outcomes)])
    return rows
