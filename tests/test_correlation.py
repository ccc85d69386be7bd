"""Streaming cross-correlation equals numpy.corrcoef in float64, whatever the batching."""

import numpy as np
import pytest
import torch

from universal_neurons.matching.correlation import CrossMoments, max_correlations

UNEVEN = [1, 37, 400, 3, 250, 509]


def _data(seed=0, n=1200, n_x=40, n_y=30):
    """Correlated, shifted, heavy-tailed activations like an MLP's (plus one dead neuron each)."""
    rng = np.random.default_rng(seed)
    shared = rng.standard_normal((n, 10))
    x = shared @ rng.standard_normal((10, n_x)) + 0.5 * rng.standard_normal((n, n_x))
    y = shared @ rng.standard_normal((10, n_y)) + 0.5 * rng.standard_normal((n, n_y))
    x = np.where(x > 0, x, 0.05 * x) * 3.0 + 7.0  # offset: centring must matter
    y = np.exp(0.5 * y) - 2.0
    x[:, 5] = 0.0  # dead (constant) neurons
    y[:, 7] = -0.17
    return x.astype(np.float32), y.astype(np.float32)


def _stream(x, y, sizes, products):
    stats = CrossMoments.empty(x.shape[1], y.shape[1])
    start = 0
    for size in sizes:
        stats = stats.update(
            torch.from_numpy(x[start : start + size]),
            torch.from_numpy(y[start : start + size]),
            products,
        )
        start += size
    assert start == len(x)
    return stats


def _reference(x, y):
    full = np.corrcoef(x.astype(np.float64), y.astype(np.float64), rowvar=False)
    return full[: x.shape[1], x.shape[1] :]


def _reference_max(ref):
    filled = np.where(np.isnan(ref), -np.inf, ref)
    values = filled.max(axis=1)
    return np.where(np.isfinite(values), values, np.nan), filled.argmax(axis=1)


@pytest.mark.parametrize("products", ["float64", "float32"])
@pytest.mark.parametrize("sizes", [UNEVEN, [1200]])
def test_correlation_matches_corrcoef(products, sizes):
    x, y = _data()
    with np.errstate(invalid="ignore", divide="ignore"):
        ref = _reference(x, y)
    corr = _stream(x, y, sizes, products).correlation().numpy()
    assert np.isnan(corr[5]).all() and np.isnan(corr[:, 7]).all()  # dead: NaN, never 0
    live = ~np.isnan(ref)
    np.testing.assert_array_equal(np.isnan(corr), ~live)
    assert np.abs(corr[live] - ref[live]).max() <= 1e-6


def test_maxima_and_argmax_match_corrcoef_both_directions():
    x, y = _data(seed=3)
    with np.errstate(invalid="ignore", divide="ignore"):
        ref = _reference(x, y)
    forward, backward = max_correlations(_stream(x, y, UNEVEN, "float32"), block=7)
    for result, matrix in ((forward, ref), (backward, ref.T)):
        values, index = _reference_max(matrix)
        dead = np.isnan(values)
        np.testing.assert_array_equal(np.isnan(result.max_corr), dead)
        assert np.abs(result.max_corr[~dead] - values[~dead]).max() <= 1e-6
        np.testing.assert_array_equal(result.argmax[~dead], index[~dead])
        assert (result.argmax[dead] == -1).all()
    assert np.isnan(forward.max_corr[5]) and np.isnan(backward.max_corr[7])


def test_bfloat16_products_within_1e3():
    x, y = _data(seed=1, n=3000)
    with np.errstate(invalid="ignore", divide="ignore"):
        ref = _reference(x, y)
    corr = _stream(x, y, [700, 1300, 1000], "bfloat16").correlation().numpy()
    live = ~np.isnan(ref)
    error = np.abs(corr[live] - ref[live]).max()
    assert error <= 1e-3
    # and bf16 rounding really happened: the float32 path is much closer
    corr32 = _stream(x, y, [700, 1300, 1000], "float32").correlation().numpy()
    assert np.abs(corr32[live] - ref[live]).max() < error / 10


