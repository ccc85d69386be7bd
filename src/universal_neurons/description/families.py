"""Neuron families: the rules that turn feature variance reductions into a family, and the
family table and counts of the classify stage.

Family rules (thresholds in ``params.families``): each group's score is its best
eligible binary feature's VR (position: eta^2 over positions; see ``variance``); a group
passes when its score exceeds its threshold, ``previous_token`` must also beat the
current-token score (the best of the ``unigram`` and ``byte`` groups); the neuron gets the passing group with the highest score, else
``unexplained``. The ``byte`` group (the UTF-8 class of a token's bytes: ``features``,
``token_bytes``) has no parameter of its own: a byte class is a class of tokens, held to the
bar of the other token-level features, ``families.unigram_vr`` (``GroupThresholds.byte``).
Vocabulary composition (from the output weights, ``vocab_*`` of the
stats table) is a separate axis: prediction / suppression / partition / none.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from universal_neurons.config import AnalysisConfig, FamiliesConfig
from universal_neurons.description.features import GROUPS, FeatureSet, Variable
from universal_neurons.description.variance import (
    SUMS_BYTES,
    FeatureSums,
    TopActivations,
    collect_feature_sums,
    neuron_chunks,
)
from universal_neurons.errors import UserError

UNEXPLAINED = "unexplained"
VOCAB_FAMILIES = ("prediction", "suppression", "partition")
FAMILIES = (*GROUPS, UNEXPLAINED)
CURRENT_TOKEN_GROUPS = ("unigram", "byte")  # what previous_token must beat
STORED_TOP_CONTEXTS = 10
"""Top activations the classify stage keeps per neuron (``with_top_contexts``), so that the
``neuron`` command shows them without a pass over the token set (it asks for 8 by default)."""
TOP_COLUMNS = ("top_activations", "top_sequences", "top_positions")


class FamiliesError(UserError):
    """Inputs of the family classification that cannot be used."""


def parse_neurons(
    spec: str | Sequence[str], n_layers: int, d_mlp: int, universal: np.ndarray | None = None
) -> list[tuple[int, int]]:
    """Neurons to classify: ``"all"``, ``"universal"`` (needs the ``[layers, d_mlp]`` mask), or ``"layer.index"`` strings."""
    if spec == "all":
        return [(layer, i) for layer in range(n_layers) for i in range(d_mlp)]
    if spec == "universal":
        if universal is None:
            raise FamiliesError("families.neurons=universal needs the is_universal column")
        return [(int(layer), int(i)) for layer, i in np.argwhere(universal)]
    neurons = []
    for item in spec:
        layer, index = parse_neuron(item)
        if not (0 <= layer < n_layers and 0 <= index < d_mlp):
            raise FamiliesError(
                f"families.neurons: {item!r} is outside the model ({n_layers} layers x {d_mlp} neurons)"
            )
        neurons.append((layer, index))
    return neurons


def parse_neuron(text: str) -> tuple[int, int]:
    """``"1.17"`` -> ``(1, 17)``; a clear error otherwise."""
    parts = str(text).split(".")
    if len(parts) != 2 or not all(p.isascii() and p.isdigit() for p in parts):  # not "²"
        raise FamiliesError(f"neuron: expected LAYER.INDEX like '0.17', got {text!r}")
    return int(parts[0]), int(parts[1])


def universal_mask(stats: pd.DataFrame, n_layers: int, d_mlp: int) -> np.ndarray:
    """bool ``[layers, d_mlp]`` from a stats table's ``is_universal`` column."""
    mask = np.zeros((n_layers, d_mlp), bool)
    rows = stats[stats["is_universal"].astype(bool)]
    if len(rows) and (rows["layer"].max() >= n_layers or rows["index"].max() >= d_mlp):
        raise FamiliesError(f"stats table: neurons beyond the model ({n_layers} x {d_mlp})")
    mask[rows["layer"].to_numpy(), rows["index"].to_numpy()] = True
    return mask


