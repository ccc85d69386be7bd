"""Pretrained groups: presets resolve to the right hub ids, local GPT-2 / GPT-NeoX directories
load through the one TransformerLens path and correlate, HF dataset sources fail fast offline."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import save_tiny_neox, tiny_params
from transformers import PreTrainedTokenizerFast

from universal_neurons.config import ConfigError, GroupConfig, params_from_dict
from universal_neurons.models.group import PRESETS, GroupError, group_members, member
from universal_neurons.text.corpus import CorpusError, load_corpus


def test_presets_are_the_papers_models_as_transformerlens_names_them():
    from transformer_lens.supported_models import MODEL_ALIASES, OFFICIAL_MODEL_NAMES

    # Independent reference: TransformerLens's own registry and aliases (no download).
    expected_aliases = {
        "gpt2-small": [f"stanford-gpt2-small-{c}" for c in "abcde"],
        "gpt2-medium": [f"stanford-gpt2-medium-{c}" for c in "abcde"],
        "pythia-160m": [f"pythia-160m-seed{s}" for s in (1, 2, 3)],
    }
    for preset, aliases in expected_aliases.items():
        members = group_members(GroupConfig(preset=preset))
        assert len(members) == len(aliases)
        for (label, source), alias in zip(members, aliases, strict=True):
            assert source in OFFICIAL_MODEL_NAMES
            assert alias in MODEL_ALIASES[source]
            assert source.endswith("/" + label)
    assert group_members(GroupConfig(preset="gpt2-small"))[0] == (
        "alias-gpt2-small-x21",
        "stanford-crfm/alias-gpt2-small-x21",
    )
    assert PRESETS["pythia-160m"][2] == "EleutherAI/pythia-160m-seed3"


def test_presets_by_local_directory_and_overrides(tmp_path):
    config = GroupConfig(
        preset="gpt2-medium",
        local_dir=str(tmp_path),
        models={"durin-gpt2-medium-x343": "/data/durin"},
    )
    sources = [source for _, source in group_members(config)]
    assert sources == [
        str(tmp_path / "arwen-gpt2-medium-x21"),
        str(tmp_path / "beren-gpt2-medium-x49"),
        str(tmp_path / "celebrimbor-gpt2-medium-x81"),
        "/data/durin",
        str(tmp_path / "eowyn-gpt2-medium-x777"),
    ]
    assert member(config, 4, [1, 4]) == ("durin-gpt2-medium-x343", "/data/durin")
    with pytest.raises(
        GroupError, match=r"train.seeds: \[4\] are not members of group pythia-160m"
    ):
        member(GroupConfig(preset="pythia-160m"), 1, [1, 4])
    with pytest.raises(GroupError, match=r"group.models: \['gpt2'\] are not members"):
        group_members(GroupConfig(preset="gpt2-small", models={"gpt2": "/x"}))
    with pytest.raises(ConfigError, match="group.models: group.preset=custom needs at least 2"):
        params_from_dict({"group": {"preset": "custom", "models": {"a": "/x"}}})
    with pytest.raises(ConfigError, match="tokenizer.path: tokenizer.kind=model needs"):
        params_from_dict({"tokenizer": {"kind": "model"}})


def test_hub_preset_offline_fails_fast_naming_the_model(monkeypatch, tmp_path):
    from stages import fetch
    from universal_neurons.pipeline.layout import Layout

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pythia = {"seeds": [1, 2], "tokens_per_model": 143_000 * 2_097_152}  # the members' training
    params = params_from_dict({"group": {"preset": "pythia-160m"}, "train": pythia})
    with pytest.raises(
        Exception, match="EleutherAI/pythia-160m-seed2: not a local directory.*offline"
    ):
        fetch.run(params, Layout.at(tmp_path, models=tmp_path), 2)
    assert not (tmp_path / "seed2").exists()


def test_hf_dataset_source_offline_gives_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = tiny_params(corpus={"sources": ["hf:monology/pile-uncopyrighted:test"]}).corpus
    with pytest.raises(
        CorpusError,
        match=r"'hf:monology/pile-uncopyrighted:test': the Hugging Face hub cannot be reached",
    ):
        load_corpus(config)
    bad = tiny_params(corpus={"sources": ["hf:pile"]}).corpus
    with pytest.raises(CorpusError, match="expected hf:NAME:SPLIT"):
        load_corpus(bad)


def _save_tokenizer(tokens_dir, directory):
    PreTrainedTokenizerFast(
        tokenizer_file=str(tokens_dir / "tokenizer.json"), eos_token="<|endoftext|>"
    ).save_pretrained(directory)


def _neox(directory, seed, tokens_dir):
    """A tiny Pythia-architecture model with the test tokenizer, saved."""
    save_tiny_neox(directory, seed)
    _save_tokenizer(tokens_dir, directory)


def _hf_post_activations(directory, tokens, excluded, arch):
    """[kept, layers * d_mlp] float64 from the plain Hugging Face model (not TransformerLens)."""
    from transformers import AutoModelForCausalLM

    from universal_neurons.matching.activations import kept_mask

    model = AutoModelForCausalLM.from_pretrained(directory, attn_implementation="eager").eval()
    blocks = model.gpt_neox.layers if arch == "neox" else model.transformer.h
    rows = []
    for start in range(0, len(tokens), 32):
        batch = torch.as_tensor(tokens[start : start + 32].astype(np.int64))
        captured = []
        handles = [
            b.mlp.act.register_forward_hook(lambda m, i, o, out=captured: out.append(o))
            for b in blocks
        ]
        with torch.no_grad():
            model(batch)
        for handle in handles:
            handle.remove()
        acts = torch.stack(captured)[:, kept_mask(batch, excluded)]  # [layers, kept, d_mlp]
        rows.append(acts.permute(1, 0, 2).reshape(acts.shape[1], -1).double().numpy())
    return np.concatenate(rows)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["gpt2", "neox"])
def test_local_pretrained_group_fetches_tokenizes_and_correlates(
    arch, tiny_group, tiny_tokens_dir, tmp_path, monkeypatch
):
    """A custom group of two local HF directories: fetch -> tokenize (the models' own
    tokenizer) -> correlate in units; maxima equal numpy.corrcoef on HF's own activations."""
    from stages import collect, correlate, fetch, tokenize
    from universal_neurons.matching.activations import load_analysis_set
    from universal_neurons.pipeline.layout import Layout

    sources = {}
    for seed in (1, 2):
        directory = tmp_path / "hub" / f"{arch}-{seed}"
        if arch == "neox":
            _neox(directory, seed, tiny_tokens_dir)
        else:
            shutil.copytree(tiny_group[seed], directory)
            _save_tokenizer(tiny_tokens_dir, directory)
        sources[f"{arch}-{seed}"] = str(directory)
    models_dir = tmp_path / "models"
    tokens_dir = tmp_path / "tokens"
    layout = Layout.at(tmp_path / "work", tokens=tokens_dir, models=models_dir)
    params = tiny_params(
        group={"preset": "custom", "models": sources},
        train={"seeds": [1, 2], "checkpoint_tokens": []},  # final models only (no step 0 either)
        uncertainty={"null_group": "none"},
        tokenizer={"kind": "model", "path": str(models_dir / "seed1")},
        correlate={"products": "float64", "neuron_block": 48, "token_shards": 2},
    )
    for seed in (1, 2):
        info = fetch.run(params, layout, seed)
        assert info["label"] == f"{arch}-{seed}" and info["tokenizer"] is True
    source = json.loads((models_dir / "seed2" / "source.json").read_text())
    assert source["architecture"] == ("GPTNeoXForCausalLM" if arch == "neox" else "GPT2LMHeadModel")
    summary = tokenize.run(params, layout)
    assert summary["vocab_size"] == 512
    # the model's own tokenizer gives the same token set as the tokenizer it was saved from
    np.testing.assert_array_equal(
        np.load(tokens_dir / "train_tokens.npy"), np.load(tiny_tokens_dir / "train_tokens.npy")
    )
    for seed in (1, 2):
        collect.run(params, layout, seed, progress=False)
    out = layout.stage_dir("correlate")
    result = correlate.run(params, layout, progress=False)
    assert result["units"]["units"] == 1 * 3 * 2  # 128 neurons in blocks of 48, 2 shards

    tokens, excluded, kept = load_analysis_set(tokens_dir, params.analysis)
    x = _hf_post_activations(models_dir / "seed1", tokens, excluded, arch)
    y = _hf_post_activations(models_dir / "seed2", tokens, excluded, arch)
    assert x.shape == (kept, 128)
    with np.errstate(invalid="ignore", divide="ignore"):
        ref = np.corrcoef(x, y, rowvar=False)[:128, 128:]
    table = pd.read_parquet(out / "max_corr.parquet")
    forward = table[(table.model == "seed1") & (table.partner == "seed2")]
    want = np.nanmax(np.where(np.isnan(ref), -np.inf, ref), axis=1)
    assert np.abs(forward["max_corr"].to_numpy() - want).max() <= 1e-5
    sorted_ref = np.sort(np.nan_to_num(ref, nan=-np.inf), axis=1)
    clear = sorted_ref[:, -1] - sorted_ref[:, -2] > 1e-4
    got_argmax = forward["argmax_layer"].to_numpy() * 64 + forward["argmax_index"].to_numpy()
    np.testing.assert_array_equal(
        got_argmax[clear], np.argmax(np.nan_to_num(ref, nan=-np.inf), axis=1)[clear]
    )


@pytest.mark.parametrize("preset", [name for name in PRESETS])
def test_preset_pipelines_have_valid_params_naming_their_group(preset):
    from conftest import REPO_ROOT

    from universal_neurons.config import load_params

    params = load_params(REPO_ROOT / "pipelines" / preset / "params.yaml")
    assert params.group.preset == preset
    assert params.train.seeds == list(range(1, len(PRESETS[preset]) + 1))
    assert params.tokenizer.kind == "model" and params.tokenizer.path == "models/seed1"
    assert "fetch" in (REPO_ROOT / "pipelines" / preset / "dvc.preset.yaml").read_text()
