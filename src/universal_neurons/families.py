"""Neuron families: how much of a neuron's activation variance each feature explains.

Variance reduction of a binary feature F (a category c of a variable against the rest)
over the kept positions, with activation a:

    VR(F) = (Var(a) - [p Var(a | F) + (1 - p) Var(a | not F)]) / Var(a)
          = n_c n_rest / n * (mean_c - mean_rest)^2 / SS        (law of total variance)

and for a whole categorical variable the correlation ratio
eta^2 = sum_c n_c (mean_c - mean)^2 / SS, where SS = sum (a - mean)^2. Both need only
per-category counts and sums plus the total sum of squares, accumulated in one pass
over the batches in float64 (``FeatureSums``); no activation is stored.

Family rules (thresholds in ``params.families``): each group's score is its best
eligible binary feature's VR (position: eta^2 over positions); a group passes when
its score exceeds its threshold, ``previous_token`` must also beat the ``unigram``
group's score; the neuron gets the passing group with the highest score, else
``unexplained``. Vocabulary composition (from the output weights, ``vocab_*`` of the
stats table) is a separate axis: prediction / suppression / partition / none.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from universal_neurons.activations import iter_batches, kept_mask
from universal_neurons.config import FamiliesConfig
from universal_neurons.features import GROUPS, FeatureSet, Variable
from universal_neurons.moments import StreamingMoments

UNEXPLAINED = "unexplained"
VOCAB_FAMILIES = ("prediction", "suppression", "partition")
FAMILIES = (*GROUPS, UNEXPLAINED)


class FamiliesError(ValueError):
    """Inputs of the family classification that cannot be used."""


class FeatureSums:
    """Per-category sufficient statistics of ``n_neurons`` activations, for every variable.

    ``count[name]``: float64 ``[K]`` positions per category; ``total[name]``: float64
    ``[K, n_neurons]`` sums of (a - shift) per category; ``moments``: exact streaming
    moments of a over all positions (its ``m2`` is SS). ``shift`` (the first batch's
    mean) keeps the sums well conditioned.
    """

    def __init__(self, variables: Sequence[Variable], n_neurons: int):
        self.variables = list(variables)
        self.n_neurons = n_neurons
        self.count = {v.name: torch.zeros(v.size, dtype=torch.float64) for v in self.variables}
        self.total = {
            v.name: torch.zeros(v.size, n_neurons, dtype=torch.float64) for v in self.variables
        }
        self.moments = StreamingMoments.empty(n_neurons)
        self.shift: torch.Tensor | None = None

    def update(self, activations: torch.Tensor, codes: dict[str, torch.Tensor]) -> None:
        """Add a batch: ``activations`` ``[positions, n_neurons]``, ``codes[name]`` int ``[positions]``."""
        acts = torch.as_tensor(activations).to(torch.float64).cpu()
        if acts.ndim != 2 or acts.shape[1] != self.n_neurons:
            raise FamiliesError(
                f"activations: expected [positions, {self.n_neurons}], got {tuple(acts.shape)}"
            )
        if acts.shape[0] == 0:
            return
        if self.shift is None:
            self.shift = acts.mean(dim=0)
        self.moments = self.moments.update(acts)
        shifted = acts - self.shift
        for var in self.variables:
            c = torch.as_tensor(codes[var.name], dtype=torch.int64).cpu()
            if c.shape != (acts.shape[0],):
                raise FamiliesError(
                    f"codes[{var.name!r}]: expected shape ({acts.shape[0]},), got {tuple(c.shape)}"
                )
            self.count[var.name] += torch.bincount(c, minlength=var.size).to(torch.float64)
            self.total[var.name].index_add_(0, c, shifted)

    @property
    def ss(self) -> np.ndarray:
        """Total sum of squares about the mean, ``[n_neurons]``."""
        return self.moments.m2

    def variance_reduction(self, name: str) -> np.ndarray:
        """VR of every binary feature ``name == c``: float64 ``[K, n_neurons]`` (NaN where SS = 0)."""
        n_c = self.count[name].numpy()[:, None]
        s_c = self.total[name].numpy()
        n = float(self.moments.count)
        s = s_c.sum(axis=0, keepdims=True)
        n_r = n - n_c
        with np.errstate(divide="ignore", invalid="ignore"):
            diff = np.where(n_c > 0, s_c / n_c, 0.0) - np.where(n_r > 0, (s - s_c) / n_r, 0.0)
            between = np.where((n_c > 0) & (n_r > 0), n_c * n_r / n * diff * diff, 0.0)
            return np.where(self.ss > 0, between / self.ss, np.nan)

    def eta_squared(self, name: str) -> np.ndarray:
        """Correlation ratio of the whole variable: float64 ``[n_neurons]`` (NaN where SS = 0)."""
        n_c = self.count[name].numpy()[:, None]
        s_c = self.total[name].numpy()
        n = float(self.moments.count)
        mean = s_c.sum(axis=0, keepdims=True) / n
        with np.errstate(divide="ignore", invalid="ignore"):
            dev = np.where(n_c > 0, s_c / n_c - mean, 0.0)
            between = (n_c * dev * dev).sum(axis=0)
            return np.where(self.ss > 0, between / self.ss, np.nan)

    def eligible(self, name: str, min_count: int) -> np.ndarray:
        """bool ``[K]``: categories usable as binary features: not a placeholder, with
        >= ``min_count`` positions inside and outside."""
        n_c = self.count[name].numpy()
        ok = (n_c >= min_count) & (self.moments.count - n_c >= min_count)
        variable = next(v for v in self.variables if v.name == name)
        ok[list(variable.placeholders)] = False
        return ok


@dataclass
class TopActivations:
    """The ``k`` highest activations per neuron and where they are: ``[n_neurons, k]`` each."""

    values: torch.Tensor
    sequence: torch.Tensor
    position: torch.Tensor

    @classmethod
    def empty(cls, n_neurons: int, k: int) -> TopActivations:
        return cls(
            torch.full((n_neurons, k), -torch.inf, dtype=torch.float64),
            torch.full((n_neurons, k), -1, dtype=torch.int64),
            torch.full((n_neurons, k), -1, dtype=torch.int64),
        )

    def update(self, acts: torch.Tensor, kept: torch.Tensor, first_sequence: int) -> None:
        """``acts``: ``[batch, pos, n_neurons]``; ``kept``: bool ``[batch, pos]``."""
        batch, pos, n = acts.shape
        k = self.values.shape[1]
        flat = acts.to(torch.float64).masked_fill(~kept[..., None], -torch.inf).reshape(-1, n).T
        vals, where = flat.topk(min(k, flat.shape[1]), dim=1)
        values = torch.cat([self.values, vals], dim=1)
        seqs = torch.cat([self.sequence, where // pos + first_sequence], dim=1)
        poss = torch.cat([self.position, where % pos], dim=1)
        order = values.topk(k, dim=1).indices
        self.values = values.gather(1, order)
        self.sequence = seqs.gather(1, order)
        self.position = poss.gather(1, order)


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
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise FamiliesError(f"neuron: expected LAYER.INDEX like '0.17', got {text!r}")
    return int(parts[0]), int(parts[1])


@torch.no_grad()
def collect_feature_sums(
    model,
    tokens: np.ndarray,
    features: FeatureSet,
    neurons: Sequence[tuple[int, int]],
    excluded_ids: np.ndarray,
    batch_size: int,
    device: str = "cpu",
    top_k: int = 0,
    desc: str = "families",
) -> tuple[FeatureSums, TopActivations | None]:
    """One streaming pass of the token set through ``model``: per-category sums of the
    chosen neurons' MLP post activations at kept positions (and their top-k activations).

    ``tokens``: ``[sequences, context]``; ``neurons``: ``(layer, index)`` pairs.
    """
    from universal_neurons.models import capture_mlp

    sums = FeatureSums(features.variables, len(neurons))
    top = TopActivations.empty(len(neurons), top_k) if top_k else None
    if not neurons:
        return sums, top
    layers = torch.tensor([n[0] for n in neurons])
    index = torch.tensor([n[1] for n in neurons])
    n_batches = -(-len(tokens) // batch_size)
    for number, batch in tqdm(iter_batches(tokens, batch_size), total=n_batches, desc=desc):
        start = number * batch_size
        kept = kept_mask(batch, excluded_ids)
        post = capture_mlp(model, batch.to(device), ("post",))["post"]  # [L, b, p, D]
        acts = post[layers.to(post.device), :, :, index.to(post.device)]  # [N, b, p]
        acts = acts.permute(1, 2, 0).to(torch.float64).cpu()  # [b, p, N]
        finite = torch.isfinite(acts).flatten(0, 1).all(0)  # [N]
        if not bool(finite.all()):
            layer, neuron = neurons[int(torch.nonzero(~finite)[0])]
            raise RuntimeError(
                f"{desc}: non-finite activations in layer {layer} (neuron {layer}.{neuron}) at "
                f"analysis batch {number}; the model or its weights are broken"
            )
        sums.update(acts[kept], features.batch_codes(start, start + len(batch), kept))
        if top is not None:
            top.update(acts, kept, start)
    return sums, top


@dataclass(frozen=True)
class GroupThresholds:
    unigram: float
    alphabet: float
    previous_token: float
    position: float
    syntax: float
    semantic: float

    @classmethod
    def from_config(cls, config: FamiliesConfig) -> GroupThresholds:
        return cls(
            unigram=config.unigram_vr,
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
    if "previous_token" in passing and not passing["previous_token"] > np.nan_to_num(
        scores.get("unigram", np.nan), nan=-np.inf
    ):
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


def classify_neurons(
    sums: FeatureSums,
    features: FeatureSet,
    neurons: Sequence[tuple[int, int]],
    config: FamiliesConfig,
) -> pd.DataFrame:
    """The family table of the neurons in ``sums`` (one row per neuron, in ``neurons`` order).

    Columns: ``layer, index, family, best_feature, best_group, best_vr,
    runner_up_feature, runner_up_group, runner_up_vr`` (runner-up: the best feature of
    another group), ``{group}_feature, {group}_vr`` for every group, ``eta2_{variable}``
    for every variable, ``top_features`` / ``top_vrs`` (lists, best first), ``variance``.
    """
    n = len(neurons)
    k = config.top_features
    group_best = {g: (np.full(n, -np.inf), np.full(n, "", dtype=object)) for g in GROUPS}
    candidates_vr, candidates_name = [], []
    table: dict[str, object] = {
        "layer": np.array([layer for layer, _ in neurons], np.int64),
        "index": np.array([i for _, i in neurons], np.int64),
    }
    for var in features.variables:
        eta2 = sums.eta_squared(var.name)
        table[f"eta2_{var.name}"] = eta2
        if var.name == "position":
            vr_top = np.nan_to_num(eta2, nan=-np.inf)[:, None]
            names_top = np.full((n, 1), "position", dtype=object)
        else:
            vr = sums.variance_reduction(var.name)  # [K, N]
            vr = np.where(sums.eligible(var.name, config.min_count)[:, None], vr, -np.inf)
            vr = np.nan_to_num(vr, nan=-np.inf).T  # [N, K]
            take = min(k, vr.shape[1])
            order = np.argsort(-vr, axis=1, kind="stable")[:, :take]
            vr_top = np.take_along_axis(vr, order, axis=1)
            names_top = np.vectorize(var.feature_name, otypes=[object])(order)
        candidates_vr.append(vr_top)
        candidates_name.append(names_top)
        best_vr, best_name = group_best[var.group]
        better = vr_top[:, 0] > best_vr
        best_vr[better] = vr_top[better, 0]
        best_name[better] = names_top[better, 0]
    all_vr = np.concatenate(candidates_vr, axis=1)
    all_name = np.concatenate(candidates_name, axis=1)
    order = np.argsort(-all_vr, axis=1, kind="stable")[:, :k]
    top_vr = np.take_along_axis(all_vr, order, axis=1)
    top_name = np.take_along_axis(all_name, order, axis=1)

    def finite(x: np.ndarray) -> np.ndarray:
        return np.where(np.isfinite(x), x, np.nan)

    for g in GROUPS:
        table[f"{g}_feature"] = group_best[g][1]
        table[f"{g}_vr"] = finite(group_best[g][0])
    scores = np.stack([group_best[g][0] for g in GROUPS], axis=1)  # [N, groups]
    ranked = np.argsort(-scores, axis=1, kind="stable")
    thresholds = GroupThresholds.from_config(config)
    fam, best = [], {key: [] for key in ("bf", "bg", "bv", "rf", "rg", "rv")}
    for row in range(n):
        row_scores = {g: float(finite(scores[row, j])) for j, g in enumerate(GROUPS)}
        fam.append(assign_family(row_scores, thresholds))
        first, second = ranked[row, 0], ranked[row, 1]
        for prefix, j in (("b", first), ("r", second)):
            ok = np.isfinite(scores[row, j])
            best[prefix + "f"].append(group_best[GROUPS[j]][1][row] if ok else "")
            best[prefix + "g"].append(GROUPS[j] if ok else "")
            best[prefix + "v"].append(float(scores[row, j]) if ok else np.nan)
    table.update(
        family=fam,
        best_feature=best["bf"],
        best_group=best["bg"],
        best_vr=np.array(best["bv"], np.float64),
        runner_up_feature=best["rf"],
        runner_up_group=best["rg"],
        runner_up_vr=np.array(best["rv"], np.float64),
        top_features=[
            [str(x) for x, v in zip(names, vals, strict=True) if np.isfinite(v)]
            for names, vals in zip(top_name, top_vr, strict=True)
        ],
        top_vrs=[[float(v) for v in vals if np.isfinite(v)] for vals in top_vr],
        variance=sums.moments.var if sums.moments.count else np.full(n, np.nan),
    )
    first = [
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
    frame = pd.DataFrame(table)
    return frame[first + [c for c in frame.columns if c not in first]]


def add_vocab_families(
    table: pd.DataFrame, stats: pd.DataFrame, config: FamiliesConfig
) -> pd.DataFrame:
    """Join ``is_universal`` and ``vocab_var/skew/kurt`` of the stats table and add ``vocab_family``."""
    needed = ["layer", "index", "is_universal", "vocab_var", "vocab_skew", "vocab_kurt"]
    missing = [c for c in needed if c not in stats.columns]
    if missing:
        raise FamiliesError(f"stats table: missing columns {missing}")
    merged = table.merge(stats[needed], on=["layer", "index"], how="left", validate="one_to_one")
    merged["vocab_family"] = [
        vocab_family(k, s, v, config)
        for k, s, v in zip(
            merged["vocab_kurt"], merged["vocab_skew"], merged["vocab_var"], strict=True
        )
    ]
    return merged


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
    vocab = pd.Series(
        [
            vocab_family(k, s, v, config)
            for k, s, v in zip(
                rows["vocab_kurt"], rows["vocab_skew"], rows["vocab_var"], strict=True
            )
        ],
        index=rows.index,
        dtype=object,
    )
    by_activation = fam != UNEXPLAINED
    explained = by_activation | (vocab != "none")
    counts: dict[str, int] = {}
    per_layer: dict[str, list[int]] = {}
    for name, labels in [(f, fam) for f in FAMILIES] + [(v, vocab) for v in VOCAB_FAMILIES]:
        hit = (labels == name).to_numpy()
        counts[name] = int(hit.sum())
        per_layer[name] = [
            int((hit & (rows["layer"].to_numpy() == layer)).sum()) for layer in range(n_layers)
        ]
    n_universal = int(len(rows))
    return {
        "n_universal": n_universal,
        "n_explained": int(explained.sum()),
        "percent_explained": float(100.0 * explained.sum() / n_universal) if n_universal else 0.0,
        "n_explained_by_activation": int(by_activation.sum()),
        "percent_explained_by_activation": (
            float(100.0 * by_activation.sum() / n_universal) if n_universal else 0.0
        ),
        "counts": counts,
        "counts_per_layer": per_layer,
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


def plot_family_counts(metrics: dict, path) -> None:
    """Bar chart per model: universal neurons of each family per layer (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    models = list(metrics["models"])
    fig, axes = plt.subplots(
        1, max(len(models), 1), figsize=(4.5 * max(len(models), 1), 3.6), squeeze=False
    )
    names = [*FAMILIES, *VOCAB_FAMILIES]
    colours = plt.get_cmap("tab20")(np.linspace(0, 1, len(names)))
    for ax, model in zip(axes[0], models, strict=False):
        per_layer = metrics["models"][model]["counts_per_layer"]
        n_layers = len(per_layer.get(UNEXPLAINED, []))
        width = 0.8 / len(names)
        for j, name in enumerate(names):
            ax.bar(
                np.arange(n_layers) + (j - len(names) / 2 + 0.5) * width,
                per_layer.get(name, [0] * n_layers),
                width,
                label=name,
                color=colours[j],
            )
        ax.set_title(f"{model}: {metrics['models'][model]['n_universal']} universal neurons")
        ax.set_xlabel("layer")
        ax.set_xticks(range(n_layers))
        ax.set_ylabel("neurons")
        ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    axes[0][0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