@dataclass(frozen=True)
class GroupThresholds:
    """The score a group's best feature must exceed to make it a neuron's family."""

    unigram: float
    byte: float
    alphabet: float
    previous_token: float
    position: float
    syntax: float
    semantic: float

    @classmethod
    def from_config(cls, config: FamiliesConfig) -> GroupThresholds:
        """The thresholds of ``params.families`` (``byte``: ``unigram_vr``, the token-level bar)."""
        return cls(
            unigram=config.unigram_vr,
            byte=config.unigram_vr,
            alphabet=config.alphabet_vr,
            previous_token=config.previous_token_vr,
            position=config.position_eta2,
            syntax=config.syntax_vr,
            semantic=config.semantic_vr,
        )


def assign_family(scores: dict[str, float], thresholds: GroupThresholds) -> str:
    """The family of one neuron from its group scores (missing or NaN scores never pass)."""
    passing = {
        group: score
        for group, score in scores.items()
        if group in GROUPS and np.isfinite(score) and score > getattr(thresholds, group)
    }
    current = max(np.nan_to_num(scores.get(g, np.nan), nan=-np.inf) for g in CURRENT_TOKEN_GROUPS)
    if "previous_token" in passing and not passing["previous_token"] > current:
        del passing["previous_token"]
    if not passing:
        return UNEXPLAINED
    return max(GROUPS, key=lambda g: passing.get(g, -np.inf))


def vocab_family(kurt: float, skew: float, var: float, config: FamiliesConfig) -> str:
    """Vocabulary-composition family of a neuron's output weights, or ``none``."""
    if np.isfinite(kurt) and kurt > config.prediction_kurt and np.isfinite(skew) and skew != 0:
        return "prediction" if skew > 0 else "suppression"
    if np.isfinite(var) and var > config.partition_var:
        return "partition"
    return "none"


FIRST_COLUMNS = [
    "layer",
    "index",
    "family",
    "best_feature",
    "best_group",
    "best_vr",
    "runner_up_feature",
    "runner_up_group",
    "runner_up_vr",
]
"""The leading columns of the family table."""


@dataclass(frozen=True)
class Candidates:
    """One variable's best binary features for every neuron, best first: ``vr [neurons, k]``
    (-inf where there is none) and their names ``names [neurons, k]``."""

    vr: np.ndarray
    names: np.ndarray


@dataclass(frozen=True)
class Choice:
    """A group's best feature for one neuron (empty strings and NaN when it has none)."""

    feature: str
    group: str
    vr: float


@dataclass(frozen=True)
class Classification:
    """One neuron's family, its strongest group's best feature and the runner-up (the best
    feature of the second strongest group)."""

    family: str
    best: Choice
    runner_up: Choice


def _finite(x: np.ndarray) -> np.ndarray:
    return np.where(np.isfinite(x), x, np.nan)


def _candidates(
    sums: FeatureSums, var: Variable, eta2: np.ndarray, k: int, min_count: int
) -> Candidates:
    """The ``k`` best eligible binary features of ``var`` per neuron (position: its eta^2)."""
    n = len(eta2)
    if var.name == "position":
        return Candidates(
            np.nan_to_num(eta2, nan=-np.inf)[:, None], np.full((n, 1), "position", dtype=object)
        )
    vr = sums.variance_reduction(var.name)  # [K, N]
    vr = np.where(sums.eligible(var.name, min_count)[:, None], vr, -np.inf)
    vr = np.nan_to_num(vr, nan=-np.inf).T  # [N, K]
    order = np.argsort(-vr, axis=1, kind="stable")[:, : min(k, vr.shape[1])]
    names = np.vectorize(var.feature_name, otypes=[object])(order)
    return Candidates(np.take_along_axis(vr, order, axis=1), names)


