"""An exact activation histogram streamed over a token set, without storing activations.

``StreamingHistogram`` keeps per neuron bins of a power-of-two width on a fixed grid, so
that widening merges neighbouring bins exactly; the report's neuron pages draw it
(``outputs.neuron_page``), ``analysis.neuron_profile`` fills it in its activation pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HISTOGRAM_BINS = 512
DISPLAY_BINS = 80


@dataclass
class StreamingHistogram:
    """Exact histograms of ``n`` neurons' activations, streamed, without storing activations.

    Neuron n's bins have width ``width[n]`` (a power of two) with edges at integer multiples
    of it: ``counts[n, j]`` counts values in ``[(low[n] + j) w, (low[n] + j + 1) w)``. When a
    batch falls outside the ``bins`` bins, the width doubles (neighbouring bins merge exactly,
    the new edges being edges of the old bins) and the window moves until everything fits.
    """

    width: np.ndarray  # float64 [n]; 0 before the first value
    low: np.ndarray  # int64 [n]: bin index of counts[:, 0]
    counts: np.ndarray  # int64 [n, bins]

    @classmethod
    def empty(cls, n: int, bins: int = HISTOGRAM_BINS) -> StreamingHistogram:
        """No value seen yet: ``n`` neurons of ``bins`` bins each."""
        return cls(np.zeros(n), np.zeros(n, np.int64), np.zeros((n, bins), np.int64))

    def update(self, values: np.ndarray) -> None:
        """Add ``values`` ``[positions, n]`` (activations, any float dtype)."""
        values = np.asarray(values, dtype=np.float64)
        if values.shape[0] == 0:
            return
        lo, hi = values.min(axis=0), values.max(axis=0)
        self._start(lo, hi)
        self._fit(np.floor(lo / self.width).astype(np.int64), np.floor(hi / self.width))
        n, bins = self.counts.shape
        k = np.floor(values / self.width).astype(np.int64) - self.low  # [positions, n]
        flat = (k + np.arange(n) * bins).ravel()
        self.counts += np.bincount(flat, minlength=n * bins).reshape(n, bins)

    def _start(self, lo: np.ndarray, hi: np.ndarray) -> None:
        """First values of a neuron: a power-of-two width so the batch fills a quarter of the bins."""
        new = self.width == 0
        if not new.any():
            return
        span = hi[new] - lo[new]
        span = np.where(span > 0, span, np.maximum(np.abs(lo[new]), 1.0))
        self.width[new] = 2.0 ** np.ceil(np.log2(span / (self.counts.shape[1] / 4)))
        self.low[new] = np.floor(lo[new] / self.width[new]).astype(np.int64)

    def _fit(self, need_lo: np.ndarray, need_hi: np.ndarray) -> None:
        """Widen/move the bins of neurons whose bin range ``[need_lo, need_hi]`` does not fit."""
        bins = self.counts.shape[1]
        occupied = self.counts > 0
        used = occupied.any(axis=1)
        first = np.where(used, self.low + occupied.argmax(axis=1), need_lo)
        last = np.where(used, self.low + bins - 1 - occupied[:, ::-1].argmax(axis=1), need_hi)
        k_lo = np.minimum(first, need_lo).astype(np.int64)
        k_hi = np.maximum(last, need_hi).astype(np.int64)
        for n in np.nonzero((k_lo < self.low) | (k_hi >= self.low + bins))[0]:
            shift = 0
            while (int(k_hi[n]) >> shift) - (int(k_lo[n]) >> shift) + 1 > bins:
                shift += 1
            new_low = int(k_lo[n]) >> shift
            rows = np.nonzero(occupied[n])[0]
            rebinned = np.zeros(bins, np.int64)
            np.add.at(rebinned, ((self.low[n] + rows) >> shift) - new_low, self.counts[n, rows])
            self.counts[n], self.low[n] = rebinned, new_low
            self.width[n] *= 2.0**shift

    def display(self, n: int, max_bins: int = DISPLAY_BINS) -> tuple[np.ndarray, np.ndarray]:
        """Neuron ``n``'s histogram in at most ``max_bins`` bins: ``(edges [m + 1], counts [m])``.

        Groups of ``g`` stored bins merge exactly (edges at multiples of ``g * width``).
        """
        rows = np.nonzero(self.counts[n])[0]
        if len(rows) == 0:
            return np.zeros(1), np.zeros(0, np.int64)
        k = self.low[n] + np.arange(rows[0], rows[-1] + 1)
        group = -(-len(k) // max_bins)
        while k[-1] // group - k[0] // group + 1 > max_bins:  # groups aligned to multiples
            group += 1
        g0, g1 = k[0] // group, k[-1] // group
        counts = np.bincount(k // group - g0, self.counts[n, rows[0] : rows[-1] + 1])
        edges = np.arange(g0, g1 + 2) * group * self.width[n]
        return edges, counts.astype(np.int64)
