"""Parameters are validated once; every bad value names its key and what was expected."""

import pytest
import yaml
from conftest import REPO_ROOT, tiny_params_dict

from universal_neurons.config import ConfigError, Params, load_params, params_from_dict


def test_repository_params_are_valid():
    params = load_params(REPO_ROOT / "params.yaml")
    assert isinstance(params, Params)
    assert len(params.train.seeds) >= 4


def test_defaults_fill_missing_sections():
    params = params_from_dict({"train": {"seeds": [7, 8]}})
    assert params.train.seeds == [7, 8]
    assert params.model == Params().model


def test_sections_are_frozen():
    params = params_from_dict(tiny_params_dict())
    with pytest.raises(Exception, match="frozen"):
        params.train.seeds = [1, 2]  # type: ignore[misc]


BAD = [
    ({"train": {"seeds": [1]}}, "train.seeds: need at least 2 seeds, got 1"),
    ({"train": {"seeds": [1, 1]}}, "train.seeds: seeds must be distinct, got [1, 1]"),
    ({"train": {"batch_size": "big"}}, "train.batch_size: input should be a valid integer"),
    ({"train": {"batch_size": 0}}, "train.batch_size: input should be greater than 0, got 0"),
    (
        {"train": {"learning_rate": 2.0}},
        "train.learning_rate: input should be less than 1, got 2.0",
    ),
    ({"train": {"device": "tpu"}}, "train.device: input should be 'cpu' or 'cuda', got 'tpu'"),
    (
        {"train": {"checkpoint_tokens": [20, 10]}},
        "train.checkpoint_tokens: must be strictly increasing, got [20, 10]",
    ),
    ({"train": {"lr": 0.1}}, "train.lr: unknown key"),
    ({"trian": {}}, "trian: unknown key"),
    (
        {"model": {"d_model": 30, "n_heads": 4}},
        "model.n_heads: must divide model.d_model=30, got 4",
    ),
    (
        {"tokens": {"context": 4}},
        "tokens.context: input should be greater than or equal to 8, got 4",
    ),
    (
        {"tokens": {"heldout_fraction": 0.0}},
        "tokens.heldout_fraction: input should be greater than 0",
    ),
    (
        {"tokenizer": {"kind": "wordpiece"}},
        "tokenizer.kind: input should be 'bpe', 'gpt2' or 'model'",
    ),
    ({"corpus": {"sources": []}}, "corpus.sources: need at least 1 corpus source, got none"),
    ({"corpus": {"sources": ["shakespeare"]}}, "corpus.sources: unknown source 'shakespeare'"),
    (
        {"analysis": {"exclude": ["tabs"]}},
        "analysis.exclude.0: input should be 'special' or 'newline'",
    ),
    (
        {"universality": {"threshold": 0.3}},  # below the default candidate_threshold 0.4
        "universality: threshold 0.3 is below candidate_threshold 0.4: neurons with an excess "
        "in between were neither classified nor ablated; lower universality.candidate_threshold",
    ),
    (
        {"universality": {"candidate_threshold": True}},
        "universality.candidate_threshold: expected a number, got the boolean True",
    ),
]


@pytest.mark.parametrize(("override", "message"), BAD, ids=[m.split(":")[0] for _, m in BAD])
def test_bad_values_name_the_key(override, message):
    raw = tiny_params_dict()
    for section, values in override.items():
        raw.setdefault(section, {}).update(values)
    with pytest.raises(ConfigError) as info:
        params_from_dict(raw)
    assert message in str(info.value)


def test_malformed_yaml_names_the_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  seeds: [1, 2\n")
    with pytest.raises(ConfigError, match=r"params.yaml: not valid YAML"):
        load_params(path)


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="parameter file not found"):
        load_params(tmp_path / "nope.yaml")
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(ConfigError, match="expected a mapping of sections, got list"):
        load_params(path)
