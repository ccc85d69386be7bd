"""The uncertainty stage's pass: each block's sums from full cross-products (SPEC "Uncertainty").

Within one block of analysis sequences, ``BlockProducts`` accumulates for a group of models
the shifted sums ``Σx``, ``Σx²``, each layer's ``Σ x_l x_lᵀ`` and, per pair of models, the
whole cross-product ``Σ x yᵀ [N_a, N_b]`` (one matrix product per batch, as correlate does).
At the end of the block they reduce to the candidate sums of ``resampling.CandidateSums``,
for the partner's neurons and for its rotated directions ``ỹ_l = Q_l y_l`` (SPEC
"Random-rotation baseline") without rotating any activation::

    Σ x_i ỹ_j = q_j · Σ x_i y_l      Σ ỹ_j = q_j · Σ y_l      Σ ỹ_j² = q_jᵀ (Σ y_l y_lᵀ) q_j

Only one block's ``[N_a, N_b]`` matrices are held (the size correlate holds for the whole set).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np
import torch
from tqdm import tqdm

from universal_neurons.matching.activations import iter_batches, kept_mask
from universal_neurons.matching.collect import kept_activations
from universal_neurons.matching.resampling import (
    BlockTotals,
    CandidateSums,
    block_bounds,
    rotated_key,
)


class BlockProducts:
    """The shifted sums of one block for models ``names`` (``n_layers`` x ``d_mlp`` neurons
    each): ``count``; per model ``first [N]``, ``second [N]``, ``within [layers, d_mlp,
    d_mlp]``; per pair ``(a, b)`` (a before b) ``cross [N, N]``; all float64. ``shifts``:
    per model ``[N]``, the values subtracted before any product (kept across blocks)."""

    def __init__(self, names: list[str], n_layers: int, d_mlp: int, shifts: dict) -> None:
        n = n_layers * d_mlp
        self.names, self.n_layers, self.d_mlp, self.shifts = names, n_layers, d_mlp, shifts
        self.count = 0

        def zeros(*shape: int) -> torch.Tensor:
            return torch.zeros(*shape, dtype=torch.float64)

        self.first = {name: zeros(n) for name in names}
        self.second = {name: zeros(n) for name in names}
        self.within = {name: zeros(n_layers, d_mlp, d_mlp) for name in names}
        self.cross = {(a, b): zeros(n, n) for i, a in enumerate(names) for b in names[i + 1 :]}

    @torch.no_grad()
    def add(self, values: Mapping[str, torch.Tensor]) -> None:
        """Add one batch: ``values[name] [tokens, N]`` per model (same tokens); products in the
        values' dtype, summed into float64. A model's first batch sets its shift (its mean)."""
        centred = {}
        for name in self.names:
            value = values[name]
            if name not in self.shifts:
                self.shifts[name] = value.to(torch.float64).mean(dim=0)
            v = value - self.shifts[name].to(value.dtype)
            centred[name] = v
            self.first[name] += v.sum(dim=0, dtype=torch.float64)
            self.second[name] += (v * v).sum(dim=0, dtype=torch.float64)
            layers = v.T.reshape(self.n_layers, self.d_mlp, -1)  # [layers, d_mlp, tokens]
            self.within[name] += (layers @ layers.transpose(1, 2)).to(torch.float64)
        self.count += int(next(iter(centred.values())).shape[0])
        for (a, b), cross in self.cross.items():
            cross += (centred[a].T @ centred[b]).to(torch.float64)

    def _cross(self, x: str, y: str) -> torch.Tensor:
        """``Σ x yᵀ [N_x, N_y]`` of two different models."""
        return self.cross[(x, y)] if (x, y) in self.cross else self.cross[(y, x)].T

    def _rotated_columns(self, partner: str, matrices: torch.Tensor):
        """``(Σỹ [N], Σỹ² [N])`` of ``partner``'s directions rotated by ``matrices [layers,
        d_mlp, d_mlp]``."""
        return rotated_columns(self.first[partner], self.within[partner], matrices)

    def _rotated_cross(
        self, x: str, partner: str, matrices: torch.Tensor, candidates
    ) -> torch.Tensor:
        """``[N_x, k]``: ``Σ x_i ỹ_j`` for x's candidate rotated directions ``candidates [N_x,
        k]`` (indices ``layer * d_mlp + j``), from the cross-product with ``partner``."""
        return rotated_cross(self._cross(x, partner), matrices, candidates)

    def totals(self, links: Mapping, rotations: Mapping[str, torch.Tensor]) -> BlockTotals:
        """The block's ``BlockTotals`` for ``links`` (``{(x, y key): candidates [N_x, k]}``,
        y a model or a ``rotated_key``); ``rotations[partner] [draws, layers, d_mlp, d_mlp]``
        float64."""
        first, second = dict(self.first), dict(self.second)
        for partner, matrices in rotations.items():
            for draw, draw_matrices in enumerate(matrices):
                key = rotated_key(partner, draw)
                first[key], second[key] = self._rotated_columns(partner, draw_matrices)
        cross = {}
        for (x, y), candidates in links.items():
            candidates = torch.as_tensor(candidates, dtype=torch.int64)
            if y in self.first:
                cross[(x, y)] = self._cross(x, y).gather(1, candidates)
            else:
                partner, draw = _rotated_of(y, rotations)
                cross[(x, y)] = self._rotated_cross(
                    x, partner, rotations[partner][draw], candidates
                )
        return BlockTotals(self.count, first, second, cross)


def rotated_columns(first: torch.Tensor, within: torch.Tensor, matrices: torch.Tensor):
    """``(Σỹ [L * d_mlp], Σỹ² [L * d_mlp])`` float64 of the directions ``ỹ_l = Q_l y_l`` of
    ``L`` consecutive layers, from the shifted sums ``first [L * d_mlp]``, the layers' sums
    of products ``within [L, d_mlp, d_mlp]`` and ``matrices [L, d_mlp, d_mlp]``."""
    squares = ((matrices @ within) * matrices).sum(dim=2).reshape(-1)
    return rotated_sums(first, matrices), squares


def rotated_sums(first: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    """``Σỹ [L * d_mlp]`` of the directions ``ỹ_l = Q_l y_l`` of ``L`` consecutive layers from
    the shifted sums ``first [L * d_mlp]`` and ``matrices [L, d_mlp, d_mlp]``."""
    layers, d_mlp = matrices.shape[0], matrices.shape[1]
    return torch.einsum("lij,lj->li", matrices, first.view(layers, d_mlp)).reshape(-1)


def rotated_cross(
    cross: torch.Tensor, matrices: torch.Tensor, candidates: torch.Tensor
) -> torch.Tensor:
    """``[n_x, k]`` float64: ``Σ x_i ỹ_j = q_j · Σ x_i y_l`` for each x row's candidate
    rotated directions ``candidates [n_x, k]`` (indices ``layer * d_mlp + j`` into the
    partner), from the shifted cross sums ``cross [n_x, layers * d_mlp]`` with the partner
    and its ``matrices [layers, d_mlp, d_mlp]``."""
    n_layers, d_mlp = matrices.shape[0], matrices.shape[1]
    cross = cross.view(-1, n_layers, d_mlp)
    layer, row = candidates // d_mlp, candidates % d_mlp
    rows = torch.arange(cross.shape[0], device=cross.device)[:, None]  # on cross's device
    directions = matrices[layer, row]  # [n_x, k, d_mlp]
    return (cross[rows, layer] * directions).sum(dim=2)


def _rotated_of(key: str, rotations: Mapping) -> tuple[str, int]:
    """``(partner, draw)`` of a ``rotated_key``."""
    for partner, matrices in rotations.items():
        for draw in range(len(matrices)):
            if rotated_key(partner, draw) == key:
                return partner, draw
    raise KeyError(key)


@torch.no_grad()
def accumulate_blocks(
    models: Mapping[str, object],
    tokens: np.ndarray,
    excluded_ids: np.ndarray,
    batch_size: int,
    sums: CandidateSums,
    rotations: Mapping[str, torch.Tensor],
    n_layers: int,
    *,
    device: str = "cpu",
    progress: bool = True,
) -> CandidateSums:
    """One pass of ``tokens [sequences, pos]`` through every model (``{name: model}``),
    block by block (the ``sums.blocks`` blocks of ``block_bounds``; no batch straddles two),
    adding each block's kept post-activation sums to ``sums`` (links of ``sums``; rotated
    directions from ``rotations[partner] [draws, layers, d_mlp, d_mlp]``); every model has
    ``n_layers`` layers."""
    names = list(models)
    d_mlp = sums.first[names[0]].shape[1] // n_layers
    rotations = {p: torch.as_tensor(m, dtype=torch.float64) for p, m in rotations.items()}
    bounds = block_bounds(len(tokens), sums.blocks)
    total = sum(-(-(stop - start) // batch_size) for start, stop in bounds)
    bar = tqdm(total=total, desc="uncertainty", disable=not progress)
    shifts: dict[str, torch.Tensor] = {}
    for block, (start, stop) in enumerate(bounds):
        products = BlockProducts(names, n_layers, d_mlp, shifts)
        for values in batch_values(models, tokens[start:stop], excluded_ids, batch_size, device):
            products.add({name: value.cpu() for name, value in values.items()})
            bar.update()
        sums.add_totals(block, products.totals(sums.candidates, rotations))
    bar.close()
    return sums


def batch_values(
    models: Mapping[str, object],
    tokens: np.ndarray,
    excluded_ids: np.ndarray,
    batch_size: int,
    device: str = "cpu",
) -> Iterator[dict[str, torch.Tensor]]:
    """Per batch of ``batch_size`` sequences of ``tokens [sequences, pos]`` (batches numbered
    from 0), every model's kept post-activations ``{name: [kept tokens, N]}`` on ``device``."""
    for number, batch in iter_batches(tokens, batch_size):
        mask = kept_mask(batch, excluded_ids)
        yield {
            name: kept_activations(model, name, batch, mask, number, device=device)["post"]
            for name, model in models.items()
        }
