"""Training: it learns, the seed alone sets the weights, and it records what it did."""

import csv
import json

import numpy as np
import pytest
from conftest import tiny_params
from safetensors.numpy import load_file

from stages import train
from universal_neurons.models.training import lr_at, unigram_entropy
from universal_neurons.pipeline.layout import Layout


def test_training_beats_the_unigram_entropy(tiny_group):
    for seed, directory in tiny_group.items():
        report = json.loads((directory / "training.json").read_text())
        assert report["seed"] == seed
        assert report["heldout_loss"] < report["unigram_entropy"], report
        rows = list(csv.DictReader((directory / "curve.csv").open()))
        evals = [float(r["heldout_loss"]) for r in rows if r["heldout_loss"]]
        assert evals[-1] < evals[0]
        assert int(rows[-1]["tokens"]) == report["tokens"] >= tiny_params().train.tokens_per_model


def test_checkpoints_are_saved_in_hf_format(tiny_group):
    checkpoint = tiny_group[1] / "checkpoints" / "tokens_60000"
    assert (checkpoint / "config.json").is_file() and (checkpoint / "model.safetensors").is_file()
    assert (
        load_file(checkpoint / "model.safetensors").keys()
        == load_file(tiny_group[1] / "model.safetensors").keys()
    )


def test_different_seeds_give_different_weights(tiny_group):
    a = load_file(tiny_group[1] / "model.safetensors")
    b = load_file(tiny_group[2] / "model.safetensors")
    assert not np.array_equal(
        a["transformer.h.0.mlp.c_fc.weight"], b["transformer.h.0.mlp.c_fc.weight"]
    )


@pytest.mark.slow
def test_same_seed_gives_identical_weights(tiny_group, tiny_tokens_dir, tmp_path):
    train.train_seed(tiny_params(), 2, tiny_tokens_dir, tmp_path / "again")
    assert (tmp_path / "again" / "model.safetensors").read_bytes() == (
        tiny_group[2] / "model.safetensors"
    ).read_bytes()


def test_unigram_entropy_by_hand():
    tokens = np.array([[9, 1, 1, 2, 3]])  # targets 1,1,2,3 -> p = 1/2, 1/4, 1/4
    expected = -(0.5 * np.log(0.5) + 2 * 0.25 * np.log(0.25))
    assert unigram_entropy(tokens, 10) == pytest.approx(expected, abs=1e-12)


def test_learning_rate_schedule():
    config = tiny_params(train={"learning_rate": 0.01, "warmup_fraction": 0.1}).train
    assert lr_at(0, 100, config) == pytest.approx(0.001)
    assert lr_at(9, 100, config) == pytest.approx(0.01)
    assert lr_at(100, 100, config) == pytest.approx(0.001)


def test_unknown_seed_is_refused(tiny_tokens_dir, tmp_path):
    with pytest.raises(ValueError, match=r"--seed: 9 is not one of train.seeds \[1, 2, 3\]"):
        train.run(
            tiny_params(), Layout.at(tmp_path, tokens=tiny_tokens_dir, models=tmp_path / "m"), (9,)
        )
    assert not (tmp_path / "m").exists()


def test_cuda_without_gpu_is_a_clear_error(tiny_tokens_dir, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="train.device: 'cuda' was asked for"):
        layout = Layout.at(tmp_path, tokens=tiny_tokens_dir, models=tmp_path / "m")
        train.run(tiny_params(train={"device": "cuda"}), layout, (1,))
    assert not (tmp_path / "m" / "seed1").exists()
