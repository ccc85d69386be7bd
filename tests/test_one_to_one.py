"""One-to-one matching (issue 24 part 3): the assignment equals scipy's and a brute force,
finds a planted permutation, hand-checked mutual best matches, dead neurons, and the stage
on a small workspace of real pair statistics."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import invoke_command, tiny_params_dict
from scipy.optimize import linear_sum_assignment

from universal_neurons.matching.correlation import CrossMoments
from universal_neurons.matching.one_to_one import (
    NOT_AVAILABLE,
    assignment,
    match_pair,
    match_pairs,
    mutual_best,
    one_to_one_table,
    side_by_side_rows,
)
from universal_neurons.matching.pair_reductions import save_matches


@pytest.mark.parametrize("shape", [(6, 6), (7, 7), (5, 8), (30, 30)])
def test_assignment_equals_scipy_on_random_matrices(shape):
    rng = np.random.default_rng(sum(shape))
    corr = rng.uniform(-1, 1, size=shape)
    rows, cols = assignment(corr)
    # independent reference: scipy minimising the negated matrix
    ref_rows, ref_cols = linear_sum_assignment(-corr)
    np.testing.assert_array_equal(rows, ref_rows)
    np.testing.assert_array_equal(cols, ref_cols)
    assert len(set(cols)) == min(shape)


def test_assignment_is_the_best_permutation_by_brute_force():
    corr = np.random.default_rng(3).uniform(-1, 1, size=(6, 6))
    best = max(itertools.permutations(range(6)), key=lambda p: corr[range(6), p].sum())
    _, cols = assignment(corr)
    np.testing.assert_array_equal(cols, best)


def _planted(n: int, tokens: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Activations ``x [tokens, n]``, a permuted noisy copy ``y = x[:, perm] + noise`` and
    ``perm`` (y's neuron j is x's neuron perm[j])."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((tokens, n))
    perm = rng.permutation(n)
    return x, x[:, perm] + 0.3 * rng.standard_normal((tokens, n)), perm


def test_planted_permutation_is_found_exactly_even_where_greedy_fails():
    x, y, perm = _planted(40, 4000, 0)
    # a distractor: y's neuron 1 (x's perm[1]) also carries x's perm[0], more strongly than
    # the noisy copy y's neuron 0 does, so perm[0]'s best match is neuron 1 (mutually);
    # only the assignment (0.64 + 0.64 > 0.77 + 0) recovers the permutation
    noise = np.random.default_rng(1).standard_normal((4000, 2))
    y[:, 0] = x[:, perm[0]] + 1.2 * noise[:, 0]
    y[:, 1] = x[:, perm[1]] + 1.2 * x[:, perm[0]] + 0.1 * noise[:, 1]
    corr = np.corrcoef(x.T, y.T)[:40, 40:]
    match = match_pair(corr)
    expected = np.argsort(perm)  # x's neuron i is y's neuron argsort(perm)[i]
    np.testing.assert_array_equal(match.partner, expected)
    np.testing.assert_allclose(match.corr, corr[np.arange(40), expected], rtol=0, atol=1e-15)
    assert corr[perm[0]].argmax() == 1 and mutual_best(corr)[perm[0]] == 1
    assert not match.mutual[perm[0]] and not match.mutual[perm[1]]
    assert match.mutual.sum() == 38
    back = match.reversed(40)
    np.testing.assert_array_equal(back.partner, perm)


def test_mutual_best_matches_hand_checked():
    corr = np.array([[0.9, 0.8, 0.1], [0.85, 0.2, 0.3], [0.1, 0.2, 0.7]])
    # row argmax 0, 0, 2; column argmax 0, 0, 2: rows 0 and 2 are mutual, row 1 is not
    np.testing.assert_array_equal(mutual_best(corr), [0, -1, 2])
    match = match_pair(corr)
    # permutations by hand: (1, 0, 2) sums to 0.8 + 0.85 + 0.7 = 2.35, the largest
    np.testing.assert_array_equal(match.partner, [1, 0, 2])
    np.testing.assert_array_equal(match.corr, [0.8, 0.85, 0.7])
    np.testing.assert_array_equal(match.mutual, [False, False, True])


def test_dead_neurons_are_matched_last_and_get_no_correlation():
    corr = np.array([[0.2, 0.9, np.nan], [np.nan] * 3, [0.8, 0.7, np.nan]])
    # row 1 and column 2 dead: the live rows 0, 2 take the live columns (0.9 + 0.8)
    match = match_pair(corr)
    np.testing.assert_array_equal(match.partner, [1, -1, 0])
    np.testing.assert_array_equal(match.corr, [0.9, np.nan, 0.8])
    np.testing.assert_array_equal(match.mutual, [True, False, True])
    np.testing.assert_array_equal(mutual_best(corr), [1, -1, 0])
    back = match.reversed(3)
    np.testing.assert_array_equal(back.partner, [2, 0, -1])


def test_table_means_excess_threshold_and_dead_rows():
    universality = pd.DataFrame(
        {
            "layer": [0, 0, 1],
            "index": [0, 1, 0],
            "dead": [False, False, True],
            "is_universal": [True, False, False],
            "mean_baseline": [0.2, 0.3, np.nan],
        }
    )
    matches = {
        "b": match_pair(np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [np.nan] * 3])),
        "c": match_pair(np.array([[0.5, 0.6, 0.1], [0.7, 0.1, 0.0], [np.nan] * 3])),
    }
    table = one_to_one_table(universality, matches, threshold=0.5)
    # b: identity (0.9, 0.8); c: swap (0.6, 0.7) beats identity (0.5, 0.1)
    np.testing.assert_array_equal(table["partner_c"], [1, 0, -1])  # dead: none
    np.testing.assert_allclose(table["mean_assigned_corr"][:2], [0.75, 0.75])
    np.testing.assert_allclose(table["one_to_one_excess"][:2], [0.55, 0.45])
    assert table["is_one_to_one_universal"].tolist() == [True, False, False]
    assert np.isnan(table["mean_assigned_corr"][2])
    # b: both mutual; c: row 0's argmax is 1, column 1's argmax is row 0 -> mutual; row 1 too
    assert table["mutual_partners"].tolist() == [2, 2, 0]


# --- the stage, on a workspace of real pair statistics of planted activations ---------------

N_LAYERS, D_MLP, TOKENS = 2, 6, 3000
TOKEN_SET = {"split": "train", "sequences": 10, "kept_positions": TOKENS, "excluded_ids": []}


def _workspace(root, full: bool = True) -> tuple[dict, dict]:
    """seed1's activations, seed2/seed3 planted permuted copies; neuron 3 of seed1 (and its
    copies) dead. Writes correlate's summary and matching (``pair_reductions.save_matches`` of
    the pairs' real statistics, as correlate writes them) and universality's tables and
    summary; returns ``(activations, perms)``."""
    n = N_LAYERS * D_MLP
    rng = np.random.default_rng(7)
    x = rng.standard_normal((TOKENS, n))
    x[:, 3] = 1.0
    perms = {"seed1": np.arange(n), "seed2": rng.permutation(n), "seed3": rng.permutation(n)}
    acts = {
        name: x[:, p] + 0.5 * rng.standard_normal((TOKENS, n)) * (x[:, p] != 1.0)
        for name, p in perms.items()
    }
    names = list(perms)
    pairs = [f"{a}__{b}" for a, b in itertools.combinations(names, 2)]
    correlate = root / "data" / "correlate"
    correlate.mkdir(parents=True)
    if full:
        correlations = (
            ((a, b), CrossMoments.of_batch(acts[a], acts[b], "float64").correlation().numpy())
            for a, b in itertools.combinations(names, 2)
        )
        save_matches(correlate, match_pairs(correlations))
    summary = {
        "models": names, "pairs": pairs, "kept_positions": TOKENS, "batches": 1,
        "n_layers": N_LAYERS, "d_mlp": D_MLP, "products": "float64", "device": "cpu",
        "dead": dict.fromkeys(names, 1), "excluded_ids": [], "token_set": TOKEN_SET,
        "outputs": "full_pairs" if full else "maxima", "group": names,
    }  # fmt: skip
    (correlate / "summary.json").write_text(json.dumps(summary))
    universality = root / "data" / "universality"
    universality.mkdir(parents=True)
    (universality / "summary.json").write_text(json.dumps({"token_set": TOKEN_SET, "group": names}))
    for name, perm in perms.items():
        dead = perm == 3
        pd.DataFrame(
            {
                "layer": np.arange(n) // D_MLP,
                "index": np.arange(n) % D_MLP,
                "dead": dead,
                "is_universal": ~dead & (np.arange(n) % 2 == 0),
                "mean_baseline": np.where(dead, np.nan, np.where(np.arange(n) < 6, 0.1, 0.4)),
            }
        ).to_parquet(universality / f"{name}.parquet")
    params = tiny_params_dict(train={"seeds": [1, 2, 3]}, universality={"threshold": 0.5})
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return acts, perms


def test_stage_recovers_the_planted_group(tmp_path, monkeypatch):
    acts, perms = _workspace(tmp_path)
    monkeypatch.chdir(tmp_path)
    result = invoke_command(["one_to_one"])
    assert result.exit_code == 0, result.output
    n = N_LAYERS * D_MLP
    table = pd.read_parquet(tmp_path / "data" / "one_to_one" / "seed2.parquet")
    live = table["layer"].to_numpy() * D_MLP + table["index"].to_numpy() != int(
        np.flatnonzero(perms["seed2"] == 3)[0]
    )
    # seed2's neuron j is seed1's perm2[j]; seed3's neuron k is seed1's perm3[k]
    to_seed1 = perms["seed2"]
    to_seed3 = np.argsort(perms["seed3"])[perms["seed2"]]
    np.testing.assert_array_equal(table["partner_seed1"][live], to_seed1[live])
    np.testing.assert_array_equal(table["partner_seed3"][live], to_seed3[live])
    assert (table["partner_seed1"][~live] == -1).all()
    reference = np.array(
        [
            np.corrcoef(acts["seed2"][:, j], acts["seed1"][:, to_seed1[j]])[0, 1]
            if live[j]
            else np.nan
            for j in range(n)
        ]
    )
    np.testing.assert_allclose(table["corr_seed1"], reference, atol=1e-9)
    assert (table["mutual_partners"][live] == 2).all()
    expected = ~np.isnan(table["mean_baseline"]) & (
        table["mean_assigned_corr"] - table["mean_baseline"] > 0.5
    )
    assert table["is_one_to_one_universal"].tolist() == expected.tolist()
    # noise 0.5 relative to 1: every copy correlates ~0.8, so 0.1-baseline neurons pass, 0.4 ones do not
    assert table["is_one_to_one_universal"].sum() == (table["mean_baseline"] == 0.1).sum()
    results = json.loads((tmp_path / "results" / "one_to_one.json").read_text())
    row = results["models"]["seed2"]
    assert row["n_live"] == n - 1 and row["percent_mutual_all"] == 100.0
    assert row["n_both"] == int((table["is_universal"] & table["is_one_to_one_universal"]).sum())
    rows = side_by_side_rows(results)
    assert [r["model"] for r in rows] == ["seed1", "seed2", "seed3"]
    metrics = json.loads((tmp_path / "metrics" / "one_to_one.json").read_text())
    assert metrics["mean_percent_mutual_all"] == 100.0
    # a rerun writes the same bytes (DVC sees no change downstream)
    written = {p: p.read_bytes() for p in tmp_path.glob("*/**/*one_to_one*") if p.is_file()}
    written |= {p: p.read_bytes() for p in (tmp_path / "data" / "one_to_one").iterdir()}
    assert invoke_command(["one_to_one"]).exit_code == 0
    assert {p: p.read_bytes() for p in written} == written


def test_stage_without_full_pairs_says_not_available(tmp_path, monkeypatch):
    _workspace(tmp_path, full=False)
    monkeypatch.chdir(tmp_path)
    result = invoke_command(["one_to_one"])
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "results" / "one_to_one.json").read_text())
    assert results["available"] is False and results["reason"] == NOT_AVAILABLE
    assert json.loads((tmp_path / "metrics" / "one_to_one.json").read_text()) == {
        "available": False
    }
    assert side_by_side_rows(results) == []
    assert not list((tmp_path / "data" / "one_to_one").glob("*.parquet"))
