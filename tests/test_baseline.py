"""The analytic baseline equals correlating with explicitly rotated activations; Haar matrices."""

import os

import numpy as np
import pytest
import torch

from universal_neurons.matching.baseline import (
    gaussian_rows,
    haar_orthogonal,
    mixed_max_correlation,
    mixing_matrices,
    pair_baselines,
)
from universal_neurons.matching.correlation import CrossMoments

N_LAYERS, D = 2, 16


def _activations(seed=0, n=900):
    rng = np.random.default_rng(seed)
    shared = rng.standard_normal((n, 6))
    x = shared @ rng.standard_normal((6, 20)) + rng.standard_normal((n, 20))
    y = shared @ rng.standard_normal((6, N_LAYERS * D)) + 0.7 * rng.standard_normal(
        (n, N_LAYERS * D)
    )
    y = np.maximum(y, -0.3) + 1.0
    x[:, 3] = 2.5  # a dead neuron on each side
    y[:, D + 4] = 0.0
    return x, y


def _within(y, products="float64", sizes=(300, 600)):
    stats = [CrossMoments.empty(D, D) for _ in range(N_LAYERS)]
    start = 0
    for size in sizes:
        for layer in range(N_LAYERS):
            block = torch.from_numpy(y[start : start + size, layer * D : (layer + 1) * D])
            stats[layer] = stats[layer].update(block, block, products)
        start += size
    return np.stack([s.covariance().numpy() for s in stats])


def _cross(x, y, products="float64", sizes=(100, 450, 350)):
    stats = CrossMoments.empty(x.shape[1], y.shape[1])
    start = 0
    for size in sizes:
        stats = stats.update(
            torch.from_numpy(x[start : start + size]),
            torch.from_numpy(y[start : start + size]),
            products,
        )
        start += size
    return stats


def _explicit(x, y, matrices):
    """Rotate the partner's activations, then correlate them with numpy (float64)."""
    rotated = np.concatenate(
        [y[:, k * D : (k + 1) * D] @ matrices[k].T for k in range(N_LAYERS)], axis=1
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.corrcoef(x, rotated, rowvar=False)[: x.shape[1], x.shape[1] :]
    filled = np.where(np.isnan(corr), -np.inf, corr)
    values = filled.max(axis=1)
    return np.where(np.isfinite(values), values, np.nan), filled.argmax(axis=1)


@pytest.mark.parametrize("kind", ["rotation", "gaussian_rows"])
@pytest.mark.parametrize("products", ["float64", "float32"])
def test_analytic_baseline_equals_explicitly_rotated_activations(kind, products):
    x, y = _activations()
    matrices = mixing_matrices(kind, N_LAYERS, D, seed=7, partner=3, sample=0)
    stats = _cross(x, y, products)
    analytic = mixed_max_correlation(
        stats.covariance(),
        stats.var_x(),
        torch.from_numpy(_within(y, products)),
        torch.from_numpy(matrices),
    )
    values, index = _explicit(x, y, matrices)
    assert np.isnan(analytic.max_corr[3]) and np.isnan(values[3])
    live = ~np.isnan(values)
    np.testing.assert_array_equal(np.isnan(analytic.max_corr), ~live)
    assert np.abs(analytic.max_corr[live] - values[live]).max() <= 1e-6
    np.testing.assert_array_equal(analytic.argmax[live], index[live])
    # a rotation mixes the dead partner neuron into live directions: nothing stays NaN there
    assert np.isfinite(analytic.max_corr[live]).all()


def test_pair_baselines_both_directions_match_explicit_rotation():
    x, y = _activations(seed=5)
    x = np.concatenate([x[:, :D], x[:, :D] * 0.5 + 1.0], axis=1)  # two layers of D on side x too
    stats = _cross(x, y)
    within_x = np.stack(
        [np.cov(x[:, k * D : (k + 1) * D], rowvar=False, bias=True) for k in range(N_LAYERS)]
    )
    table = pair_baselines(
        stats, ("seed1", "seed2"), (1, 2), (within_x, _within(y)), "rotation", samples=2, seed=11
    )
    assert len(table) == 2 * 2 * N_LAYERS * D  # directions x samples x neurons
    for model, partner, partner_id, xs, ys in (
        ("seed1", "seed2", 2, x, y),
        ("seed2", "seed1", 1, y, x),
    ):
        for sample in range(2):
            matrices = mixing_matrices("rotation", N_LAYERS, D, 11, partner_id, sample)
            values, _ = _explicit(xs, ys, matrices)
            rows = (
                (table["model"] == model)
                & (table["partner"] == partner)
                & (table["sample"] == sample)
            )
            got = table.loc[rows, "baseline"].to_numpy()
            np.testing.assert_array_equal(np.isnan(got), np.isnan(values))
            live = ~np.isnan(values)
            assert np.abs(got[live] - values[live]).max() <= 1e-6


def test_haar_matrices_are_orthogonal_sign_fixed_and_reproducible():
    for d in (1, 5, 64):
        q = haar_orthogonal(d, np.random.default_rng(0))
        np.testing.assert_allclose(q @ q.T, np.eye(d), rtol=0, atol=1e-10)
        np.testing.assert_allclose(q.T @ q, np.eye(d), rtol=0, atol=1e-10)
        # the sign fix: Qᵀ G is upper triangular with a positive diagonal (unique QR)
        g = np.random.default_rng(0).standard_normal((d, d))
        r = q.T @ g
        np.testing.assert_allclose(np.tril(r, -1), 0.0, atol=1e-10)
        assert (np.diag(r) > 0).all()
    a = mixing_matrices("rotation", 3, 8, seed=1, partner=2, sample=0)
    np.testing.assert_array_equal(a, mixing_matrices("rotation", 3, 8, seed=1, partner=2, sample=0))
    assert not np.allclose(a, mixing_matrices("rotation", 3, 8, seed=2, partner=2, sample=0))
    assert not np.allclose(a, mixing_matrices("rotation", 3, 8, seed=1, partner=2, sample=1))
    assert not np.allclose(a[0], a[1])  # one matrix per layer


def test_haar_diagonal_is_unbiased():
    """Haar: E[Q_ii] = 0 and E[Q_ij^2] = 1/d; an unfixed QR is biased on the diagonal."""
    rng = np.random.default_rng(1)
    d, draws = 4, 4000
    diag = np.array([np.diag(haar_orthogonal(d, rng)) for _ in range(draws)])
    assert abs(diag.mean()) < 0.02
    assert abs((diag**2).mean() - 1 / d) < 0.02


def test_gaussian_rows_have_unit_norm_and_are_not_orthogonal():
    m = gaussian_rows(32, np.random.default_rng(0))
    np.testing.assert_allclose(np.linalg.norm(m, axis=1), 1.0, atol=1e-12)
    assert np.abs(m @ m.T - np.eye(32)).max() > 0.1


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="baseline.kind"):
        mixing_matrices("identity", 1, 4, 0, 0, 0)


