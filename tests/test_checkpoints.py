"""A pretrained group's training checkpoints (issue 22): which revision or local directory holds
member i after T training tokens, and the fetch stage putting them where the train stage puts its
own (``models/seed{i}/checkpoints/tokens_{T}/``), with the members at step 0 for the null group."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import save_tiny_neox, tiny_params
from safetensors.numpy import load_file

from stages import fetch
from universal_neurons.errors import UserError
from universal_neurons.models.checkpoints import CheckpointError, schedule
from universal_neurons.pipeline.layout import Layout

PYTHIA_STEP = 1024 * 2048
"""Pythia's tokens per optimizer step: 1,024 sequences of 2,048 tokens."""
PYTHIA_TOTAL = 143_000 * PYTHIA_STEP


def test_published_steps_map_to_the_hub_revisions_by_hand():
    pythia = schedule("EleutherAI/pythia-160m-seed2")
    assert pythia.revision_at(1000 * PYTHIA_STEP) == "step1000"
    assert pythia.revision_at(512 * PYTHIA_STEP) == "step512"  # a log-spaced early step
    assert pythia.revision_at(0) == "step0"
    assert pythia.total_tokens == PYTHIA_TOTAL == 299_892_736_000
    gpt2 = schedule("stanford-crfm/alias-gpt2-small-x21")
    assert gpt2.revision_at(150 * 512 * 1024) == "checkpoint-150"
    assert gpt2.total_tokens == 400_000 * 524_288
    assert schedule("gpt2") is None and schedule("EleutherAI/gpt-neo-125m") is None


@pytest.mark.parametrize(
    "tokens",
    [1000 * PYTHIA_STEP + 1, 1500 * PYTHIA_STEP],
    ids=["not-a-whole-step", "no-checkpoint"],
)
def test_an_unpublished_checkpoint_names_the_parameter_and_the_nearest(tokens):
    """The published checkpoints around 1,000-1,500 steps are steps 1,000 and 2,000."""
    with pytest.raises(CheckpointError, match="train.checkpoint_tokens") as error:
        schedule("EleutherAI/pythia-14m-seed1").revision_at(tokens)
    message = str(error.value)
    assert message.endswith(
        "the published checkpoints around it are 2,097,152,000 (step 1,000) and "
        "4,194,304,000 (step 2,000)"
    )


def _member(directory, seed: int) -> str:
    save_tiny_neox(directory, seed=seed)
    return str(directory)


def _checkpointed_member(root, name: str, seed: int, below: list[str]) -> str:
    """A member folder holding its final model and, under ``checkpoints/``, one model per name
    of ``below`` (seeds seed*100 + k: every checkpoint's weights differ)."""
    directory = root / name
    _member(directory, seed)
    for k, sub in enumerate(below):
        _member(directory / "checkpoints" / sub, seed * 100 + k)
    return str(directory)


def _weights(directory) -> dict:
    return load_file(str(Path(directory) / "model.safetensors"))


def _same_weights(a, b) -> bool:
    first, second = _weights(a), _weights(b)
    return first.keys() == second.keys() and all((first[k] == second[k]).all() for k in first)


def test_a_local_preset_member_s_revisions_are_fetched_to_the_train_stage_layout(tmp_path):
    """polypythia-14m with member 1 given as a local folder holding ``checkpoints/step1000`` and
    ``checkpoints/step0``: fetch writes the final model, ``checkpoints/tokens_2097152000`` (with
    the tokens in ``checkpoint.json``), the null group's ``checkpoints/tokens_0`` and
    ``training.json``, each with the weights of the folder it came from."""
    source = _checkpointed_member(tmp_path / "hub", "pythia-14m-seed1", 1, ["step1000", "step0"])
    params = tiny_params(
        group={"preset": "polypythia-14m", "models": {"pythia-14m-seed1": source}},
        train={
            "seeds": [1, 2],
            "tokens_per_model": PYTHIA_TOTAL,
            "checkpoint_tokens": [1000 * PYTHIA_STEP],
        },
        uncertainty={"null_group": "untrained"},
    )
    layout = Layout.at(tmp_path / "ws")
    info = fetch.run(params, layout, 1)
    model = layout.model(1)
    assert info["checkpoints"] == ["checkpoints/tokens_2097152000", "checkpoints/tokens_0"]
    assert _same_weights(model, tmp_path / "hub" / "pythia-14m-seed1")
    step1000 = model / "checkpoints" / "tokens_2097152000"
    assert _same_weights(step1000, f"{source}/checkpoints/step1000")
    assert _same_weights(model / "checkpoints" / "tokens_0", f"{source}/checkpoints/step0")
    assert not _same_weights(step1000, model)
    assert json.loads((step1000 / "checkpoint.json").read_text())["tokens"] == 1000 * PYTHIA_STEP
    training = json.loads((model / "training.json").read_text())
    assert training == {"seed": 1, "tokens": PYTHIA_TOTAL, "source": source}


