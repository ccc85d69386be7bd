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

from universal_neurons.analysis.moments import trivial_merge
from universal_neurons.config import PRODUCTS, Products
from universal_neurons.errors import MissingInputError, UserError

Batch = torch.Tensor | np.ndarray
"""Activations of one batch: ``[tokens, neurons]``."""


def _as_tensor(values: torch.Tensor | np.ndarray) -> torch.Tensor:
    tensor = torch.as_tensor(values)
    if tensor.ndim != 2:
        raise ValueError(
            f"activations: expected [tokens, neurons], got shape {tuple(tensor.shape)}"
        )
    return tensor


def _bf16_matmul_f32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` with bfloat16-rounded inputs and float32 accumulation/output.

    On CUDA this is the tensor-core product (``torch.mm(..., out_dtype=float32)``).
    Elsewhere it is emulated exactly: the inputs are rounded to bfloat16 and multiplied
    in float32 (a product of two bfloat16 numbers is exact in float32).
    """
    a16, b16 = a.to(torch.bfloat16), b.to(torch.bfloat16)
    if a.is_cuda:
        try:
            return torch.mm(a16, b16, out_dtype=torch.float32)
        except (RuntimeError, TypeError):  # older torch / backend without mm.dtype
            pass
    return torch.mm(a16.to(torch.float32), b16.to(torch.float32))


def centred_product(x: torch.Tensor, y: torch.Tensor, products: Products) -> torch.Tensor:
    """``xᵀ y`` of centred batches ``x [tokens, n_x]``, ``y [tokens, n_y]`` -> float64 ``[n_x, n_y]``.

    ``products``: ``float64`` (exact reference), ``float32`` (CPU default) or
    ``bfloat16`` (inputs rounded to bfloat16, float32 accumulation; the GPU path).
    """
    if products == "float64":
        return x.to(torch.float64).T @ y.to(torch.float64)
    if products == "float32":
        return (x.to(torch.float32).T @ y.to(torch.float32)).to(torch.float64)
    if products == "bfloat16":
        return _bf16_matmul_f32(x.to(torch.float32).T.contiguous(), y.to(torch.float32)).to(
            torch.float64
        )
    raise ValueError(f"products: expected one of {', '.join(PRODUCTS)}, got {products!r}")


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
        """Statistics of one batch: ``x [tokens, n_x]`` and ``y [tokens, n_y]`` (same tokens).

        Means and sums of squares are float64; the centred cross-product uses
        ``products`` (see ``centred_product``) and is returned in float64.
        """
        x, y = _as_tensor(x), _as_tensor(y)
        if x.shape[0] != y.shape[0]:
            raise ValueError(
                f"activations: x has {x.shape[0]} tokens but y has {y.shape[0]}; they must match"
            )
        n = int(x.shape[0])
        if n == 0:
            return cls.empty(x.shape[1], y.shape[1], x.device)
        # Per-batch elementwise work in the working precision (float32 unless float64 is
        # asked for): the batch is centred on its own mean, so the float32 rounding of the
        # mean and of the batch's sums of squares is relative (~1e-7), never cancellation;
        # across batches everything is merged in float64.
        # Shifting by the first row first makes a constant neuron centre to exactly 0
        # (so it stays dead, with variance exactly 0) and keeps the mean accurate.
        work = torch.float64 if products == "float64" else torch.float32
        # (One new buffer per side, the rest in place: large fresh buffers cost page faults.)
        x, y = x.to(work), y.to(work)
        shift_x, shift_y = x[0].clone(), y[0].clone()
        xc, yc = x - shift_x, y - shift_y
        mean_xs, mean_ys = xc.mean(dim=0), yc.mean(dim=0)
        xc.sub_(mean_xs)
        yc.sub_(mean_ys)
        return cls(
            count=n,
            mean_x=shift_x.to(torch.float64) + mean_xs.to(torch.float64),
            mean_y=shift_y.to(torch.float64) + mean_ys.to(torch.float64),
            m2_x=torch.linalg.vector_norm(xc, dim=0).to(torch.float64) ** 2,
            m2_y=torch.linalg.vector_norm(yc, dim=0).to(torch.float64) ** 2,
            cxy=centred_product(xc, yc, products),
        )

    def merge(self, other: CrossMoments, inplace: bool = False) -> CrossMoments:
        """Statistics of both streams together (Chan's exact pairwise merge, float64).

        ``inplace=True`` reuses ``self``'s cross-product matrix (no copy of ``[n_x, n_y]``);
        ``self`` must then not be used any more (``update`` does this).
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
        """Merge one batch ``x [tokens, n_x]``, ``y [tokens, n_y]``; returns the merged statistics."""
        device = self.cxy.device
        x, y = _as_tensor(x).to(device), _as_tensor(y).to(device)
        return self.merge(CrossMoments.of_batch(x, y, products), inplace=True)

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
