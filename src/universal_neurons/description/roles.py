"""Functional roles of neurons read from their weights, and the neurons they are compared with.

Roles (SPEC "What a neuron does (effects)", paper section 5), on the processed weights
(LayerNorm folded, writing weights and unembedding centred):

- *entropy*: ``null_fraction`` = share of ``||W_out[i]||^2`` in the ``null_space_dims``
  directions of the residual stream along which the centred unembedding ``W_U [d_model,
  vocab]`` reads least (its smallest singular directions); role iff ``null_fraction >=
  entropy_null_fraction`` and ``w_out_norm`` is at or above the layer's
  ``entropy_norm_quantile``. Such a neuron changes the final LayerNorm's scale, not the
  direction of the logits: mean-ablating it removes the variation of that norm, so the
  predicted change of entropy under ablation is negative.
- *attention (de)activation*: per head ``h`` of a later block, ``score = std(a_i) * mean(1 /
  scale) * (W_out[i] W_Q^h) . k_0^h / sqrt(d_head)``: the change of ``h``'s attention logit to
  position 0 per unit of the neuron's activation standard deviation (``k_0^h``: the key at
  position 0, ``scale``: the block's LayerNorm scale, both from real data). Role iff
  ``max |score| > attention_score``; a positive score pushes the head onto position 0 (the
  attention sink: the head is switched off, *attention_deactivation*), a negative one pulls
  it away (*attention_activation*).
- *prediction* / *suppression*: the output weights' vocabulary composition
  (``families.vocab_family``).

Precedence when several hold: entropy > attention_(de)activation > prediction > suppression
> none (the weight-level mechanisms first, the vocabulary composition after).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from universal_neurons.config import EffectsConfig, FamiliesConfig
from universal_neurons.description.families import vocab_family

ROLES = (
    "entropy",
    "attention_activation",
    "attention_deactivation",
    "prediction",
    "suppression",
    "none",
)
"""Every role, in order of precedence."""


def null_fractions(w_out: torch.Tensor, w_u: torch.Tensor, dims: int) -> np.ndarray:
    """Share of each neuron's squared output norm in the ``dims`` smallest singular directions
    of the centred unembedding. ``w_out [layers, d_mlp, d_model]``, ``w_u [d_model, vocab]``;
    returns ``[layers, d_mlp]`` in [0, 1] (NaN for a neuron with zero output weights)."""
    w_u = w_u.double()
    centred = w_u - w_u.mean(dim=1, keepdim=True)
    # U [d_model, d_model] is all that is used: without the full V ([vocab, vocab]: 20 GB in
    # float64 at GPT-2's vocabulary) unless the vocabulary is the smaller side
    wide = centred.shape[1] >= centred.shape[0]
    directions, _, _ = torch.linalg.svd(centred, full_matrices=not wide)  # descending
    null = directions[:, -min(dims, directions.shape[1]) :]  # [d_model, dims]
    w_out = w_out.double()
    inside = (w_out @ null).pow(2).sum(-1)
    total = w_out.pow(2).sum(-1)
    fraction = torch.where(total > 0, inside / total.clamp_min(1e-300), torch.nan)
    return fraction.numpy()


def attention_scores(
    w_out: torch.Tensor,
    w_q: torch.Tensor,
    key_first: torch.Tensor,
    inverse_scale: torch.Tensor,
    activation_std: np.ndarray,
) -> np.ndarray:
    """Per neuron and head: the change of the head's attention logit to position 0 per unit of
    the neuron's activation standard deviation (module docstring). ``w_out [layers, d_mlp,
    d_model]``, ``w_q [layers, heads, d_model, d_head]``, ``key_first [layers, heads,
    d_head]``, ``inverse_scale [layers]``, ``activation_std [layers, d_mlp]``. Returns
    ``[layers, d_mlp, layers, heads]``; entries of heads not after the neuron's block are 0."""
    n_layers, d_mlp, _ = w_out.shape
    d_head = w_q.shape[-1]
    reads = torch.einsum("lhdk,lhk->lhd", w_q.double(), key_first.double())  # [L, H, d_model]
    reads = reads * inverse_scale.double()[:, None, None] / np.sqrt(d_head)
    scores = torch.einsum("nid,lhd->nilh", w_out.double(), reads).numpy()
    scores = scores * np.asarray(activation_std, np.float64)[:, :, None, None]
    later = np.arange(n_layers)[None, :] > np.arange(n_layers)[:, None]  # [neuron L, head L]
    return np.where(later[:, None, :, None], np.nan_to_num(scores), 0.0)


