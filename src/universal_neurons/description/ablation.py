"""Batched neuron ablation and what it changes (SPEC "What a neuron does (effects)").

Ablating neuron ``i`` of layer ``l`` sets its post-activation at every kept position to a
value (its mean over the analysis tokens, or 0) and recomputes everything after it. Since
the MLP's output is linear in its activations, the ablated residual after block ``l`` is the
clean one plus ``(value - a_i) W_out[i]`` at the kept positions: the clean pass runs once
per batch of sequences, and only blocks ``l+1 ...`` run per ablated neuron, with
``neuron_batch`` neurons as copies of the batch in one pass (``models.tail``).

Per neuron, over the kept positions ``t < context - 1`` (the prediction of token ``t+1``):
``delta_loss`` = mean of ``-log q(next) + log p(next)`` (nats/token), ``kl`` = mean
``KL(p || q)``, ``delta_entropy`` = mean ``H(q) - H(p)`` (nats), with ``p`` the clean and
``q`` the ablated next-token distribution; ``token_delta [vocab]`` = mean change of each
token's log-probability; per later block the change of each MLP neuron's mean |activation|
and of each head's mean attention to position 0, over the kept positions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from universal_neurons.matching.activations import iter_batches, kept_mask
from universal_neurons.models.tail import Forward, TailOutput


@dataclass(frozen=True)
class Ablation:
    """One neuron to ablate: ``layer``, ``index`` and the ``value`` its post-activation is
    set to at the kept positions."""

    layer: int
    index: int
    value: float


@dataclass
class NeuronEffect:
    """The measured effect of one ablation (module docstring). ``downstream_neurons``:
    ``{later layer: [d_mlp]}`` change of mean |activation|; ``downstream_heads``:
    ``{later layer: [heads]}`` change of mean attention to position 0; ``per_token``:
    ``[kept prediction positions]`` change of the next token's loss, in token order."""

    layer: int
    index: int
    delta_loss: float
    kl: float
    delta_entropy: float
    token_delta: np.ndarray
    downstream_neurons: dict[int, np.ndarray]
    downstream_heads: dict[int, np.ndarray]
    per_token: np.ndarray


@dataclass
class _Sums:
    """Running float64 sums of one ablation over the batches."""

    loss: float = 0.0
    kl: float = 0.0
    entropy: float = 0.0
    tokens: np.ndarray | float = 0.0
    neurons: dict[int, np.ndarray] = field(default_factory=dict)
    heads: dict[int, np.ndarray] = field(default_factory=dict)
    per_token: list[np.ndarray] = field(default_factory=list)


@dataclass
class _Clean:
    """The clean pass of one batch (``n = batch * pos`` positions, flattened): its output,
    ``lse [n]`` (log-sum-exp of the logits), ``probs [n, vocab]``, ``neg_entropy [n]`` (sum
    p log p), ``target [n]`` (the next token; 0 at the last position), ``weights [n]`` (1 at
    the prediction positions: kept and not last), ``kept [batch, pos]`` and
    ``token_logprob [vocab]`` (sum over the prediction positions of log p)."""

    out: TailOutput
    lse: torch.Tensor
    probs: torch.Tensor
    neg_entropy: torch.Tensor
    target: torch.Tensor
    weights: torch.Tensor
    kept: torch.Tensor
    target_logit: torch.Tensor
    token_logprob: torch.Tensor


