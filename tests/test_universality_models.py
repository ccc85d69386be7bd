"""Correlate, baseline and universality on the tiny really-trained seed group.

References are independent: all activations of the token set captured at once and
correlated with numpy.corrcoef in float64; a planted twin model (model A with its MLP
neurons permuted in every layer, function unchanged) whose neurons must each find
their twin with correlation 1. These tests share the session's tiny_group fixture
(training it takes ~1 min on two cores), hence ``slow``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from universal_neurons.matching.activations import (
    excluded_token_ids,
    kept_mask,
    load_analysis_set,
)
from universal_neurons.matching.baseline import pair_baselines
from universal_neurons.matching.collect import (
    NonFiniteActivationError,
    NonFiniteStatisticsError,
    collect_model,
    kept_neuron_matrix,
)
from universal_neurons.matching.pairs import correlate_group, pair_maxima
from universal_neurons.matching.universality import model_summary, universality_table
from universal_neurons.models.loading import capture_mlp, load_model
from universal_neurons.text.tokens import load_tokenizer, load_tokens

pytestmark = pytest.mark.slow

N_SEQUENCES = 120
UNEVEN_BATCH = 23  # 120 = 5 * 23 + 5 sequences, and a varying number of kept positions each


@pytest.fixture(scope="module")
def analysis(tiny_tokens_dir):
    from conftest import tiny_params

    cfg = tiny_params().analysis
    tokens = load_tokens(tiny_tokens_dir, cfg.split)[:N_SEQUENCES]
    return tokens, excluded_token_ids(load_tokenizer(tiny_tokens_dir), cfg)


def _all_kept(model, tokens, excluded) -> np.ndarray:
    """Reference: every post-activation at the kept positions, in one forward pass, float64."""
    batch = torch.as_tensor(tokens.astype(np.int64))
    acts = capture_mlp(model, batch, ("post",))["post"]
    return kept_neuron_matrix(acts, kept_mask(batch, excluded)).double().numpy()


def _reference(x, y):
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.corrcoef(x, y, rowvar=False)[: x.shape[1], x.shape[1] :]
    filled = np.where(np.isnan(corr), -np.inf, corr)
    values = filled.max(axis=1)
    return corr, np.where(np.isfinite(values), values, np.nan), filled.argmax(axis=1)


def _check_maxima(table, model, partner, corr, values, index, tol, exact_argmax=True):
    rows = table[(table["model"] == model) & (table["partner"] == partner)]
    got = rows["max_corr"].to_numpy()
    dead = np.isnan(values)
    np.testing.assert_array_equal(np.isnan(got), dead)
    np.testing.assert_array_equal(rows["dead"].to_numpy(), dead)
    assert np.abs(got[~dead] - values[~dead]).max() <= tol
    d_mlp = int(rows["index"].max()) + 1
    flat = rows["argmax_layer"].to_numpy() * d_mlp + rows["argmax_index"].to_numpy()
    if exact_argmax:
        np.testing.assert_array_equal(flat[~dead], index[~dead])
    else:  # near-ties may swap: the chosen partner neuron must still be a maximum within tol
        chosen = corr[np.flatnonzero(~dead), flat[~dead]]
        assert np.abs(chosen - values[~dead]).max() <= tol
        assert (flat[~dead] == index[~dead]).mean() > 0.95


@pytest.mark.parametrize(("products", "tol"), [("float32", 1e-6), ("bfloat16", 1e-3)])
def test_group_maxima_match_corrcoef_on_trained_models(tiny_group, analysis, products, tol):
    tokens, excluded = analysis
    models = {f"seed{s}": load_model(str(tiny_group[s])) for s in (1, 2)}
    stats = correlate_group(models, tokens, excluded, UNEVEN_BATCH, products, progress=False)
    x, y = (_all_kept(models[name], tokens, excluded) for name in ("seed1", "seed2"))
    assert stats.kept_positions == len(x) and stats.batches == 6
    corr, values_xy, index_xy = _reference(x, y)
    pair = stats.pairs[("seed1", "seed2")]
    live = ~np.isnan(corr)
    assert np.abs(pair.correlation().numpy()[live] - corr[live]).max() <= tol
    table, dead = pair_maxima(stats)
    assert dead == {
        "seed1": int(np.isnan(values_xy).sum()),
        "seed2": int(np.isnan(corr).all(0).sum()),
    }
    exact = products == "float32"  # bf16 rounding may swap near-tied argmaxes
    _check_maxima(table, "seed1", "seed2", corr, values_xy, index_xy, tol, exact)
    corr_yx, values_yx, index_yx = _reference(y, x)
    _check_maxima(table, "seed2", "seed1", corr_yx, values_yx, index_yx, tol, exact)


def test_collect_moments_and_within_layer_covariance(tiny_group, analysis):
    tokens, excluded = analysis
    model = load_model(str(tiny_group[3]))
    result = collect_model(model, "seed3", tokens, excluded, UNEVEN_BATCH, progress=False)
    x = _all_kept(model, tokens, excluded)
    assert result.kept_positions == len(x)
    np.testing.assert_allclose(result.moments["post"].mean, x.mean(0), rtol=0, atol=1e-6)
    np.testing.assert_allclose(result.moments["post"].var, x.var(0), rtol=1e-5)
    d = result.d_mlp
    cov = result.within_layer_covariance()
    for layer in range(result.n_layers):
        block = x[:, layer * d : (layer + 1) * d]
        np.testing.assert_allclose(cov[layer], np.cov(block, rowvar=False, bias=True), atol=1e-6)


# --- planted structure -------------------------------------------------------------------

DEAD = {0: 5, 1: 9}  # layer -> neuron of model A made dead


def _dead(n_layers: int) -> dict[int, int]:
    return {layer: neuron for layer, neuron in DEAD.items() if layer < n_layers}


def _write_model(source: Path, target: Path, state: dict) -> None:
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("checkpoints"))
    save_file(state, str(target / "model.safetensors"), metadata={"format": "pt"})


def _planted_pair(source: Path, root: Path, n_layers: int):
    """Model A (source with DEAD neurons constant 0) and B (A with MLP neurons permuted).

    B's neuron j is A's neuron perm[l][j]; A's neuron i has twin inv[l][i] in B.
    """
    state = load_file(str(source / "model.safetensors"))
    for layer, neuron in _dead(n_layers).items():
        state[f"transformer.h.{layer}.mlp.c_fc.weight"][:, neuron] = 0.0
        state[f"transformer.h.{layer}.mlp.c_fc.bias"][neuron] = -100.0  # gelu_new(-100) == 0
    _write_model(source, root / "A", state)
    rng = np.random.default_rng(0)
    perms, permuted = [], dict(state)
    for layer in range(n_layers):
        perm = torch.as_tensor(
            rng.permutation(state[f"transformer.h.{layer}.mlp.c_fc.bias"].numel())
        )
        perms.append(perm.numpy())
        prefix = f"transformer.h.{layer}.mlp"
        permuted[f"{prefix}.c_fc.weight"] = state[f"{prefix}.c_fc.weight"][:, perm].contiguous()
        permuted[f"{prefix}.c_fc.bias"] = state[f"{prefix}.c_fc.bias"][perm].contiguous()
        permuted[f"{prefix}.c_proj.weight"] = state[f"{prefix}.c_proj.weight"][perm, :].contiguous()
    _write_model(source, root / "B", permuted)
    inverse = [np.argsort(p) for p in perms]
    return root / "A", root / "B", inverse


def _wide_random_model(root: Path) -> Path:
    """An untrained one-layer GPT-2 (d_model 256, d_mlp 256): its neurons are far less
    mutually correlated than the tiny trained ones, so the rotation baseline is low."""
    from universal_neurons.config import ModelConfig
    from universal_neurons.models.gpt2 import gpt2_config, init_model, save_model

    shape = ModelConfig(n_layers=1, d_model=256, n_heads=4, d_mlp=256)
    save_model(init_model(gpt2_config(shape, 512, 32, 0), seed=0), root / "wide")
    return root / "wide"


def _planted_universality(source: Path, tokens, excluded, tmp_path: Path):
    """Run the whole analysis on the planted pair; return what the assertions need."""
    from transformers import GPT2LMHeadModel

    config = json.loads((source / "config.json").read_text())
    n_layers, d_mlp = config["n_layer"], config["n_inner"]
    dir_a, dir_b, inverse = _planted_pair(source, tmp_path, n_layers)

    # the permutation leaves the function unchanged
    batch = torch.as_tensor(tokens[:4].astype(np.int64))
    with torch.no_grad():
        logits_a = GPT2LMHeadModel.from_pretrained(dir_a).eval()(batch).logits
        logits_b = GPT2LMHeadModel.from_pretrained(dir_b).eval()(batch).logits
    torch.testing.assert_close(logits_a, logits_b, rtol=0, atol=1e-4)

    models = {"A": load_model(str(dir_a)), "B": load_model(str(dir_b))}
    stats = correlate_group(models, tokens, excluded, UNEVEN_BATCH, "float32", progress=False)
    maxima, dead_counts = pair_maxima(stats)
    dead = _dead(n_layers)
    assert dead_counts == {"A": len(dead), "B": len(dead)}

    twin = np.concatenate([layer * d_mlp + inverse[layer] for layer in range(n_layers)])
    dead_a = np.zeros(n_layers * d_mlp, dtype=bool)
    dead_a[[layer * d_mlp + neuron for layer, neuron in dead.items()]] = True
    rows = maxima[(maxima["model"] == "A") & (maxima["partner"] == "B")]
    np.testing.assert_array_equal(rows["dead"].to_numpy(), dead_a)
    assert np.isnan(rows["max_corr"].to_numpy()[dead_a]).all()
    live_corr = rows["max_corr"].to_numpy()[~dead_a]
    assert np.abs(live_corr - 1.0).max() <= 1e-6
    argmax = rows["argmax_layer"].to_numpy() * d_mlp + rows["argmax_index"].to_numpy()
    np.testing.assert_array_equal(argmax[~dead_a], twin[~dead_a])

    within = {
        name: collect_model(
            model, name, tokens, excluded, UNEVEN_BATCH, progress=False
        ).within_layer_covariance()
        for name, model in models.items()
    }
    baseline = pair_baselines(
        stats.pairs[("A", "B")], ("A", "B"), (1, 2), (within["A"], within["B"]), "rotation", 2, 0
    )
    table = universality_table(maxima, baseline, "A", threshold=0.5)
    live = ~table["dead"].to_numpy()
    np.testing.assert_array_equal(live, ~dead_a)
    assert table.loc[~live, ["max_corr", "mean_corr", "excess_corr"]].isna().all(axis=None)
    assert not table.loc[~live, "is_universal"].any()
    np.testing.assert_array_equal(
        table.loc[live, "best_partner_layer"] * d_mlp + table.loc[live, "best_partner_index"],
        twin[~dead_a],
    )
    return table, n_layers, d_mlp


def test_planted_permuted_twins_of_a_wide_model_are_universal(analysis, tmp_path):
    tokens, excluded = analysis
    table, n_layers, d_mlp = _planted_universality(
        _wide_random_model(tmp_path), tokens, excluded, tmp_path
    )
    live = ~table["dead"].to_numpy()
    assert table.loc[live, "mean_baseline"].max() < 0.5  # well below the twin's 1
    assert table.loc[live, "mean_baseline"].median() < 0.4
    assert (table.loc[live, "excess_corr"] > 0.5).all()
    assert table["is_universal"].to_numpy().tolist() == live.tolist()
    assert model_summary(table, n_layers) == {
        "percent_universal": 100.0,
        "n_universal": n_layers * d_mlp - len(_dead(n_layers)),
        "n_neurons": n_layers * d_mlp,
        "n_dead": len(_dead(n_layers)),
        "percent_universal_per_layer": [100.0] * n_layers,
    }


def test_planted_permuted_twins_of_a_trained_model(tiny_group, analysis, tmp_path):
    """The tiny trained models' neurons share two dominant directions per layer, so random
    rotations already correlate highly; the twin still stands out above every baseline."""
    tokens, excluded = analysis
    table, _, _ = _planted_universality(tiny_group[1], tokens, excluded, tmp_path)
    live = ~table["dead"].to_numpy()
    assert (table.loc[live, "mean_baseline"] < 1.0 - 1e-3).all()
    assert (table.loc[live, "excess_corr"] > 1e-3).all()
    np.testing.assert_array_equal(
        table["is_universal"], table["excess_corr"].fillna(-1).to_numpy() > 0.5
    )


def test_non_finite_activations_stop_collect_naming_model_layer_and_batch(
    tiny_group, analysis, tmp_path
):
    tokens, excluded = analysis
    state = load_file(str(tiny_group[2] / "model.safetensors"))
    # finite weights (a NaN weight is refused when the model loads) whose products overflow
    # float32: neuron 3 of layer 1 gets an infinite pre-activation
    state["transformer.h.1.mlp.c_fc.weight"][:, 3] *= 1e38
    assert torch.isfinite(state["transformer.h.1.mlp.c_fc.weight"]).all()
    _write_model(tiny_group[2], tmp_path / "broken", state)
    model = load_model(str(tmp_path / "broken"))
    # overflow shows as non-finite activations or, one step later, non-finite statistics:
    # either way the message names the model, the layer and the batch
    raised = (NonFiniteActivationError, NonFiniteStatisticsError)
    with pytest.raises(raised, match=r"model broken:? .*layer 1.*batch 0"):
        collect_model(model, "broken", tokens, excluded, UNEVEN_BATCH, progress=False)


# --- the stages, end to end ----------------------------------------------------------------


def test_stages_end_to_end(tiny_group, tiny_tokens_dir, tmp_path):
    from conftest import tiny_params

    from stages import baseline, collect, correlate, universality
    from universal_neurons.pipeline.layout import Layout

    params = tiny_params(analysis={"max_sequences": 100}, baseline={"samples": 2})
    models_dir = tiny_group[1].parent
    layout = Layout.at(tmp_path, tokens=tiny_tokens_dir, models=models_dir)
    out = layout.data
    for seed in params.train.seeds:
        collect.run(params, layout, seed, progress=False)
    correlate.run(params, layout, progress=False)
    baseline.run(params, layout)
    metrics = universality.run(params, layout)
    _, _, kept = load_analysis_set(tiny_tokens_dir, params.analysis)

    moments = pd.read_parquet(out / "collect" / "seed1" / "moments.parquet")
    assert list(moments.columns) == ["layer", "index", "count"] + [
        f"{kind}_{stat}"
        for kind in ("pre", "post")
        for stat in ("mean", "var", "skew", "kurt", "sparsity")
    ]
    assert len(moments) == 128 and (moments["count"] == kept).all()
    # 128 neurons per model, below correlate.full_pairs_max_neurons: correlate takes the
    # within-layer covariances itself, and collect writes none (4 MB a model at the default)
    assert sorted(p.name for p in (out / "collect" / "seed1").iterdir()) == [
        "moments.parquet",
        "summary.json",
    ]

    written = json.loads((tmp_path / "results" / "universality.json").read_text())
    assert written == metrics
    assert set(written) == {"threshold", "kept_positions", "mean_percent_universal", "models"}
    assert written["threshold"] == 0.5 and written["kept_positions"] == kept
    assert list(written["models"]) == ["seed1", "seed2", "seed3"]
    maxima = pd.read_parquet(out / "correlate" / "max_corr.parquet")
    for name, summary in written["models"].items():
        table = pd.read_parquet(out / "universality" / f"{name}.parquet")
        assert list(table.columns[:11]) == [
            "layer", "index", "dead", "max_corr", "mean_corr", "min_corr",
            "max_baseline", "mean_baseline", "min_baseline", "excess_corr", "is_universal",
        ]  # fmt: skip
        # the table's reductions over partners, recomputed from correlate's long table
        per_partner = maxima[maxima["model"] == name].pivot_table(
            index=["layer", "index"], columns="partner", values="max_corr"
        )
        np.testing.assert_allclose(table["max_corr"], per_partner.max(axis=1), rtol=0, atol=0)
        np.testing.assert_allclose(table["mean_corr"], per_partner.mean(axis=1), atol=1e-15)
        assert per_partner.shape[1] == 2 and name not in per_partner.columns
        expected = table["excess_corr"] > 0.5
        assert (table["is_universal"] == expected).all()
        live = ~table["dead"]
        assert summary["n_universal"] == int(table["is_universal"].sum())
        assert summary["n_dead"] == int((~live).sum()) and summary["n_neurons"] == 128
        assert summary["percent_universal"] == pytest.approx(
            100 * table["is_universal"].sum() / live.sum()
        )
        assert len(summary["percent_universal_per_layer"]) == 2
    assert written["mean_percent_universal"] == pytest.approx(
        np.mean([m["percent_universal"] for m in written["models"].values()])
    )
    headline = json.loads((tmp_path / "metrics" / "universality.json").read_text())
    tables = [pd.read_parquet(out / "universality" / f"seed{s}.parquet") for s in (1, 2, 3)]
    live_tables = pd.concat([t[~t["dead"]] for t in tables])
    assert headline == {
        "mean_percent_universal": written["mean_percent_universal"],
        "percent_universal": {n: m["percent_universal"] for n, m in written["models"].items()},
        "median_corr": pytest.approx(float(np.median(live_tables["mean_corr"])), abs=1e-15),
        "median_baseline": pytest.approx(float(np.median(live_tables["mean_baseline"])), abs=1e-15),
    }
    per_layer = pd.read_csv(tmp_path / "metrics" / "universality_per_layer.csv")
    assert list(per_layer.columns) == ["model", "layer", "percent_universal"]
    assert len(per_layer) == 6
    base = json.loads((tmp_path / "results" / "baseline.json").read_text())
    assert base["kind"] == "rotation" and len(base["models"]["seed2"]["sample_means"]) == 2


def test_correlate_takes_the_within_layer_covariances_collect_writes_above_the_threshold(
    tiny_group, tiny_tokens_dir, tmp_path
):
    """Above ``correlate.full_pairs_max_neurons`` collect writes each model's within-layer
    covariances (correlate's units and uncertainty_resamples' slabs read them); below it
    correlate takes them itself by the same pass: the same arrays, bit for bit, and equal to
    numpy's covariance of the captured activations."""
    from conftest import tiny_params

    from stages import collect, correlate
    from universal_neurons.pipeline.layout import Layout

    params = tiny_params(analysis={"max_sequences": 40}, correlate={"full_pairs_max_neurons": 64})
    layout = Layout.at(tmp_path, tokens=tiny_tokens_dir, models=tiny_group[1].parent)
    for seed in params.train.seeds:
        collect.run(params, layout, seed, progress=False)
    tokens, excluded, _ = load_analysis_set(tiny_tokens_dir, params.analysis)
    taken = correlate.within_covariances(params, layout, (tokens, excluded), progress=False)
    assert list(taken) == ["seed1", "seed2", "seed3"]
    for seed in params.train.seeds:
        written = np.load(layout.model_dir("collect", seed) / "within_layer_cov.npy")
        assert written.dtype == np.float64 and written.shape == (2, 64, 64)
        np.testing.assert_array_equal(taken[f"seed{seed}"], written)
    x = _all_kept(load_model(str(tiny_group[2])), tokens, excluded)
    for layer in range(2):
        block = x[:, layer * 64 : (layer + 1) * 64]
        reference = np.cov(block, rowvar=False, bias=True)
        np.testing.assert_allclose(taken["seed2"][layer], reference, rtol=0, atol=1e-6)
