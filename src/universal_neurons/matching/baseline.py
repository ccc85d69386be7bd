"""The random-rotation baseline, computed analytically from the correlation statistics.

For a neuron i of model a and partner model m, the baseline is the largest correlation
of x_i with any direction of m's rotated neuron space: per layer l, ``ỹ_l = Q_l y_l``
with ``Q_l`` a seeded Haar-random orthogonal ``[d_mlp, d_mlp]`` matrix. No second pass
over the data is needed, because for any fixed matrix M::

    Cov(x, M y_l) = Cov(x, y_l) Mᵀ        Var((M y_l)_j) = (M Σ_ll Mᵀ)_jj

with Σ_ll the within-layer covariance of m (from collect). ``gaussian_rows`` uses the
paper's matrix instead: Gaussian entries, each row scaled to unit norm (not orthogonal).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd
import torch

from universal_neurons.config import BASELINE_KINDS, BaselineConfig
from universal_neurons.errors import UserError
from universal_neurons.matching.correlation import CrossMoments, MaxCorrelation, finite_maxima


def haar_orthogonal(d: int, rng: np.random.Generator) -> np.ndarray:
    """A Haar-random orthogonal ``[d, d]`` float64 matrix: QR of a Gaussian, columns sign-fixed.

    Multiplying Q's columns by sign(diag(R)) makes the factorisation unique, which is what
    makes Q Haar-distributed (Mezzadri 2007).
    """
    gaussian = rng.standard_normal((d, d))
    q, r = np.linalg.qr(gaussian)
    signs = np.sign(np.diag(r))
    signs[signs == 0] = 1.0
    return q * signs[None, :]


def gaussian_rows(d: int, rng: np.random.Generator) -> np.ndarray:
    """The paper's baseline matrix ``[d, d]``: standard Gaussian entries, every row of unit norm."""
    gaussian = rng.standard_normal((d, d))
    return gaussian / np.linalg.norm(gaussian, axis=1, keepdims=True)


def mixing_matrix(kind: str, d_mlp: int, seed: int, partner: int, sample: int, layer: int):
    """One layer's ``[d_mlp, d_mlp]`` float64 baseline matrix, drawn from
    ``SeedSequence([seed, partner, sample, layer])``."""
    draw = {"rotation": haar_orthogonal, "gaussian_rows": gaussian_rows}.get(kind)
    if draw is None:
        raise UserError(f"baseline.kind: expected one of {', '.join(BASELINE_KINDS)}, got {kind!r}")
    return draw(
        d_mlp, np.random.default_rng(np.random.SeedSequence([seed, partner, sample, layer]))
    )


def mixing_matrices(
    kind: str, n_layers: int, d_mlp: int, seed: int, partner: int, sample: int
) -> np.ndarray:
    """``[n_layers, d_mlp, d_mlp]`` float64 baseline matrices of one partner model and one draw.

    Reproducible: layer l's matrix is drawn from ``SeedSequence([seed, partner, sample, l])``,
    so the same partner gets the same matrices whichever model it is compared with.
    """
    return np.stack(
        [mixing_matrix(kind, d_mlp, seed, partner, sample, layer) for layer in range(n_layers)]
    )


LayerTerms = Iterable[tuple[torch.Tensor, object, torch.Tensor]]
"""Per partner layer: ``(covariance [n_x, d_mlp], mixing matrix M [d_mlp, d_mlp] (tensor or
array), mixed variance [d_mlp] float64)``, the last ``mixed_variance`` of that layer: it
depends on the partner's layer and draw only, so a caller may compute it once for many x."""


def mixed_variance(matrix, within, device: torch.device | str = "cpu") -> torch.Tensor:
    """``[d_mlp]`` float64 on ``device``: ``diag(M Σ Mᵀ)``, the population variance of every
    mixed direction ``M y`` of a layer with within-layer covariance ``within`` = Σ
    (``[d_mlp, d_mlp]``; tensors or arrays, ``matrix`` = M)."""
    m, sigma = _float64(matrix, device), _float64(within, device)
    return ((m @ sigma) * m).sum(dim=1)