def test_a_custom_member_s_checkpoints_keep_the_tokens_its_train_stage_recorded(tmp_path):
    """A custom member in the train stage's own layout (``checkpoints/tokens_{T}`` with a
    ``checkpoint.json`` saying the whole steps it saw): fetch keeps those tokens."""
    source = _checkpointed_member(tmp_path / "other", "seed1", 1, ["tokens_60000"])
    record = {"tokens": 60_416, "step": 118}
    (tmp_path / "other" / "seed1" / "checkpoints" / "tokens_60000" / "checkpoint.json").write_text(
        json.dumps(record)
    )
    params = tiny_params(
        group={"preset": "custom", "models": {"a": source, "b": _member(tmp_path / "b", 2)}},
        train={"seeds": [1, 2], "checkpoint_tokens": [60_000]},
        uncertainty={"null_group": "none"},
    )
    layout = Layout.at(tmp_path / "ws")
    fetch.run(params, layout, 1)
    point = layout.model(1) / "checkpoints" / "tokens_60000"
    assert json.loads((point / "checkpoint.json").read_text())["tokens"] == 60_416
    assert _same_weights(point, f"{source}/checkpoints/tokens_60000")
    assert not (layout.model(1) / "checkpoints" / "tokens_0").exists()  # no null group asked
    assert json.loads((layout.model(1) / "training.json").read_text())["tokens"] == 120_000


@pytest.mark.parametrize(
    "case,match",
    [
        ("missing checkpoint", r"train.checkpoint_tokens: member a has no checkpoint at 60,000"),
        (
            "missing step 0",
            r"uncertainty.null_group: member a has no checkpoint at 0 tokens: .*tokens_0 does not "
            r"exist .*; or set uncertainty.null_group: none",
        ),
        ("hub id of no family", r"train.checkpoint_tokens: member a \(gpt2\) is not of a family"),
        ("wrong total", r"train.tokens_per_model: member pythia-14m-seed1 is a Pythia model"),
    ],
)
def test_a_checkpoint_that_cannot_be_found_stops_fetch_before_it_writes(tmp_path, case, match):
    """Each missing piece is named with its parameter, and ``models/seed1`` is not written."""
    member_dir = _member(tmp_path / "a", 1)
    other = _member(tmp_path / "b", 2)
    group = {"preset": "custom", "models": {"a": member_dir, "b": other}}
    train = {"seeds": [1, 2], "checkpoint_tokens": [60_000]}
    null = {"null_group": "none"}
    if case == "missing step 0":
        train["checkpoint_tokens"] = []
        null = {"null_group": "untrained"}
    elif case == "hub id of no family":
        group["models"] = {"a": "gpt2", "b": other}
    elif case == "wrong total":
        group = {"preset": "polypythia-14m", "models": {"pythia-14m-seed1": member_dir}}
        train = {"seeds": [1, 2], "checkpoint_tokens": []}
    params = tiny_params(group=group, train=train, uncertainty=null)
    layout = Layout.at(tmp_path / "ws")
    with pytest.raises(UserError, match=match):
        fetch.run(params, layout, 1)
    assert not layout.model(1).exists()
