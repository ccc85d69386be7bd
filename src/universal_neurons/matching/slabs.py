"""The uncertainty pass without full pair statistics: slabs of whole layers (SPEC "Uncertainty").

Above ``correlate.full_pairs_max_neurons`` correlate writes no ``[N, N]`` pair file, and the
block bootstrap (``resampling``) must find each neuron's candidates and its per-block sums
itself, without ever holding an ``[N, N]`` matrix. The work is cut into *slabs*: the neurons
of a few whole layers of one model x (rows ``r0:r1``, ``B`` neurons) against all ``N``
neurons of every other model of the group. Per slab:

1. candidates: one pass of correlate's machinery (``units.correlate_pass``, one unit per
   partner) gives the whole-set ``CrossMoments [B, N]``; ``resampling.side_candidates`` picks
   the ``k`` best partner neurons and rotated directions of each x neuron, as the full-pairs
   path picks them from the pair file (the x rows of a slab are whole rows of that matrix);
2. sums: a second pass, block by block, keeps the slab's shifted sums (``SlabProducts``:
   ``[B, N]`` per partner, the slab layers' ``[d_mlp, d_mlp]`` sums of products) and reduces
   them at the end of each block to the candidate sums of its rows and of x's rotated
   directions of its layers (``block_products.rotated_columns`` / ``rotated_cross``).

Every x neuron and every rotated direction lies in exactly one slab, so the slabs of every
model fill ``CandidateSums`` once. The rotation matrices (``[draws, layers, d_mlp, d_mlp]``
per model, 3.6 GB for GPT2-small and 4 draws) are memory maps in a scratch folder.
The slab's size follows the memory limit of ``resources.memory_limit``
(``UNIVERSAL_NEURONS_MEMORY_GB``, available memory, ulimit, cgroup): ``slab_layers``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from universal_neurons.errors import MissingInputError, UserError
from universal_neurons.matching.baseline import mixing_matrix
from universal_neurons.matching.block_products import batch_values, rotated_columns, rotated_cross
from universal_neurons.matching.resampling import (
    BlockTotals,
    CandidateSums,
    block_bounds,
    rotated_key,
    side_candidates,
)
from universal_neurons.matching.units import PassSettings, Unit, correlate_pass
from universal_neurons.resources import check_memory, memory_limit

ROTATED_ROWS = 256
"""x rows per chunk of a rotated cross reduction (``[rows, k, d_mlp]`` float64 at a time)."""


@dataclass(frozen=True)
class Slab:
    """Layers ``layers = (l0, l1)`` of model ``model`` (``d_mlp`` neurons each): its neurons
    ``rows = (l0 * d_mlp, l1 * d_mlp)`` in layer-major numbering."""

    model: str
    layers: tuple[int, int]
    d_mlp: int

    @property
    def rows(self) -> tuple[int, int]:
        """``(r0, r1)``: the slab's neurons of ``model``."""
        return self.layers[0] * self.d_mlp, self.layers[1] * self.d_mlp


def plan_slabs(names: list[str], n_layers: int, d_mlp: int, layers_per_slab: int) -> list[Slab]:
    """Every model's layers cut into slabs of ``layers_per_slab`` whole layers (the last one
    may be smaller), model by model in ``names`` order."""
    return [
        Slab(name, (start, min(start + layers_per_slab, n_layers)), d_mlp)
        for name in names
        for start in range(0, n_layers, layers_per_slab)
    ]


# --- memory ----------------------------------------------------------------------------------


def slab_memory(
    models: int, n_layers: int, d_mlp: int, layers: int, batch_tokens: int
) -> dict[str, tuple[str, int]]:
    """Bytes of one slab of ``layers`` layers, by part, as ``resources.check_memory`` takes
    them: per partner the float64 ``[B, N]`` sums, with the product of a batch and the
    candidate step's correlations and rotated correlations (four more ``[B, N]``); the
    activations of one batch of ``batch_tokens`` tokens of every model (float32, centred
    copies); the slab layers' ``[d_mlp, d_mlp]`` sums of products."""
    n, rows = n_layers * d_mlp, layers * d_mlp
    return {
        "slab sums": ("train.seeds (partners per slab)", ((models - 1) + 4) * 8 * rows * n),
        "batch products": ("train.seeds (partners per slab)", 12 * rows * n),
        "activations of one batch": ("analysis.batch_size", 8 * models * batch_tokens * n),
        "within-layer sums": ("uncertainty_resamples slab", 8 * layers * d_mlp * d_mlp),
    }


