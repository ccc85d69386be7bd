"""Universality across training: checkpoints of the train stage and the emergence stage.

The emergence stage's numbers are checked twice: on the final models with the analysis
stages' own token set they equal the universality stage's (one code path, 1e-9), and at
every checkpoint they equal an independent float64 reference (activations from the plain
Hugging Face model, numpy.corrcoef, partner activations rotated explicitly).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_params
from transformers import GPT2LMHeadModel

from stages import (
    baseline,
    collect,
    correlate,
    emergence,
    emergence_points,
    train,
    universality,
)
from universal_neurons.description.statistics import first_universal_tokens
from universal_neurons.matching.activations import excluded_token_ids
from universal_neurons.matching.baseline import mixing_matrices
from universal_neurons.models.training import heldout_loss
from universal_neurons.outputs.run_contents import read_emergence
from universal_neurons.pipeline.layout import Layout
from universal_neurons.text.tokens import load_tokenizer, load_tokens

COMPARED = ["mean_corr", "mean_baseline", "excess_corr"]


def test_first_universal_tokens_by_hand():
    neurons = pd.DataFrame(
        {
            "model": ["a"] * 6 + ["b"] * 3,
            "tokens": [10, 10, 20, 20, 40, 40, 10, 20, 40],
            "layer": [0, 1, 0, 1, 0, 1, 0, 0, 0],
            "index": [0] * 9,
            "is_universal": [False, True, True, False, True, True, False, False, False],
        }
    )
    got = first_universal_tokens(neurons)
    assert got[["model", "layer", "index"]].to_dict("list") == {
        "model": ["a", "a", "b"],
        "layer": [0, 1, 0],
        "index": [0, 0, 0],
    }
    np.testing.assert_array_equal(got["first_universal_tokens"], [20.0, 10.0, np.nan])


def test_emergence_csv_becomes_mlflow_series_with_tokens_as_step(tmp_path):
    path = tmp_path / "emergence.csv"
    path.write_text(
        "tokens,mean_percent_universal,seed1_percent_universal\n4096,0.0,0.0\n8192,0.5,1.0\n"
    )
    series = read_emergence(path)
    assert series == {
        "emergence.mean_percent_universal": [(4096, 0.0), (8192, 0.5)],
        "emergence.seed1_percent_universal": [(4096, 0.0), (8192, 1.0)],
    }
    assert read_emergence(tmp_path / "missing.csv") == {}


@pytest.mark.slow
def test_checkpoints_are_saved_at_the_configured_token_counts(tiny_tokens_dir, tmp_path):
    # 16 x 32 = 512 tokens per step: 25,600 tokens are 50 whole steps; 40,000 need 79 steps
    params = tiny_params(train={"tokens_per_model": 60_000, "checkpoint_tokens": [25_600, 40_000]})
    train.train_seed(params, 1, tiny_tokens_dir, tmp_path / "seed1")
    checkpoints = tmp_path / "seed1" / "checkpoints"
    records = [
        json.loads((checkpoints / f"tokens_{n}" / "checkpoint.json").read_text())
        for n in (25_600, 40_000)
    ]
    assert records == [
        {"requested_tokens": 25_600, "steps": 50, "tokens": 25_600},
        {"requested_tokens": 40_000, "steps": 79, "tokens": 40_448},
    ]
    # the 50-step checkpoint is the model the training curve evaluated after step 50
    curve = pd.read_csv(tmp_path / "seed1" / "curve.csv").set_index("step")
    model = GPT2LMHeadModel.from_pretrained(checkpoints / "tokens_25600")
    heldout = load_tokens(tiny_tokens_dir, "heldout")[: params.train.heldout_sequences]
    assert heldout_loss(model, heldout, "cpu") == pytest.approx(
        curve.loc[50, "heldout_loss"], rel=1e-6
    )


@pytest.mark.slow
def test_checkpoints_can_be_stored_in_half_precision(tiny_tokens_dir, tmp_path):
    from safetensors.torch import load_file

    params = tiny_params(
        train={
            "tokens_per_model": 30_000,
            "checkpoint_tokens": [10_240],
            "checkpoint_dtype": "float16",
        }
    )
    train.train_seed(params, 2, tiny_tokens_dir, tmp_path / "seed2")
    stored = load_file(tmp_path / "seed2" / "checkpoints" / "tokens_10240" / "model.safetensors")
    final = load_file(tmp_path / "seed2" / "model.safetensors")
    assert {t.dtype for t in stored.values()} == {torch.float16}
    assert {t.dtype for t in final.values()} == {torch.float32}
    # the same training run as with float32 checkpoints: storing a copy changes nothing
    again = tiny_params(train={**params.train.model_dump(), "checkpoint_dtype": "float32"})
    train.train_seed(again, 2, tiny_tokens_dir, tmp_path / "again")
    reference = load_file(tmp_path / "again" / "checkpoints" / "tokens_10240" / "model.safetensors")
    assert load_file(tmp_path / "again" / "model.safetensors").keys() == final.keys()
    for key, value in load_file(tmp_path / "again" / "model.safetensors").items():
        assert torch.equal(value, final[key])
    for key, value in reference.items():
        assert torch.equal(value.to(torch.float16), stored[key])


@pytest.fixture(scope="module")
def stage_run(tiny_group, tiny_tokens_dir, tmp_path_factory):
    """The analysis stages and the emergence stage on the tiny group, same analysis set."""
    root = tmp_path_factory.mktemp("emergence")
    params = tiny_params(emergence={"max_sequences": 0})
    models = next(iter(tiny_group.values())).parent
    # data/ is the root itself: the stages' folders are root/collect, root/emergence, ...
    layout = Layout.at(root, tokens=tiny_tokens_dir, models=models, data=root)
    for seed in params.train.seeds:
        collect.run(params, layout, seed, progress=False)
    correlate.run(params, layout, progress=False)
    baseline.run(params, layout)
    metrics = universality.run(params, layout)
    emergence_points.run(params, layout, progress=False)
    rows = emergence.run(params, layout)
    return {"root": root, "params": params, "metrics": metrics, "rows": rows, "models": models}


@pytest.mark.slow
def test_final_point_gives_the_universality_stages_numbers(stage_run):
    root, rows = stage_run["root"], stage_run["rows"]
    neurons = pd.read_parquet(root / "emergence" / "neurons.parquet")
    final_tokens = rows[-1]["tokens"]
    assert [row["tokens"] for row in rows] == [60_416, final_tokens] and final_tokens >= 120_000
    for name, summary in stage_run["metrics"]["models"].items():
        table = pd.read_parquet(root / "universality" / f"{name}.parquet")
        final = neurons[(neurons["model"] == name) & (neurons["tokens"] == final_tokens)]
        final = final.reset_index(drop=True)
        np.testing.assert_array_equal(final[["layer", "index"]], table[["layer", "index"]])
        np.testing.assert_allclose(final[COMPARED], table[COMPARED], rtol=0, atol=1e-9)
        np.testing.assert_array_equal(final["is_universal"], table["is_universal"])
        assert rows[-1]["models"][name]["percent_universal"] == summary["percent_universal"]
    curve = pd.read_csv(root / "metrics" / "emergence.csv")
    assert curve["tokens"].tolist() == [row["tokens"] for row in rows]
    assert curve["mean_percent_universal"].iloc[-1] == pytest.approx(
        stage_run["metrics"]["mean_percent_universal"], abs=1e-12
    )


@pytest.mark.slow
def test_above_the_full_pairs_size_every_point_takes_the_stages_path_to_the_same_numbers(
    stage_run, tiny_tokens_dir, tmp_path, monkeypatch
):
    """A group above ``correlate.full_pairs_max_neurons`` (a pretrained group's checkpoints)
    is measured at each point by the collect, correlate, baseline and universality stages
    (per-neuron maxima, baseline draws in the units): the same tables as the in-memory path
    within 1e-9, the same points, and no scratch workspace left behind."""
    params = stage_run["params"]
    scaled = params.model_copy(
        update={"correlate": params.correlate.model_copy(update={"full_pairs_max_neurons": 0})}
    )
    layout = Layout.at(tmp_path, tokens=tiny_tokens_dir, models=stage_run["models"], data=tmp_path)
    staged = []

    def stages_path(*args):
        models = stage_run["models"]  # the folders of the point below every model's folder
        staged.append(sorted({str(d.relative_to(models / f"seed{s}")) for s, d in args[2].items()}))
        return real_staged(*args)

    def no_full_pairs(*_args):
        raise AssertionError("the in-memory [N, N] path ran above the full-pairs size")

    real_staged = emergence_points.staged_measures
    monkeypatch.setattr(emergence_points, "staged_measures", stages_path)
    monkeypatch.setattr(emergence_points, "in_memory_measures", no_full_pairs)
    summary = emergence_points.run(scaled, layout, progress=False)
    assert staged == [["checkpoints/tokens_60000"], ["."]]  # each point, below every model
    in_memory = json.loads((stage_run["root"] / "emergence_points" / "points.json").read_text())
    assert summary == in_memory
    for point in summary["points"]:
        got = pd.read_parquet(tmp_path / "emergence_points" / point["file"])
        want = pd.read_parquet(stage_run["root"] / "emergence_points" / point["file"])
        pd.testing.assert_frame_equal(got.drop(columns=COMPARED), want.drop(columns=COMPARED))
        assert got[COMPARED].isna().equals(want[COMPARED].isna())
        assert np.nanmax(np.abs(got[COMPARED].to_numpy() - want[COMPARED].to_numpy())) <= 1e-9
        assert got["excess_corr"].notna().sum() > 300  # live neurons were compared
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emergence_points"]


def _post_activations(model_dir, tokens: np.ndarray, excluded: np.ndarray) -> np.ndarray:
    """Reference activations ``[kept positions, layers * d_mlp]`` float64, from the plain Hugging
    Face model (a hook on each MLP's activation function), not through TransformerLens."""
    model = GPT2LMHeadModel.from_pretrained(model_dir).eval()
    captured = {}
    hooks = [
        block.mlp.act.register_forward_hook(
            lambda _m, _i, out, layer=layer: captured.__setitem__(layer, out.detach())
        )
        for layer, block in enumerate(model.transformer.h)
    ]
    with torch.no_grad():
        model(torch.as_tensor(tokens.astype(np.int64)))
    for hook in hooks:
        hook.remove()
    kept = ~np.isin(tokens, excluded)
    layers = [captured[layer].numpy()[kept] for layer in range(len(captured))]
    return np.concatenate(layers, axis=1).astype(np.float64)


def _max_corr(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    corr = np.corrcoef(x, y, rowvar=False)[: x.shape[1], x.shape[1] :]
    return corr.max(axis=1)


def _reference_point(acts: dict, seeds: dict, params, n_layers: int, d_mlp: int) -> dict:
    """Per model ``{mean_corr, mean_baseline, excess_corr}`` ``[neurons]`` (SPEC definitions)."""
    cfg = params.baseline
    out = {}
    for name, x in acts.items():
        corr, base = [], []
        for partner, y in acts.items():
            if partner == name:
                continue
            corr.append(_max_corr(x, y))
            draws = []
            for sample in range(cfg.samples):
                q = mixing_matrices(cfg.kind, n_layers, d_mlp, cfg.seed, seeds[partner], sample)
                rotated = np.concatenate(
                    [y[:, k * d_mlp : (k + 1) * d_mlp] @ q[k].T for k in range(n_layers)], axis=1
                )
                draws.append(_max_corr(x, rotated))
            base.append(np.mean(draws, axis=0))
        mean_corr, mean_baseline = np.mean(corr, axis=0), np.mean(base, axis=0)
        out[name] = {
            "mean_corr": mean_corr,
            "mean_baseline": mean_baseline,
            "excess_corr": mean_corr - mean_baseline,
        }
    return out


@pytest.mark.slow
def test_every_point_matches_an_independent_float64_reference(stage_run, tiny_tokens_dir):
    params, models, rows = stage_run["params"], stage_run["models"], stage_run["rows"]
    tokens = load_tokens(tiny_tokens_dir, "train")[: params.analysis.max_sequences]
    excluded = excluded_token_ids(load_tokenizer(tiny_tokens_dir), params.analysis)
    neurons = pd.read_parquet(stage_run["root"] / "emergence" / "neurons.parquet")
    seeds = {f"seed{s}": s for s in params.train.seeds}
    n_layers, d_mlp = params.model.n_layers, params.model.d_mlp
    for row, below in zip(rows, ["checkpoints/tokens_60000", ""], strict=True):
        acts = {name: _post_activations(models / name / below, tokens, excluded) for name in seeds}
        reference = _reference_point(acts, seeds, params, n_layers, d_mlp)
        for name, expected in reference.items():
            got = neurons[(neurons["model"] == name) & (neurons["tokens"] == row["tokens"])]
            for column, values in expected.items():
                np.testing.assert_allclose(got[column].to_numpy(), values, rtol=0, atol=2e-5)
            universal = expected["excess_corr"] > params.universality.threshold
            percent = 100.0 * universal.sum() / len(universal)
            assert row["models"][name]["percent_universal"] == pytest.approx(percent, abs=1e-9)
            loss = heldout_loss(
                GPT2LMHeadModel.from_pretrained(models / name / below),
                load_tokens(tiny_tokens_dir, "heldout")[: params.train.heldout_sequences],
                "cpu",
            )
            assert row["models"][name]["heldout_loss"] == pytest.approx(loss, rel=1e-9)
    final_loss = json.loads((models / "seed1" / "training.json").read_text())["heldout_loss"]
    assert rows[-1]["models"]["seed1"]["heldout_loss"] == pytest.approx(final_loss, rel=1e-6)
