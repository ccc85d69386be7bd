"""The uncertainty pass without full pair statistics: slabs of whole layers (SPEC "Uncertainty").

Above ``correlate.full_pairs_max_neurons`` correlate never holds a pair's full statistics (so
it takes no candidate links, ``pair_reductions``), and the block bootstrap (``resampling``) must find each neuron's candidates and its per-block sums
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
   directions of its layers (``block_products.rotated_columns`` / ``rotated_cross``); for an
   analysis set of fewer positions than ``blocks × d_mlp`` the rotated directions' squares
   are summed token by token instead of from the ``[d_mlp, d_mlp]`` sums (``rotate_per_token``).

Every x neuron and every rotated direction lies in exactly one slab, so the slabs of every
model fill ``CandidateSums`` once. The rotation matrices (``[draws, layers, d_mlp, d_mlp]``
per model, 3.6 GB for GPT2-small and 4 draws) are memory maps in a scratch folder, copied
to the device one partner's draw at a time.

Everything ``[B, N]`` lives on the pass's device, as in correlate: per-batch products in
correlate's ``products`` precision (bf16 inputs on CUDA) summed into float64, the candidate
step's correlations and top-k, the block sums' gathers and rotations in float64. Only the
per-neuron results (``[B, k]`` candidates, ``[B]`` / ``[B, k]`` block totals) go to the
host. The slab's size follows ``device_memory_limit`` (on CUDA the GPU's memory, else
``resources.memory_limit``: available memory, ulimit, cgroup; never above
``UNIVERSAL_NEURONS_MEMORY_GB``): ``slab_layers``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from universal_neurons.config import Products
from universal_neurons.errors import MissingInputError, UserError
from universal_neurons.matching.baseline import mixing_matrix
from universal_neurons.matching.block_products import (
    batch_values,
    rotated_columns,
    rotated_cross,
    rotated_sums,
)
from universal_neurons.matching.correlation import SCRATCH
from universal_neurons.matching.correlation import _product as batch_product
from universal_neurons.matching.plan import cuda_memory
from universal_neurons.matching.resampling import (
    BlockTotals,
    CandidateSums,
    block_bounds,
    rotated_key,
    side_candidates,
)
from universal_neurons.matching.units import PassSettings, Unit, correlate_pass
from universal_neurons.resources import (
    MemoryLimitError,
    configured_memory_limit,
    format_bytes,
    memory_limit,
)

ROTATED_ROWS_CUDA = 256
"""x rows per chunk of a rotated cross reduction on a GPU (``[rows, k, d_mlp]`` float64)."""
ROTATED_CHUNK_BYTES_CPU = 3 * 2**20
"""Bytes of one ``[rows, k, d_mlp]`` float64 chunk of a rotated cross reduction on the CPU:
cache-sized (``benchmarks/uncertainty_slabs.py``: 256 rows of GPT-2's 3,072 took 6.7x longer,
mostly in page faults of the fresh 50 MB gathers; the rows are independent, so the result
is the same to the bit at any chunk size)."""


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
    """Bytes of one slab of ``layers`` layers on the pass's device, by part, as
    ``resources.check_memory`` takes them: per partner the float64 ``[B, N]`` sums, with the
    product of a batch and the candidate step's correlations and rotated correlations (four
    more ``[B, N]``); the activations of one batch of ``batch_tokens`` tokens of every model
    (float32, centred copies); the slab layers' ``[d_mlp, d_mlp]`` sums of products; one
    partner's rotation matrices of one draw (``[layers, d_mlp, d_mlp]`` float64, copied to
    the device; on the CPU read from the memory map)."""
    n, rows = n_layers * d_mlp, layers * d_mlp
    return {
        "slab sums": ("train.seeds (partners per slab)", ((models - 1) + 4) * 8 * rows * n),
        "batch products": ("train.seeds (partners per slab)", 12 * rows * n),
        "activations of one batch": ("analysis.batch_size", 8 * models * batch_tokens * n),
        "within-layer sums": ("uncertainty_resamples slab", 8 * layers * d_mlp * d_mlp),
        "rotation matrices of one draw": ("uncertainty.baseline_draws", 8 * n * d_mlp),
    }


def candidate_sums_bytes(blocks: int, models: int, draws: int, n: int, k: int) -> int:
    """Bytes of the group's ``CandidateSums`` (on the host): ``first`` and ``second [blocks,
    N]`` of every model and rotated key, ``cross [blocks, N, k]`` of every link (float64)."""
    keys = models * (1 + draws)
    links = models * (models - 1) * (1 + draws)
    return 8 * blocks * n * (2 * keys + links * k)


def device_memory_limit(device: str) -> tuple[int, str]:
    """``(bytes, what)`` the slabs may use on ``device``: on CUDA the GPU's memory, else what
    this process may use (``resources.memory_limit``); never more than
    ``UNIVERSAL_NEURONS_MEMORY_GB`` when it is set (as ``matching.plan.memory_limit``)."""
    if torch.device(device).type != "cuda":
        return memory_limit()
    configured = configured_memory_limit()
    return min([cuda_memory(device)] + ([configured] if configured else []))


def slab_layers(
    n_layers: int,
    parts: Callable[[int], dict[str, tuple[str, int]]],
    fixed: dict,
    limit: tuple[int, str] | None = None,
) -> int:
    """The most whole layers per slab whose ``parts(layers)`` and the ``fixed`` parts (e.g.
    the models, the process) fit in ``limit`` (``(bytes, what)``; default
    ``resources.memory_limit``); a ``MemoryLimitError`` naming the largest part's parameter
    when not even one layer fits."""
    limit = limit or memory_limit()
    total = sum(size for _, size in fixed.values())
    for layers in range(n_layers, 0, -1):
        if total + sum(size for _, size in parts(layers).values()) <= limit[0]:
            return layers
    parts_of_one = {**fixed, **parts(1)}
    need = sum(size for _, size in parts_of_one.values())
    largest = max(parts_of_one, key=lambda label: parts_of_one[label][1])
    cause, size = parts_of_one[largest]
    raise MemoryLimitError(
        f"{cause}: uncertainty_resamples with a slab of one layer needs about "
        f"{format_bytes(need)} ({largest}: {format_bytes(size)}), more than the "
        f"{format_bytes(limit[0])} of {limit[1]}; lower the parameter"
    )


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


def on_device(array, device: torch.device | str, dtype=torch.float64) -> torch.Tensor:
    """``array`` (numpy, a memory map or a tensor) as a ``dtype`` tensor on ``device`` (no
    copy where it already is one there)."""
    return torch.as_tensor(np.asarray(array) if not torch.is_tensor(array) else array).to(
        device, dtype
    )


def device_side_candidates(
    link: tuple[str, str], pair, inputs: CandidateInputs
) -> dict[tuple[str, str], torch.Tensor]:
    """``resampling.side_candidates`` of one slab against partner ``link[1]`` on the device
    of ``pair`` (the ``CrossMoments [B, N]``): ``{(x, target): candidates [B, k]}`` int64 on
    the host, the partner's ``k`` best neurons and per draw rotated directions."""
    (model, partner), dead = link, inputs.dead_variance
    statistics = (pair.covariance(), pair.correlation(dead), pair.var_x())
    within, rotations = inputs.within[partner], inputs.rotations[partner]
    links = side_candidates(model, partner, statistics, within, rotations, inputs.k, dead)
    return {key: candidates.cpu() for key, candidates in links.items()}


