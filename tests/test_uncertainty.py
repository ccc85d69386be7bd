"""The block bootstrap of the universality test (SPEC "Uncertainty"; stage uncertainty).

References are independent: numpy float64 ``corrcoef`` of the explicit (repeated, rotated)
activations, planted structure with a known population answer, and the universality stage's
own table for the stage run.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from universal_neurons.matching.baseline import mixing_matrices
from universal_neurons.matching.block_products import BlockProducts
from universal_neurons.matching.resampling import (
    CandidateSums,
    block_bounds,
    block_weights,
    draw_per_resample,
    neuron_stability,
    percent_intervals,
    resampled_excess,
    rotate_layers,
    rotated_correlation,
    rotated_key,
    top_candidates,
    whole_set_excess,
)


def _fill(sums: CandidateSums, columns: dict[str, np.ndarray], batch: int = 7) -> None:
    """Add ``columns[key] [tokens, n]`` block by block, in batches of ``batch`` tokens."""
    tokens = len(next(iter(columns.values())))
    for block, (start, stop) in enumerate(block_bounds(tokens, sums.blocks)):
        for first in range(start, stop, batch):
            last = min(first + batch, stop)
            sums.add(block, {key: torch.as_tensor(v[first:last]) for key, v in columns.items()})


def _cross_corr(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """numpy float64 ``[n_x, n_y]`` correlations of the columns of x with those of y."""
    return np.corrcoef(x.T, y.T)[: x.shape[1], x.shape[1] :]


def test_block_sums_reproduce_corrcoef_whole_set_and_resampled():
    rng = np.random.default_rng(1)
    tokens, n, blocks = 240, 5, 6
    x = rng.gamma(2.0, size=(tokens, n)) + 40.0  # far from 0: raw sums would cancel
    y = 0.7 * x[:, ::-1] + rng.standard_normal((tokens, n)) - 15.0
    candidates = np.tile(np.arange(n), (n, 1))  # every column followed
    sums = CandidateSums(blocks, {"x": n, "y": n}, {("x", "y"): candidates})
    _fill(sums, {"x": x, "y": y})
    whole = sums.correlations(("x", "y"), np.ones((1, blocks)))[0].numpy()
    np.testing.assert_allclose(whole, _cross_corr(x, y), rtol=0, atol=1e-9)

    weights = np.array([[2, 0, 1, 0, 3, 0], [0, 1, 1, 1, 1, 2]])
    bounds = block_bounds(tokens, blocks)
    resampled = sums.correlations(("x", "y"), weights).numpy()
    for row, w in zip(resampled, weights, strict=True):
        rows = np.concatenate([np.arange(*bounds[b]) for b in range(blocks) for _ in range(w[b])])
        np.testing.assert_allclose(row, _cross_corr(x[rows], y[rows]), rtol=0, atol=1e-9)


def test_block_products_equal_the_explicitly_rotated_activations():
    """The pass's reduction of full cross-products gives the sums of the explicitly rotated
    partner activations: the correlations equal numpy's corrcoef with ỹ_l = Q_l y_l."""
    rng = np.random.default_rng(2)
    tokens, layers, d_mlp, k = 90, 2, 6, 3
    x = rng.standard_normal((tokens, layers * d_mlp)) + 2.0
    y = x @ rng.standard_normal((layers * d_mlp, layers * d_mlp)) * 0.3 + rng.random((tokens, 12))
    matrices = mixing_matrices("rotation", layers, d_mlp, 0, 2, 0)
    rotated = rotate_layers(torch.as_tensor(y), torch.as_tensor(matrices)).numpy()
    key = rotated_key("b", 0)
    candidates = rng.integers(0, layers * d_mlp, size=(layers * d_mlp, k))
    links = {("a", "b"): candidates, ("b", "a"): candidates, ("a", key): candidates}
    products = BlockProducts(["a", "b"], layers, d_mlp, {})
    for start in range(0, tokens, 20):
        products.add(
            {
                "a": torch.as_tensor(x[start : start + 20]),
                "b": torch.as_tensor(y[start : start + 20]),
            }
        )
    sums = CandidateSums(1, {"a": 12, "b": 12, key: 12}, links)
    sums.add_totals(0, products.totals(sums.candidates, {"b": torch.as_tensor(matrices[None])}))
    ones = np.ones((1, 1))
    rows = np.arange(12)[:, None]
    for link, (left, right) in {
        ("a", "b"): (x, y),
        ("b", "a"): (y, x),
        ("a", key): (x, rotated),
    }.items():
        expected = _cross_corr(left, right)[rows, candidates]
        np.testing.assert_allclose(sums.correlations(link, ones)[0].numpy(), expected, atol=1e-9)