def _masked_sum(values: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """Per copy, the sum of ``values [copies, batch, pos, ...]`` over the positions where
    ``mask [batch, pos]`` holds: ``[copies, ...]`` float64."""
    weights = mask.to(values.dtype)
    return torch.einsum("cbp...,bp->c...", values, weights).double().cpu().numpy()


def _by_copy(values: torch.Tensor, copies: int) -> torch.Tensor:
    """``[copies * batch, ...]`` -> ``[copies, batch, ...]``."""
    return values.view(copies, -1, *values.shape[1:])


def _clean_pass(forward: Forward, tokens: torch.Tensor, excluded: np.ndarray) -> _Clean:
    """The clean forward pass of ``tokens [batch, pos]`` and what every ablation compares with."""
    out = forward.run(forward.embed(tokens), 0)
    kept = kept_mask(tokens, excluded).to(tokens.device)
    logits = out.logits.reshape(-1, out.logits.shape[-1])
    lse = logits.logsumexp(-1)
    probs = (logits - lse[:, None]).exp()
    target = torch.cat([tokens[:, 1:], torch.zeros_like(tokens[:, :1])], 1).reshape(-1)
    predicted = kept.clone()
    predicted[:, -1] = False
    weights = predicted.reshape(-1).to(logits.dtype)
    neg_entropy = torch.linalg.vecdot(probs, logits) - lse
    target_logit = logits.gather(1, target[:, None])[:, 0]
    token_logprob = weights @ logits - (weights * lse).sum()
    return _Clean(out, lse, probs, neg_entropy, target, weights, kept, target_logit, token_logprob)


def _ablated_residual(clean: _Clean, chunk: list[Ablation], w_out: torch.Tensor) -> torch.Tensor:
    """The residual after block ``layer`` with each neuron of ``chunk`` ablated in its own copy
    of the batch: ``[copies * batch, pos, d_model]``. ``w_out [d_mlp, d_model]`` of the layer."""
    layer = chunk[0].layer
    residual, post = clean.out.residuals[layer], clean.out.posts[layer]
    indices = torch.tensor([a.index for a in chunk], device=post.device)
    values = torch.tensor([a.value for a in chunk], dtype=post.dtype, device=post.device)
    change = values[:, None, None] - post[..., indices].permute(2, 0, 1)  # [copies, b, p]
    change = change * clean.kept.to(post.dtype)
    shift = change[..., None] * w_out[indices][:, None, None, :].to(post.dtype)
    return (residual[None] + shift).reshape(-1, *residual.shape[1:])


def _next_token_sums(clean: _Clean, logits: torch.Tensor, copies: int) -> dict[str, np.ndarray]:
    """Per copy: summed loss change, KL, entropy change and per-token log-probability change
    over the prediction positions, and the per-position loss change ``[copies, kept]``.

    ``logits [copies * batch, pos, vocab]`` of the ablated copies. With ``z`` the ablated
    logits, ``q = softmax(z)`` and ``L = logsumexp(z) = max z - log q[argmax z]``:
    ``log q = z - L``, so ``KL = sum p log p - (p . z - L)`` and ``H(q) = L - q . z``; no
    ``[copies, n, vocab]`` tensor but ``q`` is made (memory and time: one pass each)."""
    z = logits.reshape(copies, -1, logits.shape[-1])  # [copies, n, vocab]
    top, where = z.max(-1)
    q = z.softmax(-1)
    lse = top - q.gather(2, where[..., None])[..., 0].log()
    q_dot_z = torch.linalg.vecdot(q, z)
    del q
    p_dot_z = torch.bmm(z.transpose(0, 1), clean.probs[:, :, None])[..., 0].T  # [copies, n]
    target_logit = z.gather(2, clean.target[None, :, None].expand(copies, -1, 1))[..., 0]
    loss = (clean.target_logit - clean.lse)[None] - (target_logit - lse)
    kl = clean.neg_entropy[None] - (p_dot_z - lse)
    entropy = (lse - q_dot_z) + clean.neg_entropy[None]
    w = clean.weights
    tokens = torch.matmul(w, z) - (lse * w).sum(-1, keepdim=True) - clean.token_logprob
    mask = w > 0
    return {
        name: (value * w).sum(-1).double().cpu().numpy()
        for name, value in (("loss", loss), ("kl", kl), ("entropy", entropy))
    } | {
        "tokens": tokens.double().cpu().numpy(),
        "per_token": loss[:, mask].double().cpu().numpy(),
    }


def _downstream_sums(clean: _Clean, out: TailOutput, start: int, copies: int) -> dict:
    """Per copy and later block: summed change of |MLP activation| ``[copies, d_mlp]`` and of
    attention to position 0 ``[copies, heads]`` over the kept positions."""
    neurons, heads = {}, {}
    kept = clean.kept.reshape(-1).to(out.logits.dtype)  # [batch * pos]
    for offset, (post, first) in enumerate(zip(out.posts, out.attention_to_first, strict=True)):
        layer = start + offset
        ablated = torch.matmul(kept, post.abs().reshape(copies, kept.shape[0], -1))
        clean_sum = kept @ clean.out.posts[layer].abs().reshape(kept.shape[0], -1)
        neurons[layer] = (ablated - clean_sum).double().cpu().numpy()
        change = _by_copy(first, copies) - clean.out.attention_to_first[layer][None]
        heads[layer] = _masked_sum(change.transpose(2, 3), clean.kept)
    return {"neurons": neurons, "heads": heads}


def _add(sums: list[_Sums], measured: dict, downstream: dict) -> None:
    """Add one batch's per-copy measures to the running sums of the chunk's ablations."""
    for copy, total in enumerate(sums):
        total.loss += float(measured["loss"][copy])
        total.kl += float(measured["kl"][copy])
        total.entropy += float(measured["entropy"][copy])
        total.tokens = total.tokens + measured["tokens"][copy]
        total.per_token.append(measured["per_token"][copy].astype(np.float32))
        for layer, change in downstream["neurons"].items():
            total.neurons[layer] = total.neurons.get(layer, 0.0) + change[copy]
        for layer, change in downstream["heads"].items():
            total.heads[layer] = total.heads.get(layer, 0.0) + change[copy]


@torch.no_grad()
def _measure_batch(
    forward: Forward, clean: _Clean, chunk: list[Ablation], w_out: torch.Tensor
) -> tuple[dict, dict]:
    """The ablations of ``chunk`` (one layer) on one batch: next-token and downstream sums."""
    start = chunk[0].layer + 1
    out = forward.run(_ablated_residual(clean, chunk, w_out), start)
    return _next_token_sums(clean, out.logits, len(chunk)), _downstream_sums(
        clean, out, start, len(chunk)
    )


def _chunks(ablations: list[Ablation], size: int) -> list[list[Ablation]]:
    """The ablations grouped by layer, in chunks of at most ``size``."""
    chunks = []
    for layer in sorted({a.layer for a in ablations}):
        same = [a for a in ablations if a.layer == layer]
        chunks += [same[start : start + size] for start in range(0, len(same), size)]
    return chunks


def measure_ablations(
    forward: Forward,
    w_out: torch.Tensor,
    tokens: np.ndarray,
    excluded: np.ndarray,
    ablations: list[Ablation],
    batch_size: int,
    neuron_batch: int,
    progress: bool = True,
) -> list[NeuronEffect]:
    """Ablate each of ``ablations`` on ``tokens [sequences, pos]`` (positions whose token is in
    ``excluded`` are neither ablated nor measured); ``w_out [layers, d_mlp, d_model]``: the
    processed output weights of the model ``forward`` runs. ``batch_size`` sequences per
    clean pass, ``neuron_batch`` ablations per partial pass. Returns one ``NeuronEffect`` per
    ablation, in the order given."""
    chunks = _chunks(ablations, neuron_batch)
    sums = {id(a): _Sums() for a in ablations}
    count = 0
    batches = list(iter_batches(tokens, batch_size))
    device = w_out.device
    bar = tqdm(total=len(batches) * len(chunks), desc="ablation", disable=not progress)
    for _, batch in batches:
        clean = _clean_pass(forward, batch.to(device), excluded)
        count += int(clean.weights.sum())
        for chunk in chunks:
            measured, downstream = _measure_batch(forward, clean, chunk, w_out[chunk[0].layer])
            _add([sums[id(a)] for a in chunk], measured, downstream)
            bar.update()
    bar.close()
    kept_total = _kept_total(tokens, excluded, batch_size)
    return [_effect(a, sums[id(a)], max(count, 1), max(kept_total, 1)) for a in ablations]


def _kept_total(tokens: np.ndarray, excluded: np.ndarray, batch_size: int) -> int:
    """Number of kept positions of ``tokens`` (the denominator of the downstream means)."""
    return sum(int(kept_mask(b, excluded).sum()) for _, b in iter_batches(tokens, batch_size))


def _effect(ablation: Ablation, total: _Sums, predicted: int, kept: int) -> NeuronEffect:
    """Means of the running sums: ``predicted`` prediction positions, ``kept`` kept positions."""
    return NeuronEffect(
        layer=ablation.layer,
        index=ablation.index,
        delta_loss=total.loss / predicted,
        kl=total.kl / predicted,
        delta_entropy=total.entropy / predicted,
        token_delta=np.asarray(total.tokens, dtype=np.float64) / predicted,
        downstream_neurons={layer: v / kept for layer, v in total.neurons.items()},
        downstream_heads={layer: v / kept for layer, v in total.heads.items()},
        per_token=np.concatenate(total.per_token) if total.per_token else np.zeros(0),
    )


def top_changes(values: np.ndarray, count: int) -> list[list]:
    """The ``count`` entries of ``values [n]`` of largest |value|: ``[[index, value], ...]``,
    largest first (ties by index)."""
    order = np.lexsort((np.arange(len(values)), -np.abs(values)))[:count]
    return [[int(i), float(values[i])] for i in order]


def effect_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two per-token effects ``[positions]`` (NaN if either is constant)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    a, b = a - a.mean(), b - b.mean()
    scale = np.sqrt((a @ a) * (b @ b))
    return float(a @ b / scale) if scale > 0 else float("nan")