@torch.no_grad()
def mixed_layer_maxima(
    layers: LayerTerms,
    var_x: torch.Tensor,
    dead_variance: float = 0.0,
    rows: int = 0,
    count: int = 1,
) -> MaxCorrelation:
    """Per x neuron, the max correlation with any mixed partner direction ``M_l y_l``, the
    partner's layers taken one at a time (``layers``, see ``LayerTerms``), so that only one
    layer's ``[n_x, d_mlp]`` block is held (``rows`` > 0: only ``rows`` x neurons of it at a
    time; ``count`` > 1: the layers give sums over ``count`` positions, divided here a block
    at a time). ``var_x [n_x]``: x's population variances. The argmax indexes the mixed
    directions (``layer * d_mlp + j``, the first maximum, as ``row_max`` of the whole row
    would give). Everything in float64.
    """
    best, where, offset = None, None, 0
    for covariance, matrix, var_mixed in layers:
        device = covariance.device
        m = _float64(matrix, device)
        sx = torch.where(var_x > dead_variance, var_x.sqrt(), torch.nan).to(device)
        sy = torch.where(var_mixed > dead_variance, var_mixed.clamp_min(0).sqrt(), torch.nan)
        step = rows or covariance.shape[0]
        parts = [
            _mixed_row_max(covariance[start : start + step], count, m, sx[start : start + step], sy)
            for start in range(0, covariance.shape[0], step)
        ]
        values, index = torch.cat([v for v, _ in parts]), torch.cat([i for _, i in parts])
        if best is None:
            best, where = values, index + offset
        else:
            better = values > best
            best, where = (
                torch.where(better, values, best),
                torch.where(better, index + offset, where),
            )
        offset += m.shape[0]
    return finite_maxima(best, where)


