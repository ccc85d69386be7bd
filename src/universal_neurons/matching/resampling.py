"""How sure the universality test is: a block bootstrap of the analysis tokens (SPEC "Uncertainty").

The analysis sequences are cut into contiguous blocks. One pass over the token set keeps,
per block, only per-neuron sums: for every neuron i of a model and every partner "target"
(the partner's neurons, or one baseline draw's rotated directions of the partner), the
``k`` candidate columns j of highest whole-set correlation with i, and the sums
``Σx_i, Σx_i², Σy_j, Σy_j², Σx_i y_j`` over the block's kept positions (``CandidateSums``).
A resample weights the blocks with multinomial counts (drawn from a seed); its sums are the
weighted sums of the blocks' sums, which give every candidate correlation exactly, without a
second pass. Per resample, a neuron's excess is the mean over partners of its best candidate
correlation minus the mean over partners of its best rotated direction (baseline draw
``r mod draws``), and it is universal iff the excess exceeds τ.

The approximation: only the ``k`` best candidates of the whole set are followed, so a
resample's maximum is the maximum over those ``k``, not over all partner neurons (a partner
neuron outside the top ``k`` on the whole set that becomes the best in a resample is missed;
with a clear best partner this does not happen). Sums are taken of values shifted by the
first batch's mean of each column (float64), so the moments do not cancel.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from universal_neurons.errors import UserError
from universal_neurons.matching.baseline import mixed_variance, mixing_matrices

RELATIVE_DEAD = 1e-12
"""A resample's variance below this fraction of the column's mean square is zero (rounding of
a constant column), so the column is dead in that resample."""


def rotated_key(partner: str, draw: int) -> str:
    """The column key of baseline draw ``draw``'s rotated directions of ``partner``."""
    return f"{partner}~rotation{draw}"


@dataclass(frozen=True)
class BlockTotals:
    """One block's sums, as ``CandidateSums`` keeps them: ``count`` kept positions; per
    column key ``first [n]``, ``second [n]``; per link ``cross [n_x, k]`` (float64 tensors).
    ``rows``: ``(start, stop)`` when they cover only those columns and x rows (a slab of
    layers, ``matching.slabs``); None: all of them."""

    count: int
    first: dict[str, torch.Tensor]
    second: dict[str, torch.Tensor]
    cross: dict[tuple[str, str], torch.Tensor]
    rows: tuple[int, int] | None = None