def test_rotated_correlation_from_covariances_equals_rotated_data():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((300, 4))
    y = np.concatenate([x @ rng.standard_normal((4, 5)), rng.standard_normal((300, 5))], axis=1)
    y = y + 0.5 * rng.standard_normal(y.shape)
    matrices = mixing_matrices("rotation", 2, 5, 7, 1, 0)
    within = np.stack([np.cov(y[:, i * 5 : (i + 1) * 5].T, bias=True) for i in range(2)])
    cov = torch.as_tensor(np.cov(x.T, y.T, bias=True)[:4, 4:])
    got = rotated_correlation(cov, torch.as_tensor(x.var(axis=0)), within, matrices)
    rotated = rotate_layers(torch.as_tensor(y), torch.as_tensor(matrices)).numpy()
    np.testing.assert_allclose(got.numpy(), _cross_corr(x, rotated), atol=1e-12)


def test_block_weights_are_seeded_bootstrap_counts():
    weights = block_weights(10, 500, seed=4)
    assert weights.shape == (500, 10) and (weights.sum(axis=1) == 10).all()
    np.testing.assert_array_equal(weights, block_weights(10, 500, seed=4))
    assert not np.array_equal(weights, block_weights(10, 500, seed=5))
    assert abs(weights.mean() - 1.0) < 0.05  # each block drawn once per resample on average


# --- planted data: stability and coverage ----------------------------------------------------


def _planted_sums(x, y, rotated, blocks, k):
    """``CandidateSums`` of model "a" (x) against partner "b" (y) and the baseline draws
    ``rotated[d]``, candidates = the whole set's top ``k`` (as the stage picks them)."""
    columns = {"a": x, "b": y, **{rotated_key("b", d): r for d, r in enumerate(rotated)}}
    links = {
        ("a", key): top_candidates(torch.as_tensor(_cross_corr(x, v)), k)
        for key, v in columns.items()
        if key != "a"
    }
    sums = CandidateSums(blocks, {key: v.shape[1] for key, v in columns.items()}, links)
    _fill(sums, columns, batch=50)
    return sums


def test_stability_is_one_for_a_copied_neuron_and_zero_without_partner():
    """Neurons 0..15 of a have an exact (permuted) copy in b, 16..31 have no partner; the
    baseline rotates b's 128 directions (best rotated correlation of a copy ~0.4)."""
    rng = np.random.default_rng(5)
    tokens, n = 2000, 128
    x = rng.standard_normal((tokens, n))
    y = rng.standard_normal((tokens, n))
    permutation = rng.permutation(n)
    y[:, permutation[:16]] = x[:, :16]
    draws = [mixing_matrices("rotation", 1, n, 0, 2, d) for d in range(2)]
    rotated = [rotate_layers(torch.as_tensor(y), torch.as_tensor(m)).numpy() for m in draws]
    sums = _planted_sums(x, y, rotated, blocks=20, k=4)
    weights = block_weights(20, 100, seed=0)
    excess = resampled_excess(sums, "a", ["b"], weights, draw_per_resample(2, 100))
    stability = neuron_stability(excess, threshold=0.5, confidence=0.9)["stability"]
    np.testing.assert_array_equal(stability[:16], 1.0)
    np.testing.assert_array_equal(stability[16:32], 0.0)
    whole = whole_set_excess(sums, "a", ["b"], 2)
    # the copy's correlation is exactly 1: its excess is 1 - the mean best rotated correlation
    best_rotated = np.mean([_cross_corr(x[:, :16], r).max(axis=1) for r in rotated], axis=0)
    np.testing.assert_allclose(whole[:16], 1.0 - best_rotated, atol=1e-9)


