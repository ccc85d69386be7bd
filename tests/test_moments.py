"""Streaming moments equal scipy.stats on the whole data, whatever the batching."""

import numpy as np
import pytest
from scipy import stats

from universal_neurons.matching.moments import StreamingMoments


@pytest.mark.parametrize("sizes", [[1000], [1, 7, 300, 2, 690], [500, 500]])
def test_streaming_moments_match_scipy(sizes):
    rng = np.random.default_rng(0)
    data = np.concatenate(
        [
            rng.gamma(2.0, 1.5, size=(sum(sizes), 3)) - 2.0,
            rng.normal(5.0, 0.1, size=(sum(sizes), 2)),
        ],
        axis=1,
    )
    moments = StreamingMoments.empty(data.shape[1])
    start = 0
    for size in sizes:
        moments = moments.update(data[start : start + size])
        start += size
    assert moments.count == len(data)
    np.testing.assert_allclose(moments.mean, data.mean(axis=0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(moments.var, data.var(axis=0), rtol=1e-10)
    np.testing.assert_allclose(moments.skew, stats.skew(data, axis=0), rtol=0, atol=1e-9)
    np.testing.assert_allclose(
        moments.kurt, stats.kurtosis(data, axis=0, fisher=False), rtol=0, atol=1e-9
    )
    np.testing.assert_array_equal(moments.sparsity, (data > 0).mean(axis=0))


def test_constant_neuron_has_nan_skew_and_kurtosis():
    moments = StreamingMoments.of_batch(np.ones((10, 1)))
    assert moments.var[0] == 0
    assert np.isnan(moments.skew[0]) and np.isnan(moments.kurt[0])