class CandidateSums:
    """Per-block sums of columns, and of the products of x neurons with their candidates.

    ``columns``: ``{key: number of columns}`` (a model's neurons, or a partner's rotated
    directions of one draw); ``links``: ``{(x key, y key): candidates [n_x, k] int64}``, the y
    columns followed per x neuron. Holds ``count [blocks]`` (kept positions), per key
    ``first [blocks, n]`` = Σ(v − shift), ``second [blocks, n]`` = Σ(v − shift)² and per link
    ``cross [blocks, n_x, k]`` = Σ(x_i − shift_i)(y_j − shift_j), all float64.
    """

    def __init__(self, blocks: int, columns: Mapping[str, int], links: Mapping) -> None:
        self.blocks = blocks
        self.count = np.zeros(blocks, dtype=np.int64)
        self.shift: dict[str, torch.Tensor] = {}
        self.first = {
            key: torch.zeros(blocks, n, dtype=torch.float64) for key, n in columns.items()
        }
        self.second = {
            key: torch.zeros(blocks, n, dtype=torch.float64) for key, n in columns.items()
        }
        self.candidates = {link: torch.as_tensor(c, dtype=torch.int64) for link, c in links.items()}
        self.cross = {
            link: torch.zeros(blocks, c.shape[0], c.shape[1], dtype=torch.float64)
            for link, c in self.candidates.items()
        }

    def memory_bytes(self) -> int:
        """Bytes held by the sums."""
        tensors = [*self.first.values(), *self.second.values(), *self.cross.values()]
        return sum(t.numel() * 8 for t in tensors)

    @torch.no_grad()
    def add(self, block: int, values: Mapping[str, torch.Tensor], rows: int = 256) -> None:
        """Add one batch of block ``block``: ``values[key] [tokens, n]`` for every column key
        (same tokens). Products in the values' dtype (float32 from a model, float64 in
        tests), summed into float64; ``rows``: x neurons per product chunk (memory only)."""
        shifted = {}
        tokens = None
        for key, value in values.items():
            if key not in self.shift:
                self.shift[key] = value.to(torch.float64).mean(dim=0)
            centred = value - self.shift[key].to(value.dtype)
            tokens = centred.shape[0]
            self.first[key][block] += centred.sum(dim=0, dtype=torch.float64)
            self.second[key][block] += (centred * centred).sum(dim=0, dtype=torch.float64)
            shifted[key] = centred.T.contiguous()  # [n, tokens]: each column contiguous
        self.count[block] += tokens
        for (x_key, y_key), candidates in self.candidates.items():
            x, y = shifted[x_key], shifted[y_key]
            for start in range(0, x.shape[0], rows):
                part = candidates[start : start + rows]
                gathered = y[part]  # [rows, k, tokens]
                products = torch.bmm(gathered, x[start : start + rows, :, None])[..., 0]
                self.cross[(x_key, y_key)][block, start : start + rows] += products.to(
                    torch.float64
                )

    def add_totals(self, block: int, totals: BlockTotals) -> None:
        """Add a block's sums computed elsewhere (``BlockProducts.totals``), in the same
        shifted coordinates; those of a slab (``totals.rows``) into its columns and rows."""
        self.count[block] += totals.count
        part = slice(None) if totals.rows is None else slice(*totals.rows)
        for key, first in totals.first.items():
            self.first[key][block, part] += first
            self.second[key][block, part] += totals.second[key]
        for link, cross in totals.cross.items():
            self.cross[link][block, part] += cross

    def correlations(
        self, link: tuple[str, str], weights: np.ndarray, dead_variance: float = 0.0
    ) -> torch.Tensor:
        """``[resamples, n_x, k]`` float64: each x neuron's correlation with its candidates
        over the blocks weighted by ``weights [resamples, blocks]`` (NaN where either column is
        dead in that resample)."""
        x_key, y_key = link
        w = torch.as_tensor(np.asarray(weights, dtype=np.float64))
        count = w @ torch.as_tensor(self.count, dtype=torch.float64)  # [R]
        mean_x, var_x = self._moments(x_key, w, count, dead_variance)
        mean_y, var_y = self._moments(y_key, w, count, dead_variance)
        candidates = self.candidates[link]
        cross = torch.einsum("rb,bnk->rnk", w, self.cross[link]) / count[:, None, None]
        covariance = cross - mean_x[:, :, None] * mean_y[:, candidates]
        scale = var_x.sqrt()[:, :, None] * var_y.sqrt()[:, candidates]
        return covariance / scale

    def _moments(self, key: str, w: torch.Tensor, count: torch.Tensor, dead_variance: float):
        """Per resample ``(mean, variance)`` ``[resamples, n]`` of the shifted column ``key``;
        the variance NaN where the column is dead."""
        mean = (w @ self.first[key]) / count[:, None]
        square = (w @ self.second[key]) / count[:, None]
        variance = square - mean * mean
        dead = (variance <= dead_variance) | (variance <= RELATIVE_DEAD * square)
        return mean, torch.where(dead, torch.nan, variance)


def block_weights(blocks: int, resamples: int, seed: int) -> np.ndarray:
    """``[resamples, blocks]`` int64 bootstrap counts: each row draws ``blocks`` blocks with
    replacement (multinomial), from ``SeedSequence([seed])``."""
    rng = np.random.default_rng(np.random.SeedSequence([seed]))
    return rng.multinomial(blocks, np.full(blocks, 1.0 / blocks), size=resamples)


def draw_per_resample(draws: int, resamples: int) -> np.ndarray:
    """``[resamples, draws]``: resample r takes baseline draw ``r mod draws`` alone (weight 1),
    the draws in turn (the ``draw_weights`` of ``resampled_excess``)."""
    return np.eye(draws, dtype=np.int64)[np.arange(resamples) % draws]


def _best(correlations: torch.Tensor) -> torch.Tensor:
    """``[resamples, n]``: max over candidates ignoring NaN (NaN if all are NaN)."""
    finite = torch.nan_to_num(correlations, nan=-torch.inf).amax(dim=-1)
    return torch.where(torch.isinf(finite), torch.nan, finite)


def _mean_best(sums: CandidateSums, model: str, targets: list[str], weights, dead) -> np.ndarray:
    """``[resamples, n]`` float64: mean over ``targets`` of the best candidate correlation."""
    best = torch.stack([_best(sums.correlations((model, t), weights, dead)) for t in targets])
    return torch.nanmean(best, dim=0).numpy() if len(targets) else np.nan