def test_block_units_compute_each_partner_layers_variance_once_and_reread_a_rewritten_file(
    tmp_path, monkeypatch
):
    """correlate's units at scale (``maxima.reduce_block``): the forward baseline of each
    block of ``a``'s layers equals explicitly rotated activations; ``diag(M Σ Mᵀ)`` of a
    partner layer is computed once per process for all the blocks, not once per block; and a
    within-layer covariance file written again is read again, not served from memory."""
    from universal_neurons.matching import maxima
    from universal_neurons.matching.maxima import BaselineDraws, reduce_block

    _, x = _activations(seed=3)  # model a: two layers of D, like b
    _, y = _activations(seed=4)
    paths = {"a": tmp_path / "a.npy", "b": tmp_path / "b.npy"}
    np.save(paths["a"], _within(x))
    np.save(paths["b"], _within(y))
    draws = BaselineDraws(
        "rotation", 2, 11, {"a": 1, "b": 2}, {m: str(p) for m, p in paths.items()}, ""
    )
    calls = []
    original = maxima.mixed_variance
    monkeypatch.setattr(maxima, "mixed_variance", lambda *a: calls.append(1) or original(*a))
    monkeypatch.setattr(maxima, "_MIXED_VARIANCES", {})

    def unit(layer):
        rows = (layer * D, (layer + 1) * D)
        return reduce_block(_cross(x[:, rows[0] : rows[1]], y), ("a", "b"), rows, D, draws)

    blocks = [unit(layer) for layer in range(N_LAYERS)]
    # per draw: b's two layers once (forward), each block's own layer once (backward)
    assert len(calls) == 2 * (N_LAYERS + N_LAYERS)
    for layer, block in enumerate(blocks):
        for sample in range(2):
            matrices = mixing_matrices("rotation", N_LAYERS, D, 11, 2, sample)
            values, _ = _explicit(x[:, layer * D : (layer + 1) * D], y, matrices)
            got = block.tensors["forward_baseline"][sample].numpy()
            np.testing.assert_array_equal(np.isnan(got), np.isnan(values))
            live = ~np.isnan(values)
            assert np.abs(got[live] - values[live]).max() <= 1e-6

    # b's activations doubled on disk only: its mixed directions' spread doubles, every
    # forward baseline halves (exactly: a power of two)
    np.save(paths["b"], 4 * _within(y))
    stat = paths["b"].stat()
    os.utime(paths["b"], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    again = unit(0)
    assert len(calls) == 2 * (N_LAYERS + N_LAYERS) + 2 * N_LAYERS
    np.testing.assert_array_equal(
        again.tensors["forward_baseline"].numpy(), blocks[0].tensors["forward_baseline"] / 2
    )
