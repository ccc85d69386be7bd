"""GPT-2's forward pass from a residual stream on, watching what the effects stage measures.

An ablated neuron of layer ``l`` changes nothing before its own MLP: the effects stage runs
the clean pass once, adds the ablation's change to the residual after block ``l`` and runs
only blocks ``l+1 ...`` (and the unembedding) per ablated neuron. ``Forward.run`` is that
partial pass; it also returns each block's MLP activations (``hook_post``) and each head's
attention to position 0 (``hook_pattern[..., 0]``), the downstream quantities.

Two implementations of the same pass: ``_FusedForward`` on the bridge's own processed modules
(as ``trunk.Trunk``, with attention written out, for GPT-2), and ``_BridgeForward`` through the
bridge's hooks and ``start_at_layer`` (any architecture). ``forward_for`` uses the first only
after a probe batch gave the bridge's logits.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import torch

from universal_neurons.models.trunk import PROBE_TOLERANCE, Trunk, probe_dtype, supported

log = logging.getLogger(__name__)


@dataclass
class TailOutput:
    """What one partial forward pass from block ``start`` on gives (``batch`` sequences of
    ``pos`` tokens). ``logits [batch, pos, vocab]``; per block run, in order:
    ``residuals`` (after the block) and ``posts`` (MLP activations), ``[batch, pos, d_model]``
    and ``[batch, pos, d_mlp]``, and ``attention_to_first`` ``[batch, heads, pos]`` (each
    query position's attention probability on position 0)."""

    logits: torch.Tensor
    residuals: list[torch.Tensor] = field(default_factory=list)
    posts: list[torch.Tensor] = field(default_factory=list)
    attention_to_first: list[torch.Tensor] = field(default_factory=list)


def _call(module: torch.nn.Module, value: torch.Tensor) -> torch.Tensor:
    """The bridge's wrapped Hugging Face module, without hooks."""
    return getattr(module, "_original_component", module)(value)


class _FusedForward:
    """The partial pass on a GPT-2 bridge's processed modules (no hooks)."""

    def __init__(self, bridge) -> None:
        self.trunk = Trunk(bridge)
        self.ln_final = bridge.ln_final
        self.unembed = bridge.unembed

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """The residual before block 0: ``[batch, pos, d_model]``."""
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        return _call(self.trunk.embed, tokens) + _call(self.trunk.pos_embed, positions)

    @torch.no_grad()
    def run(self, residual: torch.Tensor, start: int) -> TailOutput:
        """Blocks ``start ...`` and the unembedding from ``residual [batch, pos, d_model]``."""
        out = TailOutput(logits=residual)
        for layer in self.trunk.layers[start:]:
            mixed, first = self._attention(layer, _call(layer.ln1, residual))
            residual = residual + mixed
            post = _call(layer.act, _call(layer.mlp_in, _call(layer.ln2, residual)))
            residual = residual + _call(layer.mlp_out, post)
            out.residuals.append(residual)
            out.posts.append(post)
            out.attention_to_first.append(first)
        out.logits = _call(self.unembed, _call(self.ln_final, residual))
        return out

    def _attention(self, layer, normed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Causal attention of ``normed [batch, pos, d_model]``: ``(output [batch, pos,
        d_model], attention to position 0 [batch, heads, pos])``."""
        batch, pos, d_model = normed.shape
        n_heads = self.trunk.n_heads
        d_head = d_model // n_heads

        def heads(module: torch.nn.Module) -> torch.Tensor:
            return _call(module, normed).view(batch, pos, n_heads, d_head).transpose(1, 2)

        scores = heads(layer.q) @ heads(layer.k).transpose(-1, -2) / math.sqrt(d_head)
        future = torch.ones(pos, pos, dtype=torch.bool, device=normed.device).triu(1)
        pattern = scores.masked_fill(future, float("-inf")).softmax(-1)
        mixed = (pattern @ heads(layer.v)).transpose(1, 2).reshape(batch, pos, d_model)
        return _call(layer.o, mixed), pattern[..., 0]


class _BridgeForward:
    """The partial pass through the bridge's hooks (any architecture the bridge loads)."""

    def __init__(self, bridge) -> None:
        self.bridge = bridge
        self.n_layers = int(bridge.cfg.n_layers)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """The token ids themselves: the bridge embeds them when ``start`` is 0."""
        return tokens

    @torch.no_grad()
    def run(self, residual: torch.Tensor, start: int) -> TailOutput:
        """Blocks ``start ...`` and the unembedding (``residual``: token ids when 0)."""
        if start >= self.n_layers:  # after the last block: only the unembedding is left
            return TailOutput(logits=self.bridge.unembed(self.bridge.ln_final(residual)))
        seen: dict[str, torch.Tensor] = {}

        def keep(value: torch.Tensor, hook) -> None:
            seen[hook.name] = value.detach()

        layers = range(start, self.n_layers)
        hooks = [
            (f"blocks.{layer}.{name}", keep)
            for layer in layers
            for name in ("hook_resid_post", "mlp.hook_post", "attn.hook_pattern")
        ]
        kwargs = {} if start == 0 else {"start_at_layer": start}
        logits = self.bridge.run_with_hooks(residual, fwd_hooks=hooks, **kwargs)
        out = TailOutput(logits=logits)
        for layer in layers:
            out.residuals.append(_seen(seen, layer, ("hook_resid_post", "hook_out")))
            out.posts.append(seen[f"blocks.{layer}.mlp.hook_post"])
            out.attention_to_first.append(seen[f"blocks.{layer}.attn.hook_pattern"][..., 0])
        return out


def _seen(seen: dict[str, torch.Tensor], layer: int, names: tuple[str, ...]) -> torch.Tensor:
    """The value a hook of block ``layer`` recorded under the first of ``names`` (the bridge
    records an alias under its canonical name)."""
    for name in names:
        if f"blocks.{layer}.{name}" in seen:
            return seen[f"blocks.{layer}.{name}"]
    raise KeyError(f"blocks.{layer}: none of {names} was recorded")


Forward = _FusedForward | _BridgeForward


def forward_for(bridge, probe: torch.Tensor) -> Forward:
    """The partial forward pass for ``bridge``: the fused one if the bridge is a GPT-2 and it
    gives the bridge's own logits on ``probe [batch, pos]`` within the dtype's tolerance,
    else the bridge's hooks."""
    reference = _BridgeForward(bridge)
    if not supported(bridge):
        return reference
    fused = _FusedForward(bridge)
    with torch.no_grad():
        expected = reference.run(probe, 0)
        got = fused.run(fused.embed(probe), 0)
    pairs = [(got.logits, expected.logits)]
    pairs += list(zip(got.attention_to_first, expected.attention_to_first, strict=True))
    error = max(_relative_error(a, b) for a, b in pairs)
    if error <= PROBE_TOLERANCE.get(probe_dtype(bridge), 1e-4):
        return fused
    log.warning("fused forward differs from the bridge by %.2g; using the bridge", error)
    return reference


def _relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    """``max |got - expected| / max |expected|`` in float64."""
    got, expected = got.to(torch.float64), expected.to(torch.float64)
    return float((got - expected).abs().max()) / (float(expected.abs().max()) or 1.0)


@torch.no_grad()
def attention_context(bridge, tokens: torch.Tensor, kept: torch.Tensor) -> dict:
    """What the weight-based attention score needs from real data, per block: ``key_first
    [layers, heads, d_head]`` (the key at position 0, mean over the sequences of ``tokens
    [batch, pos]``) and ``inverse_scale [layers]`` (mean over the ``kept [batch, pos]``
    positions of 1 / the attention LayerNorm's scale, the factor a change of the residual
    reaches the queries with)."""
    seen: dict[str, torch.Tensor] = {}

    def keep(value: torch.Tensor, hook) -> None:
        seen[hook.name] = value.detach()

    n_layers = int(bridge.cfg.n_layers)
    hooks = [(f"blocks.{layer}.attn.hook_k", keep) for layer in range(n_layers)]
    hooks += [(f"blocks.{layer}.ln1.hook_scale", keep) for layer in range(n_layers)]
    bridge.run_with_hooks(tokens, fwd_hooks=hooks)
    keys = [seen[f"blocks.{layer}.attn.hook_k"][:, 0].mean(0) for layer in range(n_layers)]
    scales = [
        (1.0 / seen[f"blocks.{layer}.ln1.hook_scale"][..., 0])[kept].mean()
        for layer in range(n_layers)
    ]
    return {"key_first": torch.stack(keys).float(), "inverse_scale": torch.stack(scales).float()}