def slab_candidates(
    slab: Slab,
    models: Mapping[str, object],
    analysis_set: tuple[np.ndarray, np.ndarray],
    settings: PassSettings,
    inputs: CandidateInputs,
) -> dict[tuple[str, str], torch.Tensor]:
    """``{(x, target): candidates [B, k]}`` (host) of the slab's rows against every other
    model of ``models`` and its rotated directions: one ``correlate_pass`` over the whole
    analysis set ``(tokens [sequences, pos], excluded ids)``, one ``[B, N]`` unit per
    partner on ``settings.device``, reduced there (``device_side_candidates``)."""
    tokens = analysis_set[0]
    partners = [name for name in models if name != slab.model]
    units = [Unit(slab.model, p, slab.rows, (0, len(tokens))) for p in partners]
    stats, _ = correlate_pass(units, dict(models), analysis_set, settings)
    links = {}
    for unit in units:
        pair = stats.pop(unit)  # one partner's [B, N] at a time beside the rest
        links |= device_side_candidates((unit.a, unit.b), pair, inputs)
        del pair
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
    model ``[N]`` float64 on ``device``, the values subtracted before any product (kept
    across blocks and slabs: a model's first batch sets its shift, as in
    ``block_products.BlockProducts``). ``products``: the precision of each batch's cross
    products (``correlation._product``, as correlate: ``bfloat16`` inputs with float32
    accumulation on CUDA, ``float32`` on the CPU, ``float64`` for a reference).

    ``rotations``: x's matrices of the slab's layers ``[draws, layers of the slab, d_mlp,
    d_mlp]`` float64 (host or device) when the rotated directions' ``Σỹ²`` are summed token by
    token (``rotate_per_token``): then ``rotated_second [draws, B]`` = Σ (Q (x − shift))² in
    float64 replaces ``within``. One instance serves every block of its slab (``reset``)."""

    def __init__(
        self,
        slab: Slab,
        partners: list[str],
        n: int,
        shifts: dict,
        device="cpu",
        products: Products = "float32",
        rotations: torch.Tensor | None = None,
    ):
        (r0, r1), (l0, l1) = slab.rows, slab.layers
        self.slab, self.partners, self.shifts, self.products = slab, partners, shifts, products
        self.work = torch.float64 if products == "float64" else torch.float32
        self.rotations = rotations
        self.count = 0

        def zeros(*shape: int) -> torch.Tensor:
            return torch.zeros(*shape, dtype=torch.float64, device=device)

        self.first, self.second = zeros(r1 - r0), zeros(r1 - r0)
        self.within = zeros(l1 - l0, slab.d_mlp, slab.d_mlp) if rotations is None else None
        self.rotated_second = None if rotations is None else zeros(len(rotations), r1 - r0)
        self.cross = {partner: zeros(r1 - r0, n) for partner in partners}

    def reset(self) -> None:
        """Start the next block: every sum back to 0 in place (the shifts stay)."""
        self.count = 0
        sums = [self.first, self.second, *self.cross.values()]
        for total in sums + [t for t in (self.within, self.rotated_second) if t is not None]:
            total.zero_()

    def _centred(self, name: str, value: torch.Tensor) -> torch.Tensor:
        """``value [tokens, N]`` (the model's dtype) minus the model's shift (set by its first
        batch), in the working precision (float64 for float64 products, else float32, as
        correlate's ``_shifted``)."""
        if name not in self.shifts:
            self.shifts[name] = value.to(torch.float64).mean(dim=0)
        return value.to(self.work) - self.shifts[name].to(value.device, self.work)

    @torch.no_grad()
    def add(self, values: Mapping[str, torch.Tensor]) -> None:
        """Add one batch: ``values[name] [tokens, N]`` of every model (same tokens, on the
        sums' device); the cross products in ``products`` precision, the slab's own sums in
        the working precision (its rotated squares in float64), all summed into float64."""
        (r0, r1), (l0, l1) = self.slab.rows, self.slab.layers
        x = self._centred(self.slab.model, values[self.slab.model])[:, r0:r1]
        self.first += x.sum(dim=0, dtype=torch.float64)
        self.second += (x * x).sum(dim=0, dtype=torch.float64)
        if self.rotations is None:
            layers = x.T.reshape(l1 - l0, self.slab.d_mlp, -1)  # [layers, d_mlp, tokens]
            self.within += (layers @ layers.transpose(1, 2)).to(torch.float64)
        else:
            self._add_rotated_squares(x)
        self.count += int(x.shape[0])
        for partner in self.partners:
            y = self._centred(partner, values[partner])
            self.cross[partner] += _widened(batch_product(x, y, self.products))

    def _add_rotated_squares(self, x: torch.Tensor) -> None:
        """Add Σ ỹ² of one batch's centred slab values ``x [tokens, B]`` for every draw:
        ``ỹ_l = Q_l x_l`` per token, in float64 (one draw's matrices on the device at a time)."""
        layers = x.shape[1] // self.slab.d_mlp
        wide = x.to(torch.float64).reshape(x.shape[0], layers, -1).transpose(0, 1)
        for draw, matrices in enumerate(self.rotations):
            q = on_device(matrices, x.device)  # [layers, d_mlp, d_mlp]
            rotated = wide @ q.transpose(1, 2)  # [layers, tokens, d_mlp]
            self.rotated_second[draw] += (rotated * rotated).sum(dim=1).reshape(-1)

    def totals(self, links: Mapping, rotations: Mapping[str, torch.Tensor]) -> BlockTotals:
        """The block's ``BlockTotals`` of the slab (``rows``), reduced on the sums' device and
        returned on the host: x's columns and rotated directions of its layers (``[B]``), and
        x's rows of every link of ``links`` (``{(x, y key): candidates [N, k]}``: ``[B,
        k]``); ``rotations[m] [draws, layers, d_mlp, d_mlp]`` float64 (host, copied to the
        device one draw at a time)."""
        x, (r0, r1) = self.slab.model, self.slab.rows
        first, second = self._rotated_columns(rotations[x])
        rotated = {rotated_key(p, d): (p, d) for p in rotations for d in range(len(rotations[p]))}
        cross = {}
        for (model, y), candidates in links.items():
            if model != x:
                continue
            rows = on_device(candidates[r0:r1], self.first.device, torch.int64)
            if y in self.cross:
                cross[(x, y)] = self.cross[y].gather(1, rows).cpu()
            else:
                partner, draw = rotated[y]
                matrices = on_device(rotations[partner][draw], self.first.device)
                cross[(x, y)] = _chunked_rotated_cross(self.cross[partner], matrices, rows).cpu()
                del matrices
        return BlockTotals(self.count, first, second, cross, rows=(r0, r1))

    def _rotated_columns(self, draws: torch.Tensor) -> tuple[dict, dict]:
        """``({key: Σ [B]}, {key: Σ² [B]})`` on the host of x's slab neurons and, per draw of
        ``draws [draws, layers, d_mlp, d_mlp]`` (x's matrices), its rotated directions of
        the slab's layers (``block_products.rotated_columns`` on the sums' device, or the
        token-by-token ``rotated_second``)."""
        x, (l0, l1) = self.slab.model, self.slab.layers
        first, second = {x: self.first.cpu()}, {x: self.second.cpu()}
        for draw, matrices in enumerate(draws):
            key = rotated_key(x, draw)
            layers = on_device(matrices[l0:l1], self.first.device)
            if self.rotated_second is None:
                sums, squares = rotated_columns(self.first, self.within, layers)
            else:
                sums, squares = rotated_sums(self.first, layers), self.rotated_second[draw]
            first[key], second[key] = sums.cpu(), squares.cpu()
        return first, second


def _widened(product: torch.Tensor) -> torch.Tensor:
    """A batch's float32 product ``[B, N]`` copied into a reused float64 buffer on the CPU, so
    that adding it to the float64 sums allocates nothing: a mixed-dtype in-place add there
    widens into a fresh ``[B, N]`` float64 temporary, a page fault per 4 kB page in every
    batch (``slab_memory`` counts the buffer under the batch products). The same sums: the
    widening is exact. On CUDA, or already float64, ``product`` itself."""
    if product.dtype == torch.float64 or product.device.type != "cpu":
        return product
    return SCRATCH.get("slab_product64", tuple(product.shape), torch.float64, "cpu").copy_(product)


def rotate_per_token(positions: int, blocks: int, d_mlp: int) -> bool:
    """Whether the rotated directions' ``Σỹ²`` are cheaper summed token by token (``ỹ = Q y``
    at every position: ``2 positions d_mlp²`` FLOPs per layer and draw) than from each
    block's ``Σ y yᵀ`` (``2 blocks d_mlp³``): when the analysis set's ``positions`` are fewer
    than ``blocks × d_mlp`` (a small set at real width; a large one takes the block sums).
    Both give the same sums up to rounding; the token path rotates in float64."""
    return positions < blocks * d_mlp


def rotated_rows(device: torch.device, k: int, d_mlp: int) -> int:
    """x rows per chunk of a rotated cross reduction on ``device``: ``ROTATED_ROWS_CUDA`` on
    a GPU, else as many as keep a ``[rows, k, d_mlp]`` float64 chunk within
    ``ROTATED_CHUNK_BYTES_CPU``."""
    if device.type == "cuda":
        return ROTATED_ROWS_CUDA
    return max(1, ROTATED_CHUNK_BYTES_CPU // (8 * k * d_mlp))


def _chunked_rotated_cross(
    cross: torch.Tensor, matrices: torch.Tensor, candidates: torch.Tensor
) -> torch.Tensor:
    """``block_products.rotated_cross`` of ``cross [B, N]`` and ``candidates [B, k]``,
    ``rotated_rows`` rows at a time (``[rows, k, d_mlp]`` gathered directions), on the
    device of its inputs: ``[B, k]`` float64 there."""
    step = rotated_rows(cross.device, candidates.shape[1], matrices.shape[1])
    return torch.cat(
        [
            rotated_cross(cross[start : start + step], matrices, candidates[start : start + step])
            for start in range(0, cross.shape[0], step)
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
    per_token: bool | None = None,
) -> CandidateSums:
    """One pass of the analysis set ``(tokens [sequences, pos], excluded ids)`` per slab,
    block by block (``block_bounds`` of ``sums.blocks``), adding each block's slab sums to
    ``sums`` (its links; rotated directions from ``rotations[m] [draws, layers, d_mlp,
    d_mlp]``, arrays or memory maps). The kept positions are counted in the first slab.
    ``per_token``: sum the rotated directions' squares token by token (default:
    ``rotate_per_token`` of the analysis set's positions)."""
    tokens, excluded_ids = analysis_set
    names = list(models)
    n = sums.first[names[0]].shape[1]
    rotations = {m: torch.as_tensor(matrices) for m, matrices in rotations.items()}
    bounds = block_bounds(len(tokens), sums.blocks)
    if per_token is None:
        per_token = rotate_per_token(int(tokens.size), sums.blocks, slabs[0].d_mlp)
    batches = sum(-(-(stop - start) // settings.batch_size) for start, stop in bounds)
    bar = tqdm(total=len(slabs) * batches, desc="uncertainty slabs", disable=not progress)
    shifts: dict[str, torch.Tensor] = {}
    for number, slab in enumerate(slabs):
        partners = [name for name in names if name != slab.model]
        own = rotations[slab.model][:, slab.layers[0] : slab.layers[1]] if per_token else None
        products = SlabProducts(slab, partners, n, shifts, settings.device, settings.products, own)
        for block, (start, stop) in enumerate(bounds):
            products.reset()
            for values in batch_values(
                models, tokens[start:stop], excluded_ids, settings.batch_size, settings.device
            ):
                products.add(values)
                bar.update()
            totals = products.totals(sums.candidates, rotations)
            sums.add_totals(block, totals if number == 0 else replace(totals, count=0))
    bar.close()
    SCRATCH.clear()  # the batch products' buffers
    return sums
