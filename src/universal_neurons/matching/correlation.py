"""Exact streaming cross-covariance of two sets of neurons, and the maximum correlation.

``CrossMoments`` holds the sufficient statistics of the Pearson correlation between
every neuron of side x (``[n_x]``) and every neuron of side y (``[n_y]``) over a stream
of token positions: count, means, sums of squared deviations and the centred
cross-product matrix ``C = Σ (x-μx)(y-μy)ᵀ`` (``[n_x, n_y]``). Accumulators are float64.
Each batch is reduced to its own statistics (centred on the batch mean, the product in
float32, float64 or bfloat16 inputs with float32 accumulation) and merged exactly with
Chan et al.'s pairwise update::

    C ← C_A + C_B + (n_A n_B / (n_A + n_B)) (μx_A − μx_B)(μy_A − μy_B)ᵀ

so two accumulators over disjoint token shards merge to the statistics of the union,
whatever the split (``merge``), and blocks of neurons are simply independent
accumulators. A neuron with zero variance ("dead") has no correlation: NaN, never 0.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from universal_neurons.config import PRODUCTS, Products
from universal_neurons.errors import MissingInputError, UserError
from universal_neurons.matching.moments import trivial_merge

Batch = torch.Tensor | np.ndarray
"""Activations of one batch: ``[tokens, neurons]``."""


def _as_tensor(values: torch.Tensor | np.ndarray) -> torch.Tensor:
    tensor = torch.as_tensor(values)
    if tensor.ndim != 2:
        raise ValueError(
            f"activations: expected [tokens, neurons], got shape {tuple(tensor.shape)}"
        )
    return tensor


class _Scratch:
    """Work buffers reused from one batch to the next, by name.

    A fresh buffer of tens of MB costs a page fault per 4 kB page on the CPU (the allocator
    hands large blocks back to the system), which took a third of the update's time at
    2,048 neurons; the CUDA allocator caches blocks itself, so only CPU buffers are kept.
    """

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device) -> torch.Tensor:
        """An uninitialised ``shape`` buffer (the previous one of this name when it fits)."""
        device = torch.device(device)
        if device.type != "cpu":
            return torch.empty(shape, dtype=dtype, device=device)
        buffer = self._buffers.get(name)
        if buffer is None or buffer.shape != shape or buffer.dtype != dtype:
            self._buffers.pop(name, None)  # free the old one before allocating the new one
            buffer = self._buffers[name] = torch.empty(shape, dtype=dtype)
        return buffer

    def clear(self) -> None:
        """Release every buffer (their memory goes back once nothing else holds them)."""
        self._buffers.clear()


SCRATCH = _Scratch()
"""The update's work buffers (``SCRATCH.clear()`` frees them after a pass)."""


def _product(xs: torch.Tensor, ys: torch.Tensor, products: Products) -> torch.Tensor:
    """``xsᵀ ys`` of ``xs [tokens, n_x]``, ``ys [tokens, n_y]`` in ``products`` precision:
    ``float64`` (exact reference), ``float32`` (CPU default) or ``bfloat16`` (inputs rounded
    to bfloat16, float32 accumulation and output: the tensor-core product on CUDA, emulated
    exactly elsewhere, since a product of two bfloat16 numbers is exact in float32)."""
    shape = (xs.shape[1], ys.shape[1])
    if products == "float64":
        return xs.T @ ys
    if products == "float32":
        return torch.mm(xs.T, ys, out=SCRATCH.get("product", shape, torch.float32, xs.device))
    if products == "bfloat16":
        x16, y16 = xs.to(torch.bfloat16).T.contiguous(), ys.to(torch.bfloat16)
        if xs.is_cuda:
            try:
                return torch.mm(x16, y16, out_dtype=torch.float32)
            except (RuntimeError, TypeError):  # older torch / backend without mm.dtype
                pass
        return torch.mm(x16.to(torch.float32), y16.to(torch.float32))
    raise ValueError(f"products: expected one of {', '.join(PRODUCTS)}, got {products!r}")


@dataclass(frozen=True)
class _ShiftedBatch:
    """One side of a batch shifted by a fixed ``shift [n]``: ``values = x - shift``
    ``[tokens, n]`` (working precision) and its column sums / sums of squares (float64)."""

    shift: torch.Tensor
    values: torch.Tensor
    sums: torch.Tensor
    squares: torch.Tensor


def _first_shift(x: torch.Tensor, work: torch.dtype) -> torch.Tensor:
    """The shift of a first batch ``x [tokens, n]``: its mean per column, computed as
    ``x[0] + mean(x - x[0])`` so that a constant column's shift is exactly its value."""
    first = x[0].to(work)
    return first + (x.to(work) - first).mean(dim=0)


