"""Pooled findings (description/findings.py): van Elteren's stratified test, the stratified
rank-biserial effect and its bootstrap interval, checked against scipy, brute force and
planted groups; and the pooled table of the ``findings`` tool."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import invoke_command, tiny_params_dict
from scipy import stats as scipy_stats

from universal_neurons.description import findings
from universal_neurons.description.findings import (
    Stratum,
    bootstrap_interval,
    mann_whitney_u,
    pooled_effect,
    pooled_findings,
    u_variance,
    van_elteren,
)
from universal_neurons.description.statistics import PAPER_FINDINGS, compare_groups


def _quantiles(n: int) -> np.ndarray:
    """``n`` evenly spaced standard normal quantiles: a deterministic 'other' sample."""
    return scipy_stats.norm.ppf((np.arange(n) + 0.5) / n)


def test_mann_whitney_u_counts_pairs_with_ties_as_halves():
    rng = np.random.default_rng(0)
    universal = rng.integers(0, 6, 17).astype(np.float64)  # many ties
    other = rng.integers(0, 6, 41).astype(np.float64)
    by_hand = sum(1.0 if u > o else 0.5 if u == o else 0.0 for u in universal for o in other)
    assert mann_whitney_u(universal, other) == by_hand
    assert mann_whitney_u(universal, other) == scipy_stats.mannwhitneyu(universal, other).statistic


def test_one_stratum_is_the_mann_whitney_normal_approximation():
    """With one model, van Elteren's z and p are the tie-corrected normal approximation of
    scipy's Mann-Whitney test (no continuity correction), and the pooled r is the per-model
    rank-biserial effect of ``compare_groups``."""
    rng = np.random.default_rng(1)
    universal = np.round(rng.normal(0.4, 1.0, 30), 1)  # rounded: ties
    other = np.round(rng.normal(0.0, 1.0, 200), 1)
    z, p_value = van_elteren([Stratum(universal, other)])
    reference = scipy_stats.mannwhitneyu(
        universal, other, method="asymptotic", use_continuity=False
    )
    assert p_value == pytest.approx(reference.pvalue, rel=1e-9)
    assert z > 0  # universal values are larger
    effect = compare_groups(universal, other)["effect_size"]
    assert pooled_effect([Stratum(universal, other)]) == pytest.approx(effect, abs=1e-12)
    # the tie-corrected variance, by the textbook formula in float64
    counts = np.unique(np.concatenate([universal, other]), return_counts=True)[1]
    n_u, n_o, n = 30, 200, 230
    textbook = n_u * n_o / 12 * ((n + 1) - (counts**3 - counts).sum() / (n * (n - 1)))
    assert u_variance(universal, other) == pytest.approx(textbook, rel=1e-12)


def test_pooling_finds_an_effect_no_single_model_can_show():
    """Five planted models, each with 5 universal neurons at fixed normal percentiles
    (30..90 %) among 200 others at every half-percentile; each model on its own scale and
    level. Alone, no model is significant (p = 0.33); pooled, the effect (r = 0.26 in every
    model) is (p = 0.027)."""
    other = _quantiles(200)
    universal = scipy_stats.norm.ppf([0.3, 0.5, 0.65, 0.8, 0.9])
    strata = [Stratum(3.0**i * universal + 10 * i, 3.0**i * other + 10 * i) for i in range(5)]
    for stratum in strata:
        alone = compare_groups(stratum.universal, stratum.other)
        assert alone["p_value"] > 0.3
        assert alone["effect_size"] == pytest.approx(0.26)
    z, p_value = van_elteren(strata)
    assert z > 0 and p_value < 0.03
    assert pooled_effect(strata) == pytest.approx(0.26)  # 2 * 325 / 1000 - 1 in every stratum


def test_pooling_does_not_invent_an_effect_from_model_levels():
    """Simpson's trap: model A has many universal neurons and all its values high, model B few
    and all values low; within each model universal and other neurons are alike. Naive
    pooling (one sample of all neurons) finds a huge effect; the stratified test does not."""
    other = _quantiles(100)
    high = Stratum(other[::2] + 5.0, other[1::2] + 5.0)  # 50 universal, 50 other, same law
    low = Stratum(other[::10], other)  # 10 universal at every tenth quantile
    naive = scipy_stats.mannwhitneyu(
        np.concatenate([high.universal, low.universal]), np.concatenate([high.other, low.other])
    )
    assert naive.pvalue < 1e-6
    z, p_value = van_elteren([high, low])
    assert p_value > 0.5
    assert abs(pooled_effect([high, low])) < 0.05


def test_no_effect_groups_stay_at_the_alpha_rate():
    """400 seeded replicate groups (5 models, 6 universal among 150 neurons, all from one law):
    the pooled test rejects at p < 0.05 in 5 % of them, within three binomial standard errors
    (9 to 31 of 400)."""
    rng = np.random.default_rng(2024)
    rejections = 0
    for _ in range(400):
        strata = [Stratum(rng.normal(size=6), rng.normal(size=144)) for _ in range(5)]
        rejections += van_elteren(strata)[1] < 0.05
    assert 9 <= rejections <= 31


def test_interval_covers_a_planted_effect():
    """Normal samples shifted by delta have r = 2 Phi(delta / sqrt 2) - 1; the 95 % bootstrap
    interval covers it in about 95 % of 60 seeded replicate groups (at least 51: a binomial
    lower tail of < 0.5 %) and the point estimate is unbiased within 0.02."""
    delta = 0.5
    truth = 2 * scipy_stats.norm.cdf(delta / np.sqrt(2)) - 1
    rng = np.random.default_rng(7)
    covered, estimates = 0, []
    for _ in range(60):
        strata = [Stratum(rng.normal(delta, 1, 20), rng.normal(0, 1, 200)) for _ in range(3)]
        low, high = bootstrap_interval(strata, 0.95, rng, 300)
        covered += low <= truth <= high
        estimates.append(pooled_effect(strata))
    assert covered >= 51
    assert np.mean(estimates) == pytest.approx(truth, abs=0.02)


def _table(universal: np.ndarray, other: np.ndarray, dead: int = 0) -> pd.DataFrame:
    """A neuron table with one metric column per finding (all the same values), plus dead
    neurons whose planted values must be ignored."""
    values = np.concatenate([universal, other, np.full(dead, 100.0)])
    table = pd.DataFrame(
        {
            "layer": 0,
            "index": np.arange(len(values)),
            "dead": np.r_[np.zeros(len(values) - dead, bool), np.ones(dead, bool)],
            "is_universal": np.r_[
                np.ones(len(universal), bool), np.zeros(len(values) - len(universal), bool)
            ],
        }
    )
    for _, metric, _ in PAPER_FINDINGS:
        table[metric] = values
    return table


def test_pooled_findings_of_neuron_tables_is_seeded_and_skips_models_without_universal():
    other = _quantiles(200)
    tables = {
        "seed1": _table(other[150:160], other, dead=5),
        "seed2": _table(np.array([]), other),  # no universal neuron: not in the pool
    }
    first = pooled_findings(tables, 0.9, seed=3, progress=False)
    again = pooled_findings(tables, 0.9, seed=3, progress=False)
    assert first == again
    entry = first["sparsity"]
    assert set(entry) == set(findings.POOLED_KEYS)
    assert entry["models"] == ["seed1"]
    assert (entry["n_universal"], entry["n_other"]) == (10, 200)
    by_hand = compare_groups(other[150:160], other)
    assert entry["effect_size"] == pytest.approx(by_hand["effect_size"])
    assert entry["ci_low"] < entry["effect_size"] < entry["ci_high"]
    other_seed = pooled_findings(tables, 0.9, seed=4, progress=False)["sparsity"]
    assert other_seed["ci_low"] != entry["ci_low"]
    empty = pooled_findings({"seed2": tables["seed2"]}, 0.9, seed=3, progress=False)["kurt"]
    assert empty["effect_size"] is None and empty["p_value"] is None and empty["models"] == []


def _pooled_entry(r: float, p: float, low: float, high: float) -> dict:
    return {"effect_size": r, "p_value": p, "ci_low": low, "ci_high": high, "z": 1.0,
            "n_universal": 10, "n_other": 100, "models": ["seed1", "seed2"]}  # fmt: skip


def test_findings_tool_shows_the_pooled_table_against_the_null(tmp_path):
    """The tool's pooled table: the real pooled outcome with r and interval, p, what the null
    selection gives and the verdict, within 120 columns; --long gives the same as sentences."""
    per_model = {m: {"median_universal": 1.0, "median_other": 0.0, "effect_size": 0.5,
                     "p_value": 0.2, "n_universal": 3, "n_other": 50}
                 for _, m, _ in PAPER_FINDINGS}  # fmt: skip
    real = {
        m: _pooled_entry(0.6 * s, 1e-4, *sorted((0.4 * s, 0.8 * s))) for _, m, s in PAPER_FINDINGS
    }
    null = {m: _pooled_entry(0.1 * s, 0.5, -0.1, 0.3) for _, m, s in PAPER_FINDINGS}
    null["sparsity"] = _pooled_entry(-0.55, 1e-3, -0.7, -0.45)  # selection alone: as strong
    stats_path, null_path = tmp_path / "stats.json", tmp_path / "null_control.json"
    stats_path.write_text(json.dumps({"models": {"seed1": per_model}, "pooled": real}))
    null_path.write_text(json.dumps({"run": True, "null_group": "untrained", "pooled": null}))
    params = tmp_path / "params.yaml"
    params.write_text(json.dumps(tiny_params_dict()))
    args = ["findings", "--metrics", str(stats_path), "--null", str(null_path)]
    result = invoke_command([*args, "--params", str(params)])
    assert result.exit_code == 0, result.output
    assert max(len(line) for line in result.output.splitlines()) <= 120
    pooled = result.output.split("\n\n")[2].splitlines()
    assert pooled[0].split() == ["finding", "pooled", "over", "the", "group", "p", "selection",
                                 "alone", "against", "null"]  # fmt: skip
    rows = {line.split("(")[1].split(")")[0]: line for line in pooled[2:]}
    assert "holds +0.60 [+0.40,+0.80]" in rows["l2_penalty"]
    assert "n.s. +0.10" in rows["l2_penalty"] and rows["l2_penalty"].endswith("beyond selection")
    assert "holds -0.55" in rows["sparsity"]
    assert rows["sparsity"].endswith("explained by selection")
    long = invoke_command([*args, "--long", "--params", str(params)])
    assert "- lower activation frequency (sparsity): holds -0.60 [-0.80,-0.40], z = 1.00" in (
        long.output
    )
    assert long.output.rstrip().endswith("explained by selection.")
    missing = invoke_command([*args[:3], "--null", str(tmp_path / "none.json"), "--params",
                              str(params)])  # fmt: skip
    assert "no null control (run the null_control stage)" in missing.output
