"""A plain forward pass to the MLP activations of a GPT-2 model loaded through TransformerLens.

``TransformerBridge`` computes attention in Python (explicit scores, mask and softmax, one
hook point per step): on the CPU, capturing a layer's MLP activations through it took about
1.5x a plain Hugging Face forward through the same layers. ``Trunk`` runs the same weights,
the very modules the bridge calls (its processed q/k/v/o and MLP linears, its folded
LayerNorms, the model's activation function), with PyTorch's fused attention
(``scaled_dot_product_attention``) and nothing else: no hooks, no unembedding, and it stops
after the last layer asked for.

It is built only for the architecture whose bridge it mirrors (GPT-2 with a joint QKV
projection, no attention scaling quirks), and only used after a probe batch gave the same
activations as the bridge's hooks (``trunk_for``); any other model keeps the bridge path.
"""

from __future__ import annotations

import logging
import math
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

PROBE_TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-9, torch.bfloat16: 5e-2}
"""Largest ``max |trunk - bridge| / max |bridge|`` over a probe batch for the trunk to be used."""


@dataclass(frozen=True)
class _Layer:
    """The bridge's own submodules of one GPT-2 block (shared, not copied)."""

    ln1: torch.nn.Module
    q: torch.nn.Module
    k: torch.nn.Module
    v: torch.nn.Module
    o: torch.nn.Module
    ln2: torch.nn.Module
    mlp_in: torch.nn.Module
    act: torch.nn.Module
    mlp_out: torch.nn.Module


class Trunk:
    """GPT-2's forward pass up to the MLP activations, on a bridge's modules.

    ``run(tokens [batch, pos], layers, kinds)`` returns per kind (``pre``: the MLP's input
    projection, ``post``: after the nonlinearity) a list of ``[batch, pos, d_mlp]`` tensors,
    one per layer of ``layers`` (consecutive), in the model's dtype.
    """

    def __init__(self, bridge) -> None:
        original = bridge.original_model.transformer
        self.embed = original.wte
        self.pos_embed = original.wpe
        self.n_heads = int(bridge.cfg.n_heads)
        self.layers = [_layer(block) for block in bridge.blocks]

    @torch.no_grad()
    def run(
        self, tokens: torch.Tensor, layers: range, kinds: tuple[str, ...]
    ) -> dict[str, list[torch.Tensor]]:
        """MLP activations of ``layers`` for ``tokens [batch, pos]`` (see the class)."""
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        residual = _call(self.embed, tokens) + _call(self.pos_embed, positions)
        captured: dict[str, list[torch.Tensor]] = {kind: [] for kind in kinds}
        for index, layer in enumerate(self.layers[: layers.stop]):
            residual = residual + self._attention(layer, _call(layer.ln1, residual))
            pre = _call(layer.mlp_in, _call(layer.ln2, residual))
            post = _call(layer.act, pre)
            if index >= layers.start:
                for kind, value in (("pre", pre), ("post", post)):
                    if kind in captured:
                        captured[kind].append(value)
            if index + 1 < layers.stop:
                residual = residual + _call(layer.mlp_out, post)
        return captured

    def _attention(self, layer: _Layer, normed: torch.Tensor) -> torch.Tensor:
        """Causal multi-head attention of ``normed [batch, pos, d_model]`` (fused kernel)."""
        batch, pos, d_model = normed.shape
        d_head = d_model // self.n_heads

        def heads(module: torch.nn.Module) -> torch.Tensor:
            return _call(module, normed).view(batch, pos, self.n_heads, d_head).transpose(1, 2)

        mixed = F.scaled_dot_product_attention(
            heads(layer.q),
            heads(layer.k),
            heads(layer.v),
            is_causal=True,
            scale=1 / math.sqrt(d_head),
        )
        return _call(layer.o, mixed.transpose(1, 2).reshape(batch, pos, d_model))


def _call(module: torch.nn.Module, value: torch.Tensor) -> torch.Tensor:
    """The bridge's wrapped Hugging Face module (its ``_original_component``), without hooks."""
    return getattr(module, "_original_component", module)(value)


def _layer(block) -> _Layer:
    """The modules of one block: the bridge's processed linears and norms, HF's activation."""
    return _Layer(
        ln1=block.ln1,
        q=block.attn.q,
        k=block.attn.k,
        v=block.attn.v,
        o=block.attn.o,
        ln2=block.ln2,
        mlp_in=getattr(block.mlp, "in"),
        act=block.mlp._original_component.act,
        mlp_out=block.mlp.out,
    )


def supported(bridge) -> bool:
    """Whether ``Trunk`` mirrors this bridge: Hugging Face GPT-2, plain attention scaling."""
    config = getattr(getattr(bridge, "original_model", None), "config", None)
    if config is None or getattr(config, "model_type", None) != "gpt2":
        return False
    quirks = ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn")
    return getattr(config, "scale_attn_weights", True) and not any(
        getattr(config, quirk, False) for quirk in quirks
    )


_TRUNKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def trunk_for(bridge, probe: torch.Tensor, reference) -> Trunk | None:
    """The bridge's ``Trunk`` (built once per bridge), or None where it does not apply.

    ``probe [batch, pos]`` tokens and ``reference(probe) -> {"pre": [...], "post": [...]}``
    (the bridge's hooks): the trunk is used only if it agrees with them on the probe within
    ``PROBE_TOLERANCE`` of the model's dtype; otherwise the bridge path is kept (and logged).
    """
    if bridge in _TRUNKS:
        return _TRUNKS[bridge]
    trunk = Trunk(bridge) if supported(bridge) else None
    if trunk is not None:
        n_layers = len(trunk.layers)
        expected = reference(probe)
        got = trunk.run(probe, range(n_layers), ("pre", "post"))
        error = max(
            _relative_error(got[kind][layer], expected[kind][layer])
            for kind in ("pre", "post")
            for layer in range(n_layers)
        )
        tolerance = PROBE_TOLERANCE.get(probe_dtype(bridge), 1e-4)
        if not error <= tolerance:
            log.warning("fused trunk differs from the bridge by %.2g; using the bridge", error)
            trunk = None
    _TRUNKS[bridge] = trunk
    return trunk


def probe_dtype(bridge) -> torch.dtype:
    """The dtype of the bridge's weights."""
    return next(bridge.parameters()).dtype


def _relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    """``max |got - expected| / max |expected|`` in float64."""
    got, expected = got.to(torch.float64), expected.to(torch.float64)
    scale = float(expected.abs().max()) or 1.0
    return float((got - expected).abs().max()) / scale


def uses_trunk(bridge) -> bool:
    """Whether ``capture_mlp`` runs this bridge through its ``Trunk`` (after the first call)."""
    return _TRUNKS.get(bridge) is not None