def _planted_replicate(rng, n=100, blocks=20, per_block=20, delta=0.05, draws=2):
    """One data set whose population % universal is 50: neuron i's partner correlation is
    0.7 ± delta (half each), its baseline direction's 0.2 in every draw, τ = 0.5."""
    tokens = blocks * per_block
    rho = np.where(np.arange(n) < n // 2, 0.7 + delta, 0.7 - delta)
    g = rng.standard_normal((2 + draws, tokens, n))
    x = g[0]
    y = rho * g[0] + np.sqrt(1 - rho**2) * g[1]
    rotated = [0.2 * g[0] + np.sqrt(1 - 0.04) * g[2 + d] for d in range(draws)]
    return _planted_sums(x, y, rotated, blocks, k=3)


def _coverage(confidence: float, replicates: int, truth: float = 50.0) -> float:
    rng = np.random.default_rng(6)
    covered = 0
    for replicate in range(replicates):
        sums = _planted_replicate(rng)
        weights = block_weights(20, 200, seed=replicate)
        excess = resampled_excess(sums, "a", ["b"], weights, draw_per_resample(2, 200))
        n = excess.shape[1]
        universal = excess > 0.5
        interval = percent_intervals(universal, np.zeros(n, int), np.ones(n, bool), confidence)
        covered += interval["lo"] <= truth <= interval["hi"]
    return covered / replicates


@pytest.fixture
def one_thread():
    """Torch on one thread: small operations on a shared machine run ~10x faster."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_percentile_interval_covers_the_planted_truth_at_its_nominal_rate(one_thread):
    """150 seeded replicates: the 95 % interval of % universal covers the population value at
    about 95 % (binomial sd 1.8 %); a 50 % interval (too narrow for a 95 % claim) covers far
    less often, so the check can fail."""
    assert 0.88 <= _coverage(0.95, 150) <= 1.0
    assert _coverage(0.5, 100) < 0.8


def test_percent_intervals_per_layer_leave_out_dead_neurons():
    universal = np.array([[True, False, True, False], [True, True, False, False]])
    layers = np.array([0, 0, 1, 1])
    live = np.array([True, True, True, False])
    got = percent_intervals(universal, layers, live, 0.5)
    # resample percentages: whole model 2/3, 2/3; layer 0: 1/2, 1; layer 1: 1/1, 0/1
    assert got["lo"] == pytest.approx(200 / 3) and got["hi"] == pytest.approx(200 / 3)
    assert got["per_layer"][0]["lo"] == pytest.approx(62.5)  # quantile 0.25 of [50, 100]
    assert got["per_layer"][1]["hi"] == pytest.approx(75.0)  # quantile 0.75 of [100, 0]


# --- the stage ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_stage_agrees_with_the_universality_stage_and_the_library(
    tmp_path, tiny_analysis, tiny_tokens_dir, tiny_group
):
    """With the baseline stage's seed and draws, the stage's whole-set excess is the
    universality table's excess_corr (a second, independent pass over the tokens); its
    intervals are those of the library applied to its own table."""
    import json
    import shutil

    from conftest import tiny_params

    from stages import uncertainty, uncertainty_resamples
    from universal_neurons.pipeline.layout import Layout

    root = tmp_path / "work"
    shutil.copytree(tiny_analysis, root / "data")
    models = next(iter(tiny_group.values())).parent
    layout = Layout.at(root, tokens=tiny_tokens_dir, models=models)
    params = tiny_params(
        uncertainty={"resamples": 40, "blocks": 8, "candidates": 4, "baseline_draws": 3}
    )
    uncertainty_resamples.run(params, layout, progress=False)
    results = uncertainty.run(params, layout)
    for seed in params.train.seeds:
        table = pd.read_parquet(root / "data" / "uncertainty" / f"seed{seed}.parquet")
        reference = pd.read_parquet(root / "data" / "universality" / f"seed{seed}.parquet")
        live = ~reference["dead"].to_numpy(bool)
        np.testing.assert_allclose(
            table["excess"].to_numpy()[live], reference["excess_corr"].to_numpy()[live], atol=2e-5
        )
        assert ((table["stability"] >= 0) & (table["stability"] <= 1)).all()
        assert (table["excess_lo"] <= table["excess_hi"]).all()
        entry = results["models"][f"seed{seed}"]
        assert entry["percent_universal_lo"] <= entry["percent_universal_hi"]
    assert (
        sum(results["kept_positions_per_block"])
        == json.loads((root / "data" / "correlate" / "summary.json").read_text())["kept_positions"]
    )
    metrics = json.loads((root / "metrics" / "uncertainty.json").read_text())
    assert (
        metrics["seed1"]["percent_universal_lo"]
        == results["models"]["seed1"]["percent_universal_lo"]
    )
    assert (root / "metrics" / "uncertainty_per_layer.csv").is_file()

    from universal_neurons.errors import UserError

    too_many = tiny_params(uncertainty={"blocks": 201})  # the tiny set has 200 sequences
    with pytest.raises(UserError, match=r"uncertainty\.blocks"):
        uncertainty_resamples.run(too_many, layout, progress=False)
    # correlate took the candidate links with 4 candidates and 3 draws: other settings are
    # refused by name, before any pass, and the outputs stay
    before = (root / "data" / "uncertainty_resamples" / "seed1_whole.npy").read_bytes()
    for changed in ({"candidates": 5}, {"baseline_draws": 2}, {"seed": 1}):
        other = tiny_params(uncertainty={"resamples": 40, "blocks": 8} | changed)
        with pytest.raises(UserError, match=r"uncertainty\.candidates.*rerun correlate"):
            uncertainty_resamples.run(other, layout, progress=False)
    assert (root / "data" / "uncertainty_resamples" / "seed1_whole.npy").read_bytes() == before
    # a new τ: the resampled excess is reused, the stability follows it
    strict = tiny_params(
        uncertainty={"resamples": 40, "blocks": 8, "candidates": 4, "baseline_draws": 3},
        universality={"threshold": 0.9},
    )
    strict_results = uncertainty.run(strict, layout)
    assert strict_results["settings"]["threshold"] == 0.9
    for seed in params.train.seeds:
        table = pd.read_parquet(root / "data" / "uncertainty" / f"seed{seed}.parquet")
        resampled = np.load(root / "data" / "uncertainty_resamples" / f"seed{seed}_resampled.npy")
        live = ~table["dead"].to_numpy(bool)
        expected = (resampled[:, live] > 0.9).mean(axis=0)
        np.testing.assert_allclose(table["stability"].to_numpy()[live], expected, atol=1e-12)


def test_interval_plot_reads_the_results_document(tmp_path):
    from universal_neurons.matching.uncertainty import interval_plot_inputs
    from universal_neurons.outputs.plots import percent_with_intervals

    row = {"layer": 0, "percent_universal": 2.0, "lo": 1.0, "hi": 3.5, "median": 2.0}
    results = {
        "models": {
            "seed1": {"per_layer": [row, {**row, "layer": 1, "percent_universal": None}]},
            "seed2": {"per_layer": [{**row, "lo": 0.5}, {**row, "layer": 1}]},
        }
    }
    points, intervals = interval_plot_inputs(results)
    assert points == {"seed1": [2.0, None], "seed2": [2.0, 2.0]}
    assert intervals["seed2"] == [(0.5, 3.5), (1.0, 3.5)]
    path = percent_with_intervals(points, intervals, tmp_path / "intervals.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_block_bounds_cover_the_sequences_and_name_the_parameter_when_too_many():
    bounds = block_bounds(10, 4)
    assert bounds == [(0, 2), (2, 5), (5, 8), (8, 10)]  # contiguous, sizes differ by <= 1
    from universal_neurons.errors import UserError

    with pytest.raises(UserError, match=r"uncertainty\.blocks: 11 blocks .* has 10"):
        block_bounds(10, 11)
