"""Exact streaming moments per neuron: count, mean, central moments up to the 4th, fraction > 0.

Batches are merged with the pairwise update of Chan et al. extended to third and
fourth moments (Pébay 2008), in float64, so the result equals a single pass over
all the data up to rounding, whatever the batch sizes. No activation is stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np
import torch


class _Counted(Protocol):
    count: int


Stream = TypeVar("Stream", bound=_Counted)


def trivial_merge(a: Stream, b: Stream) -> Stream | None:
    """The merge of two accumulators when one of them has seen nothing (the other one), else
    None: the merge has to be computed."""
    if b.count == 0:
        return a
    if a.count == 0:
        return b
    return None


@dataclass(frozen=True)
class StreamingMoments:
    """Moments of ``n_neurons`` variables over a stream of observations.

    ``count`` observations; ``mean``; ``m2, m3, m4``: sums of centred powers
    (Σ(x-μ)², Σ(x-μ)³, Σ(x-μ)⁴); ``positive``: how many observations were > 0.
    All arrays ``[n_neurons]`` float64.
    """

    count: int
    mean: np.ndarray
    m2: np.ndarray
    m3: np.ndarray
    m4: np.ndarray
    positive: np.ndarray

    @classmethod
    def empty(cls, n_neurons: int) -> StreamingMoments:
        """Moments of no observation: ``[n_neurons]`` zeros."""
        zeros = np.zeros(n_neurons, dtype=np.float64)
        return cls(0, zeros.copy(), zeros.copy(), zeros.copy(), zeros.copy(), zeros.copy())

    @classmethod
    def of_batch(cls, values: torch.Tensor | np.ndarray) -> StreamingMoments:
        """Moments of one batch ``[observations, n_neurons]`` (computed in float64)."""
        x = torch.as_tensor(values).to(torch.float64)
        n = x.shape[0]
        if n == 0:
            return cls.empty(x.shape[1])
        mean = x.mean(dim=0)
        centred = x - mean
        sq = centred * centred
        return cls(
            count=n,
            mean=mean.cpu().numpy(),
            m2=sq.sum(dim=0).cpu().numpy(),
            m3=(sq * centred).sum(dim=0).cpu().numpy(),
            m4=(sq * sq).sum(dim=0).cpu().numpy(),
            positive=(x > 0).sum(dim=0).to(torch.float64).cpu().numpy(),
        )

    def merge(self, other: StreamingMoments) -> StreamingMoments:
        """The moments of both streams together (exact pairwise merge)."""
        if (done := trivial_merge(self, other)) is not None:
            return done
        na, nb = float(self.count), float(other.count)
        n = na + nb
        delta = other.mean - self.mean
        d2, d3, d4 = delta * delta, delta**3, delta**4
        m2 = self.m2 + other.m2 + d2 * na * nb / n
        m3 = (
            self.m3
            + other.m3
            + d3 * na * nb * (na - nb) / n**2
            + 3.0 * delta * (na * other.m2 - nb * self.m2) / n
        )
        m4 = (
            self.m4
            + other.m4
            + d4 * na * nb * (na * na - na * nb + nb * nb) / n**3
            + 6.0 * d2 * (na * na * other.m2 + nb * nb * self.m2) / n**2
            + 4.0 * delta * (na * other.m3 - nb * self.m3) / n
        )
        return StreamingMoments(
            count=self.count + other.count,
            mean=self.mean + delta * nb / n,
            m2=m2,
            m3=m3,
            m4=m4,
            positive=self.positive + other.positive,
        )

    def update(self, values: torch.Tensor | np.ndarray) -> StreamingMoments:
        """Merge a batch ``[observations, n_neurons]``; returns the merged moments."""
        return self.merge(StreamingMoments.of_batch(values))

    @property
    def var(self) -> np.ndarray:
        """Population variance (divides by count)."""
        return self.m2 / self.count

    @property
    def skew(self) -> np.ndarray:
        """Standardised third moment; NaN where the variance is 0."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.m2 > 0, np.sqrt(self.count) * self.m3 / self.m2**1.5, np.nan)

    @property
    def kurt(self) -> np.ndarray:
        """Standardised fourth moment, non-excess (a Gaussian gives 3); NaN where the variance is 0."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.m2 > 0, self.count * self.m4 / self.m2**2, np.nan)

    @property
    def sparsity(self) -> np.ndarray:
        """Fraction of observations > 0 (the paper's activation frequency)."""
        return self.positive / self.count