def strongest_head(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """From ``attention_scores [layers, d_mlp, layers, heads]``: per neuron the signed score of
    largest magnitude and its head's ``(layer, head)``: three ``[layers, d_mlp]`` arrays."""
    n_layers, d_mlp, _, heads = scores.shape
    flat = scores.reshape(n_layers, d_mlp, -1)
    best = np.abs(flat).argmax(-1)
    signed = np.take_along_axis(flat, best[..., None], -1)[..., 0]
    return signed, best // heads, best % heads


def weight_role(
    null_fraction: float,
    norm_at_quantile: bool,
    attention_score: float,
    vocabulary: str,
    config: EffectsConfig,
) -> str:
    """The role of one neuron (module docstring): ``vocabulary`` is its
    ``families.vocab_family``; ``norm_at_quantile`` whether its output norm reaches the
    layer's ``entropy_norm_quantile``."""
    nulls = np.isfinite(null_fraction) and null_fraction >= config.entropy_null_fraction
    if norm_at_quantile and nulls:
        return "entropy"
    if abs(attention_score) > config.attention_score:
        return "attention_deactivation" if attention_score > 0 else "attention_activation"
    return vocabulary if vocabulary in ("prediction", "suppression") else "none"


def role_table(
    stats: pd.DataFrame,
    null_fraction: np.ndarray,
    scores: np.ndarray,
    effects: EffectsConfig,
    families: FamiliesConfig,
) -> pd.DataFrame:
    """Every neuron's weight-based role. ``stats``: the stats stage's neuron table (``layer,
    index, w_out_norm, vocab_kurt, vocab_skew, vocab_var``); ``null_fraction [layers,
    d_mlp]``; ``scores``: ``attention_scores`` ``[layers, d_mlp, layers, heads]``. Returns
    ``layer, index, null_fraction, attention_score, attention_layer, attention_head,
    vocab_family, role``."""
    table = stats[["layer", "index", "w_out_norm"]].copy()
    layer, index = table["layer"].to_numpy(), table["index"].to_numpy()
    signed, head_layer, head = strongest_head(scores)
    table["null_fraction"] = null_fraction[layer, index]
    table["attention_score"] = signed[layer, index]
    table["attention_layer"] = head_layer[layer, index]
    table["attention_head"] = head[layer, index]
    cut = table.groupby("layer")["w_out_norm"].transform(
        lambda norms: norms.quantile(effects.entropy_norm_quantile)
    )
    vocab = [
        vocab_family(k, s, v, families)
        for k, s, v in zip(
            stats["vocab_kurt"], stats["vocab_skew"], stats["vocab_var"], strict=True
        )
    ]
    table["vocab_family"] = vocab
    table["role"] = [
        weight_role(nf, bool(norm >= c), sc, fam, effects)
        for nf, norm, c, sc, fam in zip(
            table["null_fraction"],
            table["w_out_norm"],
            cut,
            table["attention_score"],
            vocab,
            strict=True,
        )
    ]
    return table.drop(columns="w_out_norm")


# --- matched controls ---------------------------------------------------------------------


def layer_deciles(values: pd.Series, layers: pd.Series) -> np.ndarray:
    """Decile 0..9 of each value within its layer (by rank; ties in table order)."""
    ranks = values.groupby(layers).rank(method="first", pct=True)
    return np.minimum((ranks.to_numpy() * 10 - 1e-9).astype(int), 9)


def draw_controls(
    stats: pd.DataFrame, universal: list[tuple[int, int]], count: int, seed: int
) -> pd.DataFrame:
    """``count`` control neurons per universal ``(layer, index)``: same layer, not universal,
    not dead, in the same within-layer decile of ``sparsity`` (activation frequency) and of
    ``w_out_norm``, drawn without replacement with ``numpy.random.default_rng(seed)`` in the
    order of ``universal``. An empty or too small cell is widened to the deciles within 1,
    2, ... of the neuron's (both at once) until it holds ``count``. Returns ``of_layer,
    of_index, layer, index, widening`` (the decile distance used: 0 = the exact cell)."""
    rng = np.random.default_rng(seed)
    table = stats[["layer", "index", "is_universal", "dead"]].copy()
    table["freq_decile"] = layer_deciles(stats["sparsity"], stats["layer"])
    table["norm_decile"] = layer_deciles(stats["w_out_norm"], stats["layer"])
    by_key = table.set_index(["layer", "index"])
    rows = []
    for layer, index in universal:
        own = by_key.loc[(layer, index)]
        pool = table[(table["layer"] == layer) & ~table["is_universal"] & ~table["dead"]]
        for widening in range(10):
            distance = np.maximum(
                (pool["freq_decile"] - own["freq_decile"]).abs(),
                (pool["norm_decile"] - own["norm_decile"]).abs(),
            )
            cell = pool[distance <= widening]
            if len(cell) >= count or widening == 9:
                break
        chosen = rng.choice(len(cell), size=min(count, len(cell)), replace=False)
        rows += [
            (layer, index, int(cell["layer"].iloc[c]), int(cell["index"].iloc[c]), widening)
            for c in sorted(chosen)
        ]
    return pd.DataFrame(rows, columns=["of_layer", "of_index", "layer", "index", "widening"])


def best_partners(
    max_corr: pd.DataFrame, model: str, universal: list[tuple[int, int]]
) -> pd.DataFrame:
    """Each universal ``(layer, index)`` of ``model``'s best-correlated neuron in every other
    model (correlate's per-partner argmax). ``max_corr``: ``model, partner, layer, index,
    argmax_layer, argmax_index``. Returns ``of_layer, of_index, partner, layer, index``."""
    rows = max_corr[max_corr["model"] == model]
    wanted = pd.DataFrame(universal, columns=["layer", "index"])
    matched = rows.merge(wanted, on=["layer", "index"])
    matched = matched.sort_values(["layer", "index", "partner"])
    return pd.DataFrame(
        {
            "of_layer": matched["layer"].astype(int).to_numpy(),
            "of_index": matched["index"].astype(int).to_numpy(),
            "partner": matched["partner"].to_numpy(),
            "layer": matched["argmax_layer"].astype(int).to_numpy(),
            "index": matched["argmax_index"].astype(int).to_numpy(),
        }
    )
