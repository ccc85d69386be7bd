"""correlate's reductions of the full pair statistics (``matching.pair_reductions``, issue 25
item 6): the baseline draws, the one-to-one matching and the candidate links that the later
stages read are exactly those of the library applied to the pair statistics that correlate
used to write as ``pairs/*.safetensors`` (here from ``correlate_group``, the same pass), and
correlate writes no ``[N, N]`` file."""

from __future__ import annotations

import itertools
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_params
from scipy.optimize import linear_sum_assignment

from stages import correlate
from universal_neurons.errors import MissingInputError
from universal_neurons.matching.activations import load_analysis_set
from universal_neurons.matching.pair_reductions import (
    BASELINE_DRAWS,
    CandidateSettings,
    load_links,
    load_matches,
    reduce_pairs,
)
from universal_neurons.matching.pairs import correlate_group
from universal_neurons.models.loading import load_model
from universal_neurons.pipeline.layout import Layout


@pytest.fixture(scope="module")
def reduced(tiny_group, tiny_tokens_dir, tiny_analysis, tmp_path_factory):
    """correlate run on the tiny group (float64 products) beside tiny_analysis's collect, and
    the library's reductions of the same pass's pair statistics."""
    params = tiny_params(correlate={"products": "float64"})
    root = tmp_path_factory.mktemp("reductions")
    layout = Layout.at(root, tokens=tiny_tokens_dir, models=tiny_group[1].parent)
    shutil.copytree(tiny_analysis / "collect", layout.stage_dir("collect"))
    summary = correlate.run(params, layout, progress=False)
    tokens, excluded, _ = load_analysis_set(tiny_tokens_dir, params.analysis)
    models = {f"seed{s}": load_model(str(path)) for s, path in tiny_group.items()}
    batch = params.analysis.batch_size
    pairs = correlate_group(models, tokens, excluded, batch, "float64", progress=False).pairs
    within = correlate.within_covariances(params, layout, (tokens, excluded), progress=False)
    reference = correlate.pair_reductions(params, pairs, within)
    return params, layout, summary, pairs, reference


def test_correlate_writes_the_reductions_of_its_pair_statistics(reduced):
    params, layout, summary, pairs, reference = reduced
    out = layout.stage_dir("correlate")
    baselines = pd.read_parquet(out / BASELINE_DRAWS)
    pd.testing.assert_frame_equal(baselines, reference.baselines, check_exact=True)
    assert len(baselines) == 3 * 2 * params.baseline.samples * 128  # pairs x directions x draws
    n = summary["n_layers"] * summary["d_mlp"]
    matches, records = load_matches(out, summary["pairs"], n)
    for (a, b), (match, record) in reference.matches.items():
        assert records[f"{a}__{b}"] == record
        got = matches[a][b]
        np.testing.assert_array_equal(got.partner, match.partner)
        np.testing.assert_array_equal(got.corr, match.corr)
        np.testing.assert_array_equal(got.mutual, match.mutual)
        # b's side is the inverse assignment
        back = matches[b][a]
        live = match.partner >= 0
        np.testing.assert_array_equal(back.partner[match.partner[live]], np.flatnonzero(live))
    links = load_links(out, CandidateSettings.of(params))
    assert list(links) == list(reference.links)
    assert len(links) == 3 * 2 * (1 + params.uncertainty.baseline_draws)
    for key, tensor in reference.links.items():
        assert links[key].dtype == torch.int64 and torch.equal(links[key], tensor)
    # nothing [N, N]: every file is below one pair's 8 N^2 bytes of statistics, all of them
    # together below a third of the three pairs' (at N = 1,024: about a twentieth)
    sizes = {p.name: p.stat().st_size for p in out.rglob("*") if p.is_file()}
    assert max(sizes.values()) < 8 * n * n and sum(sizes.values()) < 8 * n * n, sizes


def test_the_matching_is_scipys_assignment_of_the_pairs_correlations(reduced):
    params, layout, summary, pairs, _ = reduced
    n = summary["n_layers"] * summary["d_mlp"]
    matches, _ = load_matches(layout.stage_dir("correlate"), summary["pairs"], n)
    for a, b in itertools.combinations(["seed1", "seed2", "seed3"], 2):
        stats = pairs[(a, b)]
        with np.errstate(invalid="ignore", divide="ignore"):
            spread = np.sqrt(np.outer(stats.m2_x.numpy(), stats.m2_y.numpy()))
            corr = stats.cxy.numpy() / spread
        weights = np.where(np.isfinite(corr), corr, -2.0)
        rows, cols = linear_sum_assignment(weights, maximize=True)
        got = matches[a][b]
        live = got.partner >= 0
        assert weights[rows, cols].sum() == pytest.approx(
            weights[np.arange(n)[live], got.partner[live]].sum() - 2.0 * (~live).sum(), abs=1e-9
        )
        np.testing.assert_allclose(got.corr[live], corr[np.arange(n)[live], got.partner[live]])


def test_reductions_need_collect_before_the_pass(tiny_group, tiny_tokens_dir, tmp_path):
    """correlate reads collect's covariances after its pass: a missing collect output is
    named before any work, and nothing is written."""
    layout = Layout.at(tmp_path, tokens=tiny_tokens_dir, models=tiny_group[1].parent)
    with pytest.raises(MissingInputError, match="collect"):
        correlate.run(tiny_params(), layout, progress=False)
    assert not layout.stage_dir("correlate").exists()
    assert not list(tmp_path.glob("data/.correlate-units.tmp/*"))


def test_reduce_pairs_of_a_planted_permutation():
    """A copy with permuted neurons: the matching is the permutation, the baseline below 1."""
    rng = np.random.default_rng(0)
    layers, d_mlp, tokens = 2, 8, 4000
    n = layers * d_mlp
    x = rng.standard_normal((tokens, n))
    perm = rng.permutation(n)
    y = x[:, perm] + 0.1 * rng.standard_normal((tokens, n))
    from universal_neurons.matching.correlation import CrossMoments

    stats = CrossMoments.of_batch(x, y, "float64")
    within = {
        name: np.stack(
            [np.cov(v[:, i * d_mlp : (i + 1) * d_mlp], rowvar=False, bias=True) for i in range(2)]
        )
        for name, v in (("a", x), ("b", y))
    }
    from universal_neurons.config import BaselineConfig

    settings = CandidateSettings("rotation", 3, 2, 0)
    reductions = reduce_pairs(
        {("a", "b"): stats}, {"a": 1, "b": 2}, within, BaselineConfig(samples=2), settings
    )
    match, record = reductions.matches[("a", "b")]
    np.testing.assert_array_equal(match.partner, np.argsort(perm))
    assert match.mutual.all() and record["mutual_fraction"] == 1.0
    assert (reductions.baselines["baseline"] < 0.9).all()
    assert torch.equal(reductions.links[("a", "b")][:, 0], torch.as_tensor(np.argsort(perm)))
    assert set(reductions.links) == {
        ("a", "b"), ("a", "b~rotation0"), ("a", "b~rotation1"),
        ("b", "a"), ("b", "a~rotation0"), ("b", "a~rotation1"),
    }  # fmt: skip