def candidate_sums_bytes(blocks: int, models: int, draws: int, n: int, k: int) -> int:
    """Bytes of the group's ``CandidateSums``: ``first`` and ``second [blocks, N]`` of every
    model and rotated key, ``cross [blocks, N, k]`` of every link (float64)."""
    keys = models * (1 + draws)
    links = models * (models - 1) * (1 + draws)
    return 8 * blocks * n * (2 * keys + links * k)


def slab_layers(
    n_layers: int, parts: Callable[[int], dict[str, tuple[str, int]]], fixed: dict
) -> int:
    """The most whole layers per slab whose ``parts(layers)`` and the ``fixed`` parts (the
    sums, the models, the process) fit in ``resources.memory_limit``; a ``MemoryLimitError``
    naming the largest part's parameter when not even one layer fits."""
    limit, _ = memory_limit()
    total = sum(size for _, size in fixed.values())
    for layers in range(n_layers, 0, -1):
        if total + sum(size for _, size in parts(layers).values()) <= limit:
            return layers
    check_memory({**fixed, **parts(1)}, "uncertainty_resamples with a slab of one layer")
    return 1


# --- inputs as memory maps -------------------------------------------------------------------


def mapped_npy(path: Path, stage: str) -> np.ndarray:
    """A ``.npy`` array written by ``stage`` as a copy-on-write memory map (read lazily,
    never written back), naming the file when it is missing or unreadable."""
    if not path.is_file():
        raise MissingInputError(f"{path}: file not found (run the {stage} stage first)")
    try:
        return np.load(path, mmap_mode="c", allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        reason = " ".join(str(exc).split())[:160]
        raise UserError(f"{path}: not a readable .npy array ({reason}); rerun {stage}") from None


def mapped_rotation_draws(
    kind: str,
    partner_ids: Mapping[str, int],
    shape: tuple[int, int],
    draws: int,
    seed: int,
    folder: Path,
) -> dict[str, np.ndarray]:
    """Per model of ``partner_ids`` (``{name: its seed}``) the ``[draws, layers, d_mlp,
    d_mlp]`` float64 matrices of ``resampling.rotation_draws``, written layer by layer into
    ``folder/{name}.npy`` and returned as copy-on-write memory maps. ``shape``: ``(layers,
    d_mlp)``; ``folder`` is the caller's to remove."""
    folder.mkdir(parents=True, exist_ok=True)
    n_layers, d_mlp = shape
    mapped = {}
    for name, partner in partner_ids.items():
        path = folder / f"{name}.npy"
        out = np.lib.format.open_memmap(path, "w+", np.float64, (draws, n_layers, d_mlp, d_mlp))
        for draw in range(draws):
            for layer in range(n_layers):
                out[draw, layer] = mixing_matrix(kind, d_mlp, seed, partner, draw, layer)
        out.flush()
        del out
        mapped[name] = np.load(path, mmap_mode="c")
    return mapped


# --- candidates ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CandidateInputs:
    """What the candidate step needs besides the models: ``within[m]`` ``[layers, d_mlp,
    d_mlp]`` (collect's within-layer covariances), ``rotations[m]`` ``[draws, layers, d_mlp,
    d_mlp]``, ``k`` candidates, the ``dead_variance``."""

    within: Mapping[str, np.ndarray]
    rotations: Mapping[str, np.ndarray]
    k: int
    dead_variance: float = 0.0


def slab_candidates(
    slab: Slab,
    models: Mapping[str, object],
    analysis_set: tuple[np.ndarray, np.ndarray],
    settings: PassSettings,
    inputs: CandidateInputs,
) -> dict[tuple[str, str], torch.Tensor]:
    """``{(x, target): candidates [B, k]}`` of the slab's rows against every other model of
    ``models`` and its rotated directions: one ``correlate_pass`` over the whole analysis set
    ``(tokens [sequences, pos], excluded ids)``, one ``[B, N]`` unit per partner."""
    tokens = analysis_set[0]
    partners = [name for name in models if name != slab.model]
    units = [Unit(slab.model, p, slab.rows, (0, len(tokens))) for p in partners]
    stats, _ = correlate_pass(units, dict(models), analysis_set, settings)
    links = {}
    for unit in units:
        pair = stats.pop(unit)  # one partner's [B, N] at a time beside the rest
        statistics = (
            pair.covariance().cpu(),
            pair.correlation(inputs.dead_variance).cpu(),
            pair.var_x().cpu(),
        )
        within, rotations = inputs.within[unit.b], inputs.rotations[unit.b]
        links |= side_candidates(
            slab.model, unit.b, statistics, within, rotations, inputs.k, inputs.dead_variance
        )
    return links


def slab_candidate_links(
    slabs: list[Slab],
    models: Mapping[str, object],
    analysis_set: tuple[np.ndarray, np.ndarray],
    settings: PassSettings,
    inputs: CandidateInputs,
) -> dict[tuple[str, str], torch.Tensor]:
    """``{(model, target): candidates [N, k]}`` of the whole group, slab after slab (the
    slabs of a model in layer order, as ``plan_slabs`` gives them): what
    ``resampling.candidate_links`` picks from full pair statistics."""
    parts: dict[tuple[str, str], list[torch.Tensor]] = {}
    for slab in slabs:
        for link, candidates in slab_candidates(
            slab, models, analysis_set, settings, inputs
        ).items():
            parts.setdefault(link, []).append(candidates)
    return {link: torch.cat(rows) for link, rows in parts.items()}


# --- per-block sums ----------------------------------------------------------------------------


class SlabProducts:
    """The shifted sums of one block for one slab: ``count``; of x's slab neurons ``first
    [B]``, ``second [B]`` and ``within [layers of the slab, d_mlp, d_mlp]``; per partner
    ``cross [B, N]`` = Σ(x − shift)(y − shift)ᵀ; all float64 on ``device``. ``shifts``: per
    model ``[N]``, the values subtracted before any product (kept across blocks and slabs:
    a model's first batch sets its shift, as in ``block_products.BlockProducts``)."""

    def __init__(self, slab: Slab, partners: list[str], n: int, shifts: dict, device="cpu"):
        (r0, r1), (l0, l1) = slab.rows, slab.layers
        self.slab, self.partners, self.shifts = slab, partners, shifts
        self.count = 0

        def zeros(*shape: int) -> torch.Tensor:
            return torch.zeros(*shape, dtype=torch.float64, device=device)

        self.first, self.second = zeros(r1 - r0), zeros(r1 - r0)
        self.within = zeros(l1 - l0, slab.d_mlp, slab.d_mlp)
        self.cross = {partner: zeros(r1 - r0, n) for partner in partners}

    def _centred(self, name: str, value: torch.Tensor) -> torch.Tensor:
        """``value [tokens, N]`` minus the model's shift (set by its first batch)."""
        if name not in self.shifts:
            self.shifts[name] = value.to(torch.float64).mean(dim=0)
        return value - self.shifts[name].to(value.device, value.dtype)

    @torch.no_grad()
    def add(self, values: Mapping[str, torch.Tensor]) -> None:
        """Add one batch: ``values[name] [tokens, N]`` of every model (same tokens);
        products in the values' dtype, summed into float64."""
        (r0, r1), (l0, l1) = self.slab.rows, self.slab.layers
        x = self._centred(self.slab.model, values[self.slab.model])[:, r0:r1]
        self.first += x.sum(dim=0, dtype=torch.float64)
        self.second += (x * x).sum(dim=0, dtype=torch.float64)
        layers = x.T.reshape(l1 - l0, self.slab.d_mlp, -1)  # [layers, d_mlp, tokens]
        self.within += (layers @ layers.transpose(1, 2)).to(torch.float64)
        self.count += int(x.shape[0])
        for partner in self.partners:
            y = self._centred(partner, values[partner])
            self.cross[partner] += (x.T @ y).to(torch.float64)

    def totals(self, links: Mapping, rotations: Mapping[str, torch.Tensor]) -> BlockTotals:
        """The block's ``BlockTotals`` of the slab (``rows``): x's columns and rotated
        directions of its layers, and x's rows of every link of ``links`` (``{(x, y key):
        candidates [N, k]}``); ``rotations[m] [draws, layers, d_mlp, d_mlp]`` float64."""
        x, (r0, r1), (l0, l1) = self.slab.model, self.slab.rows, self.slab.layers
        first, second = {x: self.first.cpu()}, {x: self.second.cpu()}
        for draw, matrices in enumerate(rotations[x]):
            key = rotated_key(x, draw)
            first[key], second[key] = rotated_columns(first[x], self.within.cpu(), matrices[l0:l1])
        rotated = {rotated_key(p, d): (p, d) for p in rotations for d in range(len(rotations[p]))}
        cross = {}
        for (model, y), candidates in links.items():
            if model != x:
                continue
            rows = torch.as_tensor(candidates[r0:r1], dtype=torch.int64)
            if y in self.cross:
                cross[(x, y)] = self.cross[y].cpu().gather(1, rows)
            else:
                partner, draw = rotated[y]
                cross[(x, y)] = _chunked_rotated_cross(
                    self.cross[partner], rotations[partner][draw], rows
                )
        return BlockTotals(self.count, first, second, cross, rows=(r0, r1))


def _chunked_rotated_cross(
    cross: torch.Tensor, matrices: torch.Tensor, candidates: torch.Tensor
) -> torch.Tensor:
    """``block_products.rotated_cross`` of ``cross [B, N]`` and ``candidates [B, k]``,
    ``ROTATED_ROWS`` rows at a time (``[rows, k, d_mlp]`` gathered directions)."""
    return torch.cat(
        [
            rotated_cross(
                cross[start : start + ROTATED_ROWS].cpu(),
                matrices,
                candidates[start : start + ROTATED_ROWS],
            )
            for start in range(0, cross.shape[0], ROTATED_ROWS)
        ]
    )


@torch.no_grad()
def accumulate_slabs(
    models: Mapping[str, object],
    analysis_set: tuple[np.ndarray, np.ndarray],
    settings: PassSettings,
    sums: CandidateSums,
    rotations: Mapping[str, np.ndarray],
    slabs: list[Slab],
    progress: bool = True,
) -> CandidateSums:
    """One pass of the analysis set ``(tokens [sequences, pos], excluded ids)`` per slab,
    block by block (``block_bounds`` of ``sums.blocks``), adding each block's slab sums to
    ``sums`` (its links; rotated directions from ``rotations[m] [draws, layers, d_mlp,
    d_mlp]``, arrays or memory maps). The kept positions are counted in the first slab."""
    tokens, excluded_ids = analysis_set
    names = list(models)
    n = sums.first[names[0]].shape[1]
    rotations = {m: torch.as_tensor(matrices) for m, matrices in rotations.items()}
    bounds = block_bounds(len(tokens), sums.blocks)
    batches = sum(-(-(stop - start) // settings.batch_size) for start, stop in bounds)
    bar = tqdm(total=len(slabs) * batches, desc="uncertainty slabs", disable=not progress)
    shifts: dict[str, torch.Tensor] = {}
    for number, slab in enumerate(slabs):
        partners = [name for name in names if name != slab.model]
        for block, (start, stop) in enumerate(bounds):
            products = SlabProducts(slab, partners, n, shifts, settings.device)
            for values in batch_values(
                models, tokens[start:stop], excluded_ids, settings.batch_size, settings.device
            ):
                products.add(values)
                bar.update()
            totals = products.totals(sums.candidates, rotations)
            sums.add_totals(block, totals if number == 0 else replace(totals, count=0))
    bar.close()
    return sums