def resampled_excess(
    sums: CandidateSums,
    model: str,
    partners: list[str],
    weights: np.ndarray,
    draw_weights: np.ndarray,
    dead_variance: float = 0.0,
) -> np.ndarray:
    """``[resamples, n]`` float64: each neuron of ``model``'s excess correlation in every
    resample: mean over ``partners`` of its best candidate correlation on the blocks weighted
    by ``weights [resamples, blocks]``, minus its baseline there: the mean over the draws,
    weighted by ``draw_weights [resamples, draws]`` (``draw_per_resample``: one draw each), of the
    mean over partners of its best rotated direction (keys ``rotated_key``). NaN where the
    neuron is dead in the resample."""
    draw_weights = np.asarray(draw_weights, dtype=np.float64)
    with np.errstate(invalid="ignore"), torch.no_grad():
        corr = _mean_best(sums, model, partners, weights, dead_variance)
        base = np.zeros_like(corr)
        for draw in range(draw_weights.shape[1]):
            rotated = [rotated_key(partner, draw) for partner in partners]
            best = _mean_best(sums, model, rotated, weights, dead_variance)
            base += draw_weights[:, draw, None] * best
        return corr - base / draw_weights.sum(axis=1, keepdims=True)


def whole_set_excess(
    sums: CandidateSums, model: str, partners: list[str], draws: int, dead_variance: float = 0.0
) -> np.ndarray:
    """``[n]``: the excess on the whole set (every block once), the baseline averaged over the
    ``draws`` draws, as the universality stage averages its baseline draws."""
    ones = np.ones((1, sums.blocks))
    return resampled_excess(sums, model, partners, ones, np.ones((1, draws)), dead_variance)[0]


def percentile_interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    """The ``confidence`` percentile interval ``(lo, hi)`` of ``values [resamples]`` (along
    the first axis for more dimensions)."""
    lo, hi = np.quantile(values, [(1 - confidence) / 2, (1 + confidence) / 2], axis=0)
    return lo, hi


def neuron_stability(
    excess: np.ndarray, threshold: float, confidence: float
) -> dict[str, np.ndarray]:
    """Per neuron from its resampled excess ``[resamples, n]``: ``stability`` (fraction of
    resamples with excess > ``threshold``; a resample where it is dead counts as not
    universal) and the percentile interval ``excess_lo``, ``excess_hi`` (NaN if ever dead)."""
    with np.errstate(invalid="ignore"):
        universal = excess > threshold
        lo, hi = percentile_interval(excess, confidence)
    return {"stability": universal.mean(axis=0), "excess_lo": lo, "excess_hi": hi}


def percent_per_resample(universal: np.ndarray, live: np.ndarray) -> np.ndarray:
    """``[resamples]``: percentage of the ``live [n]`` neurons universal in each resample
    (``universal [resamples, n]`` bool); NaN without live neurons."""
    if not live.any():
        return np.full(len(universal), np.nan)
    return 100.0 * universal[:, live].sum(axis=1) / live.sum()


def percent_intervals(
    universal: np.ndarray, layers: np.ndarray, live: np.ndarray, confidence: float
) -> dict:
    """The percentile intervals of % universal, whole model and per layer: ``{"lo", "hi",
    "median", "per_layer": [{"layer", "lo", "hi", "median"}, ...]}`` (None without live
    neurons). ``universal [resamples, n]``, ``layers [n]``, ``live [n]``."""

    def summary(mask: np.ndarray) -> dict:
        if not mask.any():
            return {"lo": None, "hi": None, "median": None}
        percent = percent_per_resample(universal, mask)
        lo, hi = percentile_interval(percent, confidence)
        return {"lo": float(lo), "hi": float(hi), "median": float(np.median(percent))}

    per_layer = [
        {"layer": int(layer), **summary(live & (layers == layer))} for layer in np.unique(layers)
    ]
    return {**summary(live), "per_layer": per_layer}


def top_candidates(correlation: torch.Tensor, k: int) -> torch.Tensor:
    """``[n_x, min(k, n_y)]`` int64: per row of ``correlation [n_x, n_y]``, the columns of the
    ``k`` largest values (NaN ranks last), best first."""
    values = torch.nan_to_num(correlation, nan=-torch.inf)
    return values.topk(min(k, values.shape[1]), dim=1).indices


def rotated_correlation(
    covariance: torch.Tensor,
    var_x: torch.Tensor,
    within: np.ndarray,
    matrices: np.ndarray,
    dead_variance: float = 0.0,
) -> torch.Tensor:
    """``[n_x, layers * d_mlp]`` float64: correlation of each x neuron with the rotated partner
    directions ``ỹ_l = Q_l y_l`` (SPEC "Random-rotation baseline"), from the cross-covariance
    ``[n_x, layers * d_mlp]``, x's variances ``[n_x]``, the partner's within-layer covariance
    ``within [layers, d_mlp, d_mlp]`` and ``matrices [layers, d_mlp, d_mlp]`` (host arrays or
    memory maps, copied one layer at a time to ``covariance``'s device, where it computes)."""
    device, d_mlp = covariance.device, matrices.shape[1]
    parts = []
    sx = torch.where(var_x > dead_variance, var_x.sqrt(), torch.nan)
    for layer in range(matrices.shape[0]):
        matrix = torch.as_tensor(np.asarray(matrices[layer], dtype=np.float64)).to(device)
        var_rotated = mixed_variance(matrix, within[layer], device)
        sy = torch.where(var_rotated > dead_variance, var_rotated.clamp_min(0).sqrt(), torch.nan)
        cov = covariance[:, layer * d_mlp : (layer + 1) * d_mlp].to(torch.float64) @ matrix.T
        parts.append(cov / sx[:, None] / sy[None, :])
    return torch.cat(parts, dim=1)