def test_merge_of_shards_equals_one_pass():
    """Two accumulators over disjoint token shards merge to the single-pass statistics."""
    x, y = _data(seed=2)
    whole = _stream(x, y, [1200], "float64")
    left = _stream(x[:500], y[:500], [200, 300], "float64")
    right = _stream(x[500:], y[500:], [700], "float64")
    merged = left.merge(right)
    assert merged.count == whole.count
    for name in ("mean_x", "mean_y", "m2_x", "m2_y", "cxy"):
        np.testing.assert_allclose(
            getattr(merged, name).numpy(), getattr(whole, name).numpy(), rtol=1e-11, atol=1e-9
        )
    # merge does not modify its inputs
    again = left.merge(right)
    np.testing.assert_array_equal(again.cxy.numpy(), merged.cxy.numpy())


def test_save_and_load_round_trip(tmp_path):
    x, y = _data(seed=4, n=300)
    stats = _stream(x, y, [100, 200], "float32")
    stats.save(tmp_path / "pair.safetensors", {"x": "a", "y": "b"})
    loaded, info = CrossMoments.load(tmp_path / "pair.safetensors")
    assert info == {"x": "a", "y": "b"} and loaded.count == 300
    np.testing.assert_array_equal(loaded.cxy.numpy(), stats.cxy.numpy())


def test_mismatched_token_counts_are_refused():
    with pytest.raises(ValueError, match="tokens"):
        CrossMoments.empty(2, 3).update(torch.zeros(4, 2), torch.zeros(5, 3))


def test_saved_statistics_are_byte_identical_across_processes(tmp_path):
    """DVC hashes the files: the same statistics must give the same bytes in every process
    (safetensors writes a metadata map in arbitrary order, so it is kept to one key)."""
    import subprocess
    import sys

    script = (
        "import sys, torch\n"
        "from universal_neurons.matching.correlation import CrossMoments\n"
        "g = torch.Generator().manual_seed(0)\n"
        "x, y = torch.randn(50, 4, generator=g), torch.randn(50, 3, generator=g)\n"
        "s = CrossMoments.empty(4, 3).update(x, y, 'float64')\n"
        "s.save(sys.argv[1], {'a': 'seed1', 'b': 'seed2', 'rows': [0, 4], 'batches': 1})\n"
    )
    paths = [tmp_path / f"run{i}.safetensors" for i in range(4)]
    for path in paths:
        subprocess.run([sys.executable, "-c", script, str(path)], check=True)
    assert len({path.read_bytes() for path in paths}) == 1
    loaded, info = CrossMoments.load(paths[0])
    assert loaded.count == 50 and info == {"a": "seed1", "b": "seed2", "batches": 1, "rows": [0, 4]}


def test_large_offset_and_drift_keep_float32_precision():
    """Each batch is shifted by the running mean before the float32 product: neurons at
    1,000 ± 0.01 and -50 ± 0.02 whose means drift between batches keep float32's relative
    precision (an unshifted float32 product Σxy would carry 1000² against a covariance
    of 0.01²: ten orders of magnitude, more than float32's seven digits)."""
    rng = np.random.default_rng(3)
    shared = rng.standard_normal((2000, 4))
    drift = np.linspace(0.0, 0.05, 2000)[:, None]  # the mean moves by 5 spreads
    x = 1000.0 + 0.01 * (
        shared @ rng.standard_normal((4, 6)) + 0.3 * rng.standard_normal((2000, 6))
    )
    y = -50.0 + 0.02 * (shared @ rng.standard_normal((4, 5)) + 0.3 * rng.standard_normal((2000, 5)))
    x, y = (x + drift).astype(np.float32), (y - drift).astype(np.float32)
    ref = _reference(x, y)
    corr = _stream(x, y, UNEVEN + [800], "float32").correlation().numpy()
    assert np.abs(corr - ref).max() <= 1e-5