def _column_squares(values: torch.Tensor, chunk_elements: int = 2**18) -> torch.Tensor:
    """Σ values² per column of ``values [tokens, n]``. On the CPU a few rows at a time (small
    temporaries: ``torch.linalg.vector_norm`` over dim 0 ran at a fifth of this speed); on
    CUDA in one kernel (its allocator caches the temporary)."""
    if values.device.type != "cpu":
        return values.square().sum(dim=0)
    rows = max(1, chunk_elements // max(1, values.shape[1]))
    total = torch.zeros(values.shape[1], dtype=values.dtype, device=values.device)
    for chunk in values.split(rows):
        total.add_((chunk * chunk).sum(dim=0))
    return total


def _shifted(x: torch.Tensor, shift: torch.Tensor, name: str, work: torch.dtype) -> _ShiftedBatch:
    """``x [tokens, n]`` minus ``shift [n]`` (cast to ``work``) into a reused buffer, with its
    column sums and sums of squares (computed in ``work``, returned in float64)."""
    shift = shift.to(work)
    values = SCRATCH.get(name, tuple(x.shape), work, x.device)
    torch.sub(x.to(work), shift, out=values)
    return _ShiftedBatch(
        shift=shift.to(torch.float64),
        values=values,
        sums=values.sum(dim=0).to(torch.float64),
        squares=_column_squares(values).to(torch.float64),
    )


@dataclass(frozen=True)
class CrossMoments:
    """Sufficient statistics of the correlations between neurons x and neurons y.

    ``count``: token positions seen; ``mean_x [n_x]``, ``mean_y [n_y]``;
    ``m2_x [n_x]``, ``m2_y [n_y]``: Σ(x-μ)²; ``cxy [n_x, n_y]``: Σ(x-μx)(y-μy)ᵀ.
    All tensors float64 on one device (the accumulator's device).
    """

    count: int
    mean_x: torch.Tensor
    mean_y: torch.Tensor
    m2_x: torch.Tensor
    m2_y: torch.Tensor
    cxy: torch.Tensor

    @classmethod
    def empty(cls, n_x: int, n_y: int, device: str | torch.device = "cpu") -> CrossMoments:
        """Statistics of no token position: ``[n_x]`` / ``[n_y]`` / ``[n_x, n_y]`` zeros."""

        def zeros(*shape: int) -> torch.Tensor:
            return torch.zeros(*shape, dtype=torch.float64, device=device)

        return cls(0, zeros(n_x), zeros(n_y), zeros(n_x), zeros(n_y), zeros(n_x, n_y))

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_x, n_y)``."""
        return int(self.mean_x.shape[0]), int(self.mean_y.shape[0])

    @classmethod
    def of_batch(cls, x: Batch, y: Batch, products: Products = "float32") -> CrossMoments:
        """Statistics of one batch: ``x [tokens, n_x]`` and ``y [tokens, n_y]`` (same tokens);
        the cross-product in ``products`` precision (see ``update``)."""
        x, y = _as_tensor(x), _as_tensor(y)
        return cls.empty(x.shape[1], y.shape[1], x.device).update(x, y, products)

    def merge(self, other: CrossMoments, inplace: bool = False) -> CrossMoments:
        """Statistics of both streams together (Chan's exact pairwise merge, float64).

        ``inplace=True`` reuses ``self``'s cross-product matrix (no copy of ``[n_x, n_y]``);
        ``self`` must then not be used any more.
        """
        if self.shape != other.shape:
            raise ValueError(f"cannot merge statistics of shape {self.shape} and {other.shape}")
        if (done := trivial_merge(self, other)) is not None:
            return done
        na, nb = float(self.count), float(other.count)
        n = na + nb
        dx = other.mean_x - self.mean_x
        dy = other.mean_y - self.mean_y
        cxy = self.cxy if inplace else self.cxy.clone()
        cxy.add_(other.cxy.to(cxy.device)).addr_(dx, dy, alpha=na * nb / n)
        return CrossMoments(
            count=self.count + other.count,
            mean_x=self.mean_x + dx * (nb / n),
            mean_y=self.mean_y + dy * (nb / n),
            m2_x=self.m2_x + other.m2_x + dx * dx * (na * nb / n),
            m2_y=self.m2_y + other.m2_y + dy * dy * (na * nb / n),
            cxy=cxy,
        )

    def update(self, x: Batch, y: Batch, products: Products = "float32") -> CrossMoments:
        """Merge one batch ``x [tokens, n_x]``, ``y [tokens, n_y]``; returns the merged
        statistics (``self``'s cross-product matrix is reused: do not use ``self`` after).

        Each side is shifted by a fixed point close to its mean, ``s``: the running mean
        (float64 rounded to the working precision), or when nothing has been seen yet the
        batch's own mean (``_first_shift``: a constant neuron shifts to exactly 0 and stays
        dead). The shift matters for bfloat16 products, whose rounding is relative to the
        shifted values: the first row instead of the mean gave 30x the error.
        One product ``P = Σ (x-s_x)(y-s_y)ᵀ`` in ``products`` precision (``float32`` on the
        CPU, ``bfloat16`` inputs with float32 accumulation on CUDA, ``float64`` for a
        reference) is then the whole cost; with the shifted column sums ``S`` the batch's
        centred cross-product is ``P - S_x S_yᵀ / b`` and Chan's merge adds
        ``(n_A b / n) (μ_batch,x - μ_A,x)(μ_batch,y - μ_A,y)ᵀ``: both rank-one terms go into
        the float64 accumulator in one pass. The shift keeps ``S`` small, so nothing cancels
        beyond float32 rounding of the batch's own spread.
        """
        x, y = self._batch(x, y)
        b = float(x.shape[0])
        if b == 0:
            return self
        work = torch.float64 if products == "float64" else torch.float32
        side_x = _shifted(x, self.mean_x if self.count else _first_shift(x, work), "x", work)
        side_y = _shifted(y, self.mean_y if self.count else _first_shift(y, work), "y", work)
        n_a, n = float(self.count), self.count + b
        batch_mean_x = side_x.shift + side_x.sums / b
        batch_mean_y = side_y.shift + side_y.sums / b
        dx, dy = batch_mean_x - self.mean_x, batch_mean_y - self.mean_y
        product = _product(side_x.values, side_y.values, products)
        self._accumulate(product)
        rank_two = (
            torch.stack([side_x.sums, dx * (n_a * b / n)], dim=1),
            torch.stack([-side_y.sums / b, dy], dim=0),
        )
        self.cxy.addmm_(*rank_two)
        return CrossMoments(
            count=self.count + int(b),
            mean_x=self.mean_x + dx * (b / n),
            mean_y=self.mean_y + dy * (b / n),
            m2_x=self.m2_x + (side_x.squares - side_x.sums**2 / b) + dx * dx * (n_a * b / n),
            m2_y=self.m2_y + (side_y.squares - side_y.sums**2 / b) + dy * dy * (n_a * b / n),
            cxy=self.cxy,
        )

    def _batch(self, x: Batch, y: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Check one batch against the statistics' shape; both sides on their device."""
        x, y = _as_tensor(x).to(self.cxy.device), _as_tensor(y).to(self.cxy.device)
        if x.shape[0] != y.shape[0]:
            raise ValueError(
                f"activations: x has {x.shape[0]} tokens but y has {y.shape[0]}; they must match"
            )
        if (x.shape[1], y.shape[1]) != self.shape:
            raise ValueError(
                f"activations: batch of {x.shape[1]} x {y.shape[1]} neurons for statistics of "
                f"{self.shape[0]} x {self.shape[1]}"
            )
        return x, y

    def _accumulate(self, product: torch.Tensor, chunk_elements: int = 2**20) -> None:
        """Add a batch's product ``[n_x, n_y]`` (float32 or float64) to the float64 ``cxy``
        in place. On the CPU a float32 product is widened a few rows at a time into a small
        reused buffer first (an in-place add of mixed dtypes there allocates a float64
        temporary of the whole matrix); CUDA's kernel widens as it adds."""
        if product.dtype == torch.float64 or product.device.type != "cpu":
            self.cxy.add_(product)
            return
        n_y = product.shape[1]
        rows = max(1, chunk_elements // max(1, n_y))
        wide = SCRATCH.get("product64", (rows, n_y), torch.float64, product.device)
        for start in range(0, product.shape[0], rows):
            part = product[start : start + rows]
            self.cxy[start : start + len(part)].add_(wide[: len(part)].copy_(part))

    def var_x(self) -> torch.Tensor:
        """Population variance of each x neuron ``[n_x]``."""
        return self.m2_x / self.count

    def var_y(self) -> torch.Tensor:
        """Population variance of each y neuron ``[n_y]``."""
        return self.m2_y / self.count

    def covariance(self) -> torch.Tensor:
        """Population cross-covariance ``[n_x, n_y]``."""
        return self.cxy / self.count

    def correlation(self, dead_variance: float = 0.0) -> torch.Tensor:
        """Pearson correlation ``[n_x, n_y]`` (float64); NaN in rows/columns of dead neurons.

        A neuron is dead when its variance is <= ``dead_variance``.
        """
        return correlation_from_covariance(
            self.cxy / self.count, self.var_x(), self.var_y(), dead_variance
        )

    # --- files: one safetensors file per accumulator, mergeable across shards ---------------

    def save(self, path: str | Path, metadata: dict | None = None) -> None:
        """Write the statistics to ``path`` (safetensors, float64; ``count`` in the metadata).

        The metadata is one JSON string under one key: safetensors writes a metadata map in
        arbitrary order, so several keys would make the bytes (and DVC's hash) differ between
        runs of the same computation.
        """
        from safetensors.torch import save_file

        tensors = {
            "mean_x": self.mean_x,
            "mean_y": self.mean_y,
            "m2_x": self.m2_x,
            "m2_y": self.m2_y,
            "cxy": self.cxy,
        }
        meta = {
            "statistics": json.dumps({"count": self.count, "info": metadata or {}}, sort_keys=True)
        }
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path), meta)

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> tuple[CrossMoments, dict]:
        """Read statistics written by ``save``; returns ``(statistics, metadata info)``."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise MissingInputError(f"{path}: statistics file not found (run correlate)")
        with safe_open(str(path), framework="pt", device=device) as handle:
            meta = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
        if "statistics" not in meta:
            raise UserError(f"{path}: not a CrossMoments file (no statistics in metadata)")
        header = json.loads(meta["statistics"])
        stats = cls(
            count=int(header["count"]),
            mean_x=tensors["mean_x"],
            mean_y=tensors["mean_y"],
            m2_x=tensors["m2_x"],
            m2_y=tensors["m2_y"],
            cxy=tensors["cxy"],
        )
        return stats, header["info"]


def correlation_from_covariance(
    cov: torch.Tensor, var_x: torch.Tensor, var_y: torch.Tensor, dead_variance: float = 0.0
) -> torch.Tensor:
    """``cov [n_x, n_y] / sqrt(var_x ⊗ var_y)`` in float64, NaN where either variance is dead."""
    sx = torch.where(var_x > dead_variance, var_x.sqrt(), torch.nan)
    sy = torch.where(var_y > dead_variance, var_y.sqrt(), torch.nan)
    return cov.to(torch.float64) / sx[:, None] / sy[None, :]


@dataclass(frozen=True)
class MaxCorrelation:
    """Per x neuron: the largest correlation with any y neuron, and where it is.

    ``max_corr [n_x]`` float64 (NaN for a dead x neuron, or if every y neuron is dead);
    ``argmax [n_x]`` int64 index into y's neurons (-1 where ``max_corr`` is NaN).
    """

    max_corr: np.ndarray
    argmax: np.ndarray


def row_max(corr: torch.Tensor) -> MaxCorrelation:
    """Row-wise maximum of a correlation matrix ``[n_x, n_y]`` ignoring NaN (dead) entries."""
    filled = torch.nan_to_num(corr, nan=-torch.inf)
    values, index = filled.max(dim=1)
    return finite_maxima(values, index)


def finite_maxima(values: torch.Tensor, index: torch.Tensor) -> MaxCorrelation:
    """``MaxCorrelation`` of maxima ``[n]`` and their argmax: NaN and -1 where no finite value
    was seen (a dead neuron, or no live partner)."""
    values = values.to(torch.float64).cpu().numpy()
    index = index.cpu().numpy().astype(np.int64)
    missing = ~np.isfinite(values)
    values[missing] = np.nan
    index[missing] = -1
    return MaxCorrelation(values, index)


def row_maxima(
    cxy: torch.Tensor,
    count: int,
    var_rows: torch.Tensor,
    var_cols: torch.Tensor,
    dead_variance: float,
    block: int,
) -> MaxCorrelation:
    """Row maxima of the correlation of the cross-product sums ``cxy [rows, cols]`` over
    ``count`` positions, ``block`` rows at a time."""
    parts = [
        row_max(
            correlation_from_covariance(
                cxy[start : start + block] / count,
                var_rows[start : start + block],
                var_cols,
                dead_variance,
            )
        )
        for start in range(0, cxy.shape[0], block)
    ]
    return MaxCorrelation(
        np.concatenate([p.max_corr for p in parts]), np.concatenate([p.argmax for p in parts])
    )


def max_correlations(
    stats: CrossMoments, dead_variance: float = 0.0, block: int = 4096
) -> tuple[MaxCorrelation, MaxCorrelation]:
    """Both directions of a pair: per x neuron the max over y, per y neuron the max over x;
    ``block`` rows at a time, so that the correlation matrix is never held whole."""
    var_x, var_y = stats.var_x(), stats.var_y()
    forward = row_maxima(stats.cxy, stats.count, var_x, var_y, dead_variance, block)
    backward = row_maxima(stats.cxy.T, stats.count, var_y, var_x, dead_variance, block)
    return forward, backward