def rotate_layers(values: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    """``[tokens, layers * d_mlp]``: each layer's activations ``y_l`` rotated to ``Q_l y_l``
    (``values [tokens, layers * d_mlp]``, ``matrices [layers, d_mlp, d_mlp]`` in its dtype)."""
    d_mlp = matrices.shape[1]
    return torch.cat(
        [
            values[:, layer * d_mlp : (layer + 1) * d_mlp] @ matrix.T
            for layer, matrix in enumerate(matrices)
        ],
        dim=1,
    )


def block_bounds(sequences: int, blocks: int) -> list[tuple[int, int]]:
    """``[(start, stop)]`` of ``blocks`` contiguous blocks of sequences, sizes differing by at
    most one; a ``UserError`` naming ``uncertainty.blocks`` if there are fewer sequences."""
    if blocks > sequences:
        raise UserError(
            f"uncertainty.blocks: {blocks} blocks need at least as many analysis sequences, "
            f"but the analysis set has {sequences}"
        )
    edges = np.linspace(0, sequences, blocks + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]


def neuron_frame(
    layers: np.ndarray, indices: np.ndarray, dead: np.ndarray, columns: Mapping[str, Iterable]
) -> pd.DataFrame:
    """One row per neuron: ``layer, index, dead`` and ``columns`` (each ``[n]``)."""
    frame = pd.DataFrame({"layer": layers, "index": indices, "dead": dead})
    for name, values in columns.items():
        frame[name] = np.asarray(values)
    return frame


def rotation_draws(
    kind: str, names: list[str], partner_ids: Mapping[str, int], shape: tuple, draws: int, seed: int
) -> dict[str, np.ndarray]:
    """Per model ``[draws, layers, d_mlp, d_mlp]`` float64: the baseline matrices of draws
    ``0 .. draws-1`` (``baseline.mixing_matrices``: the same as the baseline stage's draws of
    the same seed); ``shape``: ``(layers, d_mlp)``; ``partner_ids``: each model's seed."""
    return {
        name: np.stack(
            [mixing_matrices(kind, *shape, seed, partner_ids[name], draw) for draw in range(draws)]
        )
        for name in names
    }


def side_candidates(
    model: str,
    partner: str,
    statistics: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    within: np.ndarray,
    rotations: np.ndarray,
    k: int,
    dead_variance: float = 0.0,
) -> dict[tuple[str, str], torch.Tensor]:
    """``{(model, target): candidates [n_x, k]}`` of some neurons x of ``model`` (any rows,
    e.g. a slab of its layers) against all of ``partner``: the ``k`` partner neurons and, per
    draw, rotated directions of highest whole-set correlation. ``statistics``: ``(covariance
    [n_x, N], correlation [n_x, N], var_x [n_x])`` (population); the partner's ``within
    [layers, d_mlp, d_mlp]`` and ``rotations [draws, layers, d_mlp, d_mlp]``
    (``rotation_draws``; arrays or memory maps)."""
    covariance, correlation, var_x = statistics
    links = {(model, partner): top_candidates(correlation, k)}
    for draw, matrices in enumerate(rotations):
        rotated = rotated_correlation(covariance, var_x, within, matrices, dead_variance)
        links[(model, rotated_key(partner, draw))] = top_candidates(rotated, k)
    return links


def candidate_links(
    pairs: Iterable[tuple[tuple[str, str], object]],
    within: Mapping[str, np.ndarray],
    rotations: Mapping[str, np.ndarray],
    k: int,
    dead_variance: float = 0.0,
) -> dict[tuple[str, str], torch.Tensor]:
    """``{(model, target): candidates [N, k]}`` for both directions of every pair
    (``side_candidates`` of each side). ``pairs``: ``((a, b), CrossMoments)`` (x = a);
    ``within[m] [layers, d_mlp, d_mlp]``; ``rotations[m] [draws, layers, d_mlp, d_mlp]``."""
    links = {}
    for (a, b), stats in pairs:
        covariance = stats.covariance()
        correlation = stats.correlation(dead_variance)
        sides = ((a, b, (covariance, correlation, stats.var_x())),)
        sides += ((b, a, (covariance.T, correlation.T, stats.var_y())),)
        for model, partner, statistics in sides:
            links |= side_candidates(
                model, partner, statistics, within[partner], rotations[partner], k, dead_variance
            )
    return links