def _mixed_row_max(
    covariance: torch.Tensor, count: int, m: torch.Tensor, sx: torch.Tensor, sy: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row maxima (and argmax) of the correlations ``(covariance / count · Mᵀ) / (sx ⊗ sy)``
    of some x neurons ``covariance [rows, d_mlp]`` with one layer's mixed directions, NaN as
    -inf."""
    covariance = covariance.to(torch.float64)
    if count != 1:
        covariance = covariance / count
    cov_mixed = covariance @ m.T  # [rows, d_mlp]
    return torch.nan_to_num(cov_mixed / sx[:, None] / sy[None, :], nan=-torch.inf).max(dim=1)


def _float64(values, device: torch.device) -> torch.Tensor:
    """A tensor or (memory-mapped) array as a float64 tensor on ``device``."""
    if isinstance(values, np.ndarray):
        values = np.array(values, dtype=np.float64)  # a copy: memmaps are read-only
    return torch.as_tensor(values, dtype=torch.float64, device=device)


@torch.no_grad()
def mixed_max_correlation(
    covariance: torch.Tensor,
    var_x: torch.Tensor,
    within_cov: torch.Tensor,
    matrices: torch.Tensor,
    dead_variance: float = 0.0,
) -> MaxCorrelation:
    """Per x neuron, the max correlation with any mixed partner direction ``M_l y_l``.

    ``covariance [n_x, n_layers * d_mlp]``: population cross-covariance of x with the partner's
    neurons (layer-major); ``var_x [n_x]``; ``within_cov [n_layers, d_mlp, d_mlp]``: the
    partner's within-layer covariance; ``matrices [n_layers, d_mlp, d_mlp]``. The argmax
    indexes the mixed directions (``layer * d_mlp + j``). Everything in float64.
    """
    d_mlp, device = matrices.shape[1], covariance.device
    layers = (
        (
            covariance[:, layer * d_mlp : (layer + 1) * d_mlp],
            matrices[layer],
            mixed_variance(matrices[layer], within_cov[layer], device),
        )
        for layer in range(matrices.shape[0])
    )
    return mixed_layer_maxima(layers, var_x, dead_variance)


def baseline_frame(
    model: str, partner: str, sample: int, n_layers: int, d_mlp: int, baseline: np.ndarray
) -> pd.DataFrame:
    """Rows ``model, partner, sample, layer, index, baseline`` of one draw of one direction."""
    return pd.DataFrame(
        {
            "model": model,
            "partner": partner,
            "sample": sample,
            "layer": np.repeat(np.arange(n_layers, dtype=np.int64), d_mlp),
            "index": np.tile(np.arange(d_mlp, dtype=np.int64), n_layers),
            "baseline": baseline,
        }
    )


def pair_baselines(
    stats,
    names: tuple[str, str],
    partner_ids: tuple[int, int],
    within: tuple[np.ndarray, np.ndarray],
    kind: str,
    samples: int,
    seed: int,
    dead_variance: float = 0.0,
) -> pd.DataFrame:
    """Both directions of one pair's baseline, all draws: a long table.

    ``stats``: the pair's ``CrossMoments`` (x = ``names[0]``, y = ``names[1]``);
    ``partner_ids``: the integers that seed each model's matrices (its training seed);
    ``within``: each model's within-layer covariance ``[layers, d_mlp, d_mlp]``.
    Rows ``model, partner, sample, layer, index, baseline`` (NaN for dead neurons).
    """
    n_layers, d_mlp = within[0].shape[0], within[0].shape[1]
    cov = stats.covariance()
    sides = [
        (names[0], names[1], cov, stats.var_x(), within[1], partner_ids[1]),
        (names[1], names[0], cov.T, stats.var_y(), within[0], partner_ids[0]),
    ]
    frames = []
    for model, partner, covariance, var_x, partner_within, partner_id in sides:
        within_t = torch.as_tensor(partner_within, dtype=torch.float64)
        for sample in range(samples):
            matrices = mixing_matrices(kind, n_layers, d_mlp, seed, partner_id, sample)
            result = mixed_max_correlation(
                covariance, var_x, within_t, torch.as_tensor(matrices), dead_variance
            )
            frames.append(baseline_frame(model, partner, sample, n_layers, d_mlp, result.max_corr))
    return pd.concat(frames, ignore_index=True)


def group_baselines(
    pairs: Iterable[tuple[tuple[str, str], CrossMoments]],
    partner_ids: Mapping[str, int],
    within: Mapping[str, np.ndarray],
    config: BaselineConfig,
    dead_variance: float = 0.0,
) -> pd.DataFrame:
    """``pair_baselines`` of every pair, one long table. ``pairs``: ``((a, b), statistics)``
    one after the other (a generator may load each pair when its turn comes); ``partner_ids``
    and ``within``: per model, its training seed and within-layer covariance."""
    frames = [
        pair_baselines(
            stats,
            (a, b),
            (partner_ids[a], partner_ids[b]),
            (within[a], within[b]),
            config.kind,
            config.samples,
            config.seed,
            dead_variance,
        )
        for (a, b), stats in pairs
    ]
    return pd.concat(frames, ignore_index=True)


def baseline_spread(table) -> dict:
    """Per model: the mean baseline over its live neurons and partners, and the standard
    deviation of that mean across the draws (the spread of the baseline)."""
    out = {}
    for model, rows in table.groupby("model", sort=False):
        per_sample = rows.groupby("sample")["baseline"].mean()
        out[str(model)] = {
            "mean_baseline": _finite(rows["baseline"].mean()),
            "sample_std": _finite(per_sample.std(ddof=0)) if len(per_sample) > 1 else 0.0,
            "sample_means": [_finite(v) for v in per_sample],
        }
    return out


def _finite(value) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None