def _group_best(
    candidates: list[tuple[Variable, Candidates]], n: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per group: the best VR of its variables' features ``[neurons]`` (-inf if none) and
    that feature's name."""
    best = {g: (np.full(n, -np.inf), np.full(n, "", dtype=object)) for g in GROUPS}
    for var, cand in candidates:
        best_vr, best_name = best[var.group]
        better = cand.vr[:, 0] > best_vr
        best_vr[better] = cand.vr[better, 0]
        best_name[better] = cand.names[better, 0]
    return best


def _choice(group_best: dict, scores: np.ndarray, row: int, j: int) -> Choice:
    """Group ``GROUPS[j]``'s best feature for neuron ``row``."""
    if not np.isfinite(scores[row, j]):
        return Choice("", "", np.nan)
    group = GROUPS[j]
    return Choice(group_best[group][1][row], group, float(scores[row, j]))


def _classify(group_best: dict, config: FamiliesConfig) -> list[Classification]:
    """Every neuron's family (``assign_family``), best feature and runner-up."""
    scores = np.stack([group_best[g][0] for g in GROUPS], axis=1)  # [N, groups]
    ranked = np.argsort(-scores, axis=1, kind="stable")
    thresholds = GroupThresholds.from_config(config)
    out = []
    for row in range(len(scores)):
        row_scores = {g: float(_finite(scores[row, j])) for j, g in enumerate(GROUPS)}
        best, runner_up = (_choice(group_best, scores, row, j) for j in ranked[row, :2])
        out.append(Classification(assign_family(row_scores, thresholds), best, runner_up))
    return out


def _classification_columns(rows: list[Classification]) -> dict[str, object]:
    """``family``, ``best_*`` and ``runner_up_*`` columns."""
    return {
        "family": [r.family for r in rows],
        "best_feature": [r.best.feature for r in rows],
        "best_group": [r.best.group for r in rows],
        "best_vr": np.array([r.best.vr for r in rows], np.float64),
        "runner_up_feature": [r.runner_up.feature for r in rows],
        "runner_up_group": [r.runner_up.group for r in rows],
        "runner_up_vr": np.array([r.runner_up.vr for r in rows], np.float64),
    }


def _top_feature_columns(candidates: list[Candidates], k: int) -> dict[str, list]:
    """``top_features`` / ``top_vrs``: the ``k`` best features over every variable, best first
    (only those with a finite VR)."""
    all_vr = np.concatenate([c.vr for c in candidates], axis=1)
    all_name = np.concatenate([c.names for c in candidates], axis=1)
    order = np.argsort(-all_vr, axis=1, kind="stable")[:, :k]
    top_vr = np.take_along_axis(all_vr, order, axis=1)
    top_name = np.take_along_axis(all_name, order, axis=1)
    return {
        "top_features": [
            [str(x) for x, v in zip(names, vals, strict=True) if np.isfinite(v)]
            for names, vals in zip(top_name, top_vr, strict=True)
        ],
        "top_vrs": [[float(v) for v in vals if np.isfinite(v)] for vals in top_vr],
    }


def classify_neurons(
    sums: FeatureSums,
    features: FeatureSet,
    neurons: Sequence[tuple[int, int]],
    config: FamiliesConfig,
) -> pd.DataFrame:
    """The family table of the neurons in ``sums`` (one row per neuron, in ``neurons`` order).

    Columns: ``FIRST_COLUMNS`` (runner-up: the best feature of another group), then
    ``eta2_{variable}`` for every variable, ``{group}_feature, {group}_vr`` for every group,
    ``top_features`` / ``top_vrs`` (lists, best first), ``variance``.
    """
    n = len(neurons)
    table: dict[str, object] = {
        "layer": np.array([layer for layer, _ in neurons], np.int64),
        "index": np.array([i for _, i in neurons], np.int64),
    }
    candidates = []
    for var in features.variables:
        eta2 = sums.eta_squared(var.name)
        table[f"eta2_{var.name}"] = eta2
        candidates.append(
            (var, _candidates(sums, var, eta2, config.top_features, config.min_count))
        )
    group_best = _group_best(candidates, n)
    for g in GROUPS:
        table[f"{g}_feature"] = group_best[g][1]
        table[f"{g}_vr"] = _finite(group_best[g][0])
    table.update(_classification_columns(_classify(group_best, config)))
    table.update(_top_feature_columns([c for _, c in candidates], config.top_features))
    table["variance"] = sums.moments.var if sums.moments.count else np.full(n, np.nan)
    frame = pd.DataFrame(table)
    return frame[FIRST_COLUMNS + [c for c in frame.columns if c not in FIRST_COLUMNS]]


def classify_model(
    model,
    tokens: np.ndarray,
    features: FeatureSet,
    neurons: Sequence[tuple[int, int]],
    excluded_ids: np.ndarray,
    analysis: AnalysisConfig,
    config: FamiliesConfig,
    stats: pd.DataFrame | None,
    desc: str = "families",
    top_k: int = 0,
    sums_bytes: int = SUMS_BYTES,
) -> tuple[pd.DataFrame, TopActivations | None]:
    """The family table of ``neurons`` of ``model`` over the analysis token set ``tokens``
    (``variance.collect_feature_sums``: one pass per chunk of neurons whose sums fit
    ``sums_bytes``), with the vocabulary families of the ``stats`` table when there is one;
    and the neurons' ``top_k`` activations."""
    tables, tops = [], []
    chunks = neuron_chunks(neurons, features, sums_bytes)
    for number, chunk in enumerate(chunks):
        part = f"{desc} ({number + 1}/{len(chunks)})" if len(chunks) > 1 else desc
        sums, top = collect_feature_sums(
            model,
            tokens,
            features,
            chunk,
            excluded_ids,
            analysis.batch_size,
            analysis.device,
            top_k=top_k,
            desc=part,
        )
        tables.append(classify_neurons(sums, features, chunk, config))
        tops.append(top)
    table = tables[0] if len(tables) == 1 else pd.concat(tables, ignore_index=True)
    if stats is not None:
        table = add_vocab_families(table, stats, config)
    top = tops[0] if len(tops) == 1 or tops[0] is None else TopActivations.stacked(tops)
    return table, top


def select_universal(
    table: pd.DataFrame, stats: pd.DataFrame, config: FamiliesConfig
) -> pd.DataFrame:
    """The family table of one model from its candidates' (``classify_candidates``):
    ``is_universal`` and the vocabulary columns (``add_vocab_families``) from its neuron table
    ``stats``, the one the stats stage wrote, in the columns' order; with
    ``config.neurons`` ``universal``, only the universal neurons' rows. Raises
    FamiliesError naming the first universal neuron that was not classified."""
    flags = stats.set_index(["layer", "index"])["is_universal"].astype(bool)
    joined = ["is_universal", "vocab_var", "vocab_skew", "vocab_kurt", "vocab_family"]
    table = add_vocab_families(table.drop(columns=joined), stats, config)[list(table.columns)]
    table["is_universal"] = table["is_universal"].fillna(False).astype(bool)
    if config.neurons != "universal":
        return table
    classified = set(zip(table["layer"].astype(int), table["index"].astype(int), strict=True))
    missing = [key for key in flags[flags].index if (int(key[0]), int(key[1])) not in classified]
    if missing:
        layer, index = missing[0]
        raise FamiliesError(
            f"neuron {layer}.{index} is universal but was not classified as a candidate "
            f"({len(missing)} such): the classify_candidates outputs were made with a "
            "universality.candidate_threshold above universality.threshold; run "
            "classify_candidates again (dvc repro classify_candidates)"
        )
    return table[table["is_universal"]].reset_index(drop=True)


def with_top_contexts(table: pd.DataFrame, top: TopActivations) -> pd.DataFrame:
    """``table`` (one row per neuron of ``top``, same order) with ``TOP_COLUMNS``: each neuron's
    top activations (float, descending; -inf past the last kept position) and where they are
    (sequence of the analysis token set, position; -1 past the last)."""
    if len(table) != top.values.shape[0]:
        raise FamiliesError(f"top activations of {top.values.shape[0]} neurons, {len(table)} rows")
    return table.assign(
        top_activations=[row.tolist() for row in top.values.numpy()],
        top_sequences=[row.tolist() for row in top.sequence.numpy()],
        top_positions=[row.tolist() for row in top.position.numpy()],
    )


def _vocab_families(frame: pd.DataFrame, config: FamiliesConfig) -> list[str]:
    """``vocab_family`` of every row of a table with ``vocab_kurt, vocab_skew, vocab_var``."""
    return [
        vocab_family(k, s, v, config)
        for k, s, v in zip(
            frame["vocab_kurt"], frame["vocab_skew"], frame["vocab_var"], strict=True
        )
    ]


def add_vocab_families(
    table: pd.DataFrame, stats: pd.DataFrame, config: FamiliesConfig
) -> pd.DataFrame:
    """Join ``is_universal`` and ``vocab_var/skew/kurt`` of the stats table and add ``vocab_family``."""
    needed = ["layer", "index", "is_universal", "vocab_var", "vocab_skew", "vocab_kurt"]
    missing = [c for c in needed if c not in stats.columns]
    if missing:
        raise FamiliesError(f"stats table: missing columns {missing}")
    merged = table.merge(stats[needed], on=["layer", "index"], how="left", validate="one_to_one")
    merged["vocab_family"] = _vocab_families(merged, config)
    return merged


def _family_counts(
    labels: dict[str, pd.Series], layers: np.ndarray, n_layers: int
) -> tuple[dict[str, int], dict[str, list[int]]]:
    """``(counts, counts_per_layer)`` of every family: ``labels[family]`` is the series of
    labels (activation or vocabulary families) in which the family is counted."""
    counts: dict[str, int] = {}
    per_layer: dict[str, list[int]] = {}
    for name, series in labels.items():
        hit = (series == name).to_numpy()
        counts[name] = int(hit.sum())
        per_layer[name] = [int((hit & (layers == layer)).sum()) for layer in range(n_layers)]
    return counts, per_layer


def _percent(part: int, whole: int) -> float:
    return float(100.0 * part / whole) if whole else 0.0


def family_metrics(
    table: pd.DataFrame, stats: pd.DataFrame, n_layers: int, config: FamiliesConfig
) -> dict:
    """Counts over the universal neurons of one model (see docs/families.md).

    ``counts`` holds the activation families (including ``unexplained``) and the
    vocabulary families; a neuron may be in one of each. ``n_explained``: universal
    neurons with an activation family or a vocabulary family;
    ``n_explained_by_activation``: those with an activation family (what they respond to).
    """
    universal = stats.loc[
        stats["is_universal"].astype(bool),
        ["layer", "index", "vocab_kurt", "vocab_skew", "vocab_var"],
    ]
    rows = universal.merge(table[["layer", "index", "family"]], on=["layer", "index"], how="left")
    fam = rows["family"].fillna(UNEXPLAINED)
    vocab = pd.Series(_vocab_families(rows, config), index=rows.index, dtype=object)
    labels = {f: fam for f in FAMILIES} | {v: vocab for v in VOCAB_FAMILIES}
    counts, per_layer = _family_counts(labels, rows["layer"].to_numpy(), n_layers)
    by_activation = int((fam != UNEXPLAINED).sum())
    explained = int(((fam != UNEXPLAINED) | (vocab != "none")).sum())
    n_universal = int(len(rows))
    return {
        "n_universal": n_universal,
        "n_explained": explained,
        "percent_explained": _percent(explained, n_universal),
        "n_explained_by_activation": by_activation,
        "percent_explained_by_activation": _percent(by_activation, n_universal),
        "counts": counts,
        "counts_per_layer": per_layer,
    }


def headline_counts(metrics: dict) -> dict[str, int]:
    """``metrics/families.json``: universal neurons of every model together in each activation
    family (the paper's six and ``unexplained``). The whole document (vocabulary families,
    per model, per layer) is ``results/families.json``."""
    return {
        family: int(sum(entry["counts"][family] for entry in metrics["models"].values()))
        for family in FAMILIES
    }


def per_layer_rows(metrics: dict) -> pd.DataFrame:
    """One row per (family, layer): ``label`` ("L0 unigram"), ``family``, ``layer``,
    ``count`` (universal neurons, all models together) and one count column per model."""
    models = list(metrics["models"])
    rows = []
    for name in (*FAMILIES, *VOCAB_FAMILIES):
        per_model = [metrics["models"][m]["counts_per_layer"].get(name, []) for m in models]
        n_layers = max((len(c) for c in per_model), default=0)
        for layer in range(n_layers):
            counts = {m: int(c[layer]) for m, c in zip(models, per_model, strict=True)}
            rows.append(
                {"label": f"L{layer} {name}", "family": name, "layer": layer}
                | {"count": sum(counts.values())}
                | counts
            )
    return pd.DataFrame(rows, columns=["label", "family", "layer", "count", *models])
