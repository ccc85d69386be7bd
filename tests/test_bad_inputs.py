"""Bad input gets a clear error and changes nothing.

Each case is met the way a user meets it: a workspace (the layout `dvc repro` works in:
``params.yaml``, ``data/``, ``models/``, ``metrics/``) in a temporary directory, a
``python stages/<stage>.py --params params.yaml`` call through click's CliRunner (or a
real subprocess where the environment matters), and the exact one-line message the user
reads on stderr. Before and after the call every file of the workspace is snapshotted
(bytes and mtime) with the set of directories: a failed stage must leave all of it as it was,
temporary directories included.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO_ROOT, command_argv, invoke_command, tiny_params_dict

# --------------------------------------------------------------------------- workspace


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under ``root``: files by (sha256, size, mtime_ns), directories by name."""
    state = {}
    for directory, subdirs, files in os.walk(root):
        for name in subdirs:
            state[os.path.relpath(Path(directory, name), root)] = ("dir",)
        for name in files:
            path = Path(directory, name)
            info = path.lstat()
            if stat.S_ISFIFO(info.st_mode) or stat.S_ISSOCK(info.st_mode):  # never opened
                state[os.path.relpath(path, root)] = ("special", info.st_mode, info.st_mtime_ns)
                continue
            state[os.path.relpath(path, root)] = (
                hashlib.sha256(path.read_bytes()).hexdigest(),
                info.st_size,
                info.st_mtime_ns,
            )
    return state


def write_params(root: Path, params: dict | str) -> None:
    text = params if isinstance(params, str) else yaml.safe_dump(params, sort_keys=False)
    (root / "params.yaml").write_text(text)


def save_npy(path: Path, array: np.ndarray) -> None:
    with path.open("wb") as handle:
        np.save(handle, array, allow_pickle=False)


# --------------------------------------------------------------------------- cases


@dataclass
class Case:
    """One bad input: what the user runs, what they change, and what they must read."""

    id: str
    args: list[str]  # the subcommand and its options (``--params params.yaml`` is added)
    message: str  # the exact text after "error: " on stderr
    params: dict | str = field(default_factory=tiny_params_dict)
    setup: Callable[[Path], None] | None = None  # breaks the workspace before the call
    needs_models: bool = False  # the workspace gets the tiny trained group in models/
    needs_analysis: bool = False  # ... and the analysis outputs up to universality in data/
    subprocess: bool = False  # run the installed CLI in a real process
    env: dict[str, str] = field(default_factory=dict)
    skip: str | None = None
    params_option: bool = True  # the command reads params.yaml (``--params`` is added)


def _corpus(name: str, content: bytes | None = None, directory: bool = False):
    def setup(root: Path) -> None:
        path = root / "corpus" / name
        path.parent.mkdir(exist_ok=True)
        if directory:
            path.mkdir()
        elif content is not None:
            path.write_bytes(content)

    return setup


def _within_covariances(truncated: str | None = None):
    """Setup: every tiny model's within-layer covariances in collect's folder, as collect writes
    them above ``correlate.full_pairs_max_neurons`` (``[2, 64, 64]`` float64), the file of
    ``truncated`` (if given) cut short."""

    def setup(root: Path) -> None:
        for folder in sorted((root / "data" / "collect").iterdir()):
            path = folder / "within_layer_cov.npy"
            save_npy(path, np.zeros((2, 64, 64)))
            if folder.name == truncated:
                path.write_bytes(path.read_bytes()[:5000])

    return setup


def _local_corpus(name: str, **corpus) -> dict:
    return tiny_params_dict(corpus={"sources": ["news", f"corpus/{name}"], **corpus})


def _replace_tokens(split: str, array_or_bytes):
    def setup(root: Path) -> None:
        path = root / "data" / "tokens" / f"{split}_tokens.npy"
        if isinstance(array_or_bytes, bytes):
            path.write_bytes(array_or_bytes)
        elif callable(array_or_bytes):
            save_npy(path, array_or_bytes(np.load(path)))
        else:
            save_npy(path, array_or_bytes)

    return setup


def _set_id(value: int, dtype=np.uint16):
    def change(tokens: np.ndarray) -> np.ndarray:
        tokens = tokens.astype(dtype)
        tokens[3, 5] = value
        return tokens

    return change


def _remove(*parts: str):
    def setup(root: Path) -> None:
        path = root.joinpath(*parts)
        shutil.rmtree(path) if path.is_dir() else path.unlink()

    return setup


def _member_with_tokenizer(name: str, tokenizer_json: bytes):
    """``members/<name>``: a copy of the tiny model of seed 1 with this ``tokenizer.json``."""

    def setup(root: Path) -> None:
        member = root / "members" / name
        shutil.copytree(root / "models" / "seed1", member)
        (member / "tokenizer.json").write_bytes(tokenizer_json)

    return setup


def _symlink(relative: str, to: str):
    """``relative`` moved to ``to`` beside it, and made a symbolic link to it (as a user
    who moved an output to another disk)."""

    def setup(root: Path) -> None:
        path = root / relative
        if path.exists():
            path.rename(path.parent / to)
        (path.parent / to).mkdir(parents=True, exist_ok=True)
        path.symlink_to(to)

    return setup


def _write(relative: str, content: bytes):
    def setup(root: Path) -> None:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir():
            shutil.rmtree(path)
        path.write_bytes(content)

    return setup


def _chain(*setups):
    def setup(root: Path) -> None:
        for step in setups:
            step(root)

    return setup


def _model_file(root: Path, seed: int) -> Path:
    return root / "models" / f"seed{seed}" / "model.safetensors"


def _plant(seed: int, key: str, change):
    """Edit one weight tensor of the trained model of ``seed`` in place (safetensors)."""

    def setup(root: Path) -> None:
        from safetensors.torch import load_file, save_file

        path = _model_file(root, seed)
        weights = load_file(path)
        change(weights[key])
        save_file(weights, path, metadata={"format": "pt"})

    return setup


def _replace_model(seed: int, vocab_size: int = 512, n_ctx: int = 32, **model):
    """Put an untrained GPT-2 of another shape / vocabulary / context in ``models/seed{seed}``."""

    def setup(root: Path) -> None:
        from universal_neurons.config import ModelConfig
        from universal_neurons.models.gpt2 import gpt2_config, init_model, save_model

        config = ModelConfig(**{**tiny_params_dict()["model"], **model})
        directory = root / "models" / f"seed{seed}"
        shutil.rmtree(directory)
        save_model(init_model(gpt2_config(config, vocab_size, n_ctx, 0), seed), directory)

    return setup


def _set(index, value):
    def change(tensor: torch.Tensor) -> None:
        tensor[index] = value

    return change


def _scale(index, factor: float):
    def change(tensor: torch.Tensor) -> None:
        tensor[index] *= factor

    return change


def _drop_tensor(seed: int, key: str):
    """Rewrite the model file of ``seed`` without the tensor ``key``."""

    def setup(root: Path) -> None:
        from safetensors.torch import load_file, save_file

        weights = load_file(_model_file(root, seed))
        del weights[key]
        save_file(weights, _model_file(root, seed), metadata={"format": "pt"})

    return setup


def _add_tensor(seed: int, key: str, tensor: torch.Tensor):
    """Rewrite the model file of ``seed`` with one tensor more (or one replaced)."""

    def setup(root: Path) -> None:
        from safetensors.torch import load_file, save_file

        weights = load_file(_model_file(root, seed))
        weights[key] = tensor
        save_file(weights, _model_file(root, seed), metadata={"format": "pt"})

    return setup


def _rerun(stage: str, *seed: int, **sections):
    """Rerun ``stage`` in the workspace with other parameters (an output left stale)."""

    def setup(root: Path) -> None:
        import importlib

        from conftest import tiny_params

        from universal_neurons.pipeline.layout import Layout

        module = importlib.import_module(f"stages.{stage}")
        module.run(tiny_params(**sections), Layout.at(root), *seed)

    return setup


def _tiny_tokenizer(root: Path) -> None:
    """A byte-level BPE tokenizer of 10 entries in place of the token set's."""
    from tokenizers import Tokenizer, models

    tokenizer = Tokenizer(models.BPE(vocab={chr(97 + i): i for i in range(10)}, merges=[]))
    tokenizer.save(str(root / TOKENS / "tokenizer.json"))


def _copy_folder(source: str, target: str):
    """Replace the folder ``target`` by a copy of ``source`` (another model's output)."""

    def setup(root: Path) -> None:
        shutil.rmtree(root / target)
        shutil.copytree(root / source, root / target)

    return setup


def _alias_bomb(levels: int = 9, width: int = 10) -> str:
    """A few hundred bytes of YAML whose aliases expand to ``width ** levels`` values."""
    lines = ["l0: &l0 [" + ", ".join(["x"] * width) + "]"]
    for level in range(1, levels):
        lines.append(f"l{level}: &l{level} [" + ", ".join([f"*l{level - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


ALIAS_BOMB = _alias_bomb()


def _stats_metrics(content: str):
    return _write("metrics/stats.json", content.encode())


MEMORY_ENV = {"UNIVERSAL_NEURONS_MEMORY_GB": "1"}


TOKENS = "data/tokens"
MALFORMED_YAML = "train:\n  seeds: [1, 2\ntokens:\n  context: 32\n"

CASES = [
    # ---- params.yaml
    Case(
        "malformed-params-yaml",
        ["validate"],
        "params.yaml: not valid YAML at line 3, column 7: expected ',' or ']', but got ':' "
        "(while parsing a flow sequence started at line 2, column 10)",
        params=MALFORMED_YAML,
        subprocess=True,
    ),
    Case(
        "tab-indented-params-yaml",
        ["tokenize"],
        "params.yaml: not valid YAML at line 2, column 1: found character '\\t' that cannot "
        "start any token (while scanning for the next token)",
        params="train:\n\tseeds: [1, 2]\n",
    ),
    Case(
        "params-not-a-mapping",
        ["tokenize"],
        "params.yaml: expected a mapping of sections, got list",
        params="- 1\n- 2\n",
    ),
    Case(
        "params-file-missing",
        ["tokenize"],
        "params.yaml: parameter file not found",
        setup=_remove("params.yaml"),
    ),
    Case(
        "unknown-key",
        ["tokenize"],
        "params.yaml: invalid parameters\n  train.lr: unknown key",
        params=tiny_params_dict(train={"lr": 0.01}),
    ),
    Case(
        "unknown-section",
        ["tokenize"],
        "params.yaml: invalid parameters\n  trian: unknown key",
        params={**tiny_params_dict(), "trian": {"seeds": [1, 2]}},
    ),
    Case(
        "wrong-type",
        ["tokenize"],
        "params.yaml: invalid parameters\n  train.batch_size: input should be a valid integer, "
        "unable to parse string as an integer, got 'big'",
        params=tiny_params_dict(train={"batch_size": "big"}),
    ),
    Case(
        "fewer-than-2-seeds",
        ["train", "--seed", "1"],
        "params.yaml: invalid parameters\n  train.seeds: need at least 2 seeds, got 1",
        params=tiny_params_dict(train={"seeds": [1]}),
    ),
    Case(
        "several-bad-keys-at-once",
        ["tokenize"],
        "params.yaml: invalid parameters\n"
        "  tokens.context: input should be greater than or equal to 8, got 4\n"
        "  model.d_mlp: input should be greater than 0, got -64",
        params=tiny_params_dict(tokens={"context": 4}, model={"d_mlp": -64}),
    ),
    # ---- corpus
    Case(
        "empty-corpus-file",
        ["tokenize"],
        "corpus.sources: 'corpus/empty.txt' holds no document of at least "
        "corpus.min_doc_chars=200 characters",
        params=_local_corpus("empty.txt"),
        setup=_corpus("empty.txt", b""),
    ),
    Case(
        "corpus-only-short-documents",
        ["tokenize"],
        "corpus.sources: 'corpus/short.txt' holds no document of at least "
        "corpus.min_doc_chars=200 characters",
        params=_local_corpus("short.txt"),
        setup=_corpus("short.txt", b"A line.\n\nAnother short document.\n"),
    ),
    Case(
        "missing-corpus-file",
        ["tokenize"],
        "corpus.sources: file corpus/missing.txt does not exist",
        params=_local_corpus("missing.txt"),
    ),
    Case(
        "directory-instead-of-corpus-file",
        ["tokenize"],
        "corpus.sources: corpus/notes.txt is a directory, expected a text file",
        params=_local_corpus("notes.txt"),
        setup=_corpus("notes.txt", directory=True),
    ),
    Case(
        "unreadable-corpus-file",
        ["tokenize"],
        "corpus.sources: file corpus/secret.txt is not readable",
        params=_local_corpus("secret.txt"),
        setup=_chain(
            _corpus("secret.txt", b"text " * 100),
            lambda root: (root / "corpus" / "secret.txt").chmod(0),
        ),
        skip="running as root: chmod 000 does not stop root from reading"
        if os.geteuid() == 0
        else None,
    ),
    Case(
        "binary-corpus-file",
        ["tokenize"],
        "corpus.sources: file corpus/weights.txt is not UTF-8 text (binary?)",
        params=_local_corpus("weights.txt"),
        setup=_corpus("weights.txt", bytes(range(256)) * 8),
    ),
    Case(
        "corpus-file-with-nul-bytes",
        ["tokenize"],
        "corpus.sources: file corpus/dump.txt is binary (contains NUL bytes), expected text",
        params=_local_corpus("dump.txt"),
        setup=_corpus("dump.txt", b"word\x00" * 100),
    ),
    Case(
        "jsonl-line-not-json",
        ["tokenize"],
        "corpus.sources: corpus/docs.jsonl:2 is not valid JSON",
        params=_local_corpus("docs.jsonl"),
        setup=_corpus("docs.jsonl", b'{"text": "fine"}\n{"text": broken\n'),
    ),
    Case(
        "jsonl-line-without-text",
        ["tokenize"],
        "corpus.sources: corpus/docs.jsonl:1 needs a string field 'text'",
        params=_local_corpus("docs.jsonl"),
        setup=_corpus("docs.jsonl", b'{"body": "no text field"}\n'),
    ),
    Case(
        "corpus-too-small-for-context",
        ["tokenize"],
        "tokens.context=4096: the corpus yields only 0 sequences, need at least 2",
        params=tiny_params_dict(
            corpus={"sources": ["corpus/small.txt"]},
            tokenizer={"vocab_size": 300},
            tokens={"context": 4096},
        ),
        setup=_corpus("small.txt", ("Some words of a small corpus. " * 300).encode()),
    ),
    # ---- outputs
    Case(
        "unwritable-output-directory",
        # Tests run as root, for whom chmod does not stop writes; a regular file where the
        # output's parent directory must be is unwritable for everyone.
        ["tokenize"],
        "data/tokens: cannot write the output, data is a file, expected a directory",
        setup=_chain(_remove("data"), _write("data", b"not a directory\n")),
    ),
    # ---- train stage inputs
    Case(
        "seed-not-in-train-seeds",
        ["train", "--seed", "9"],
        "--seed: 9 is not one of train.seeds [1, 2, 3]",
    ),
    Case(
        "tokens-missing",
        ["train", "--seed", "1"],
        "data/tokens/tokenizer.json: tokenizer not found (run the tokenize stage)",
        setup=_remove(TOKENS),
    ),
    Case(
        "token-id-beyond-vocabulary",
        ["train", "--seed", "1"],
        "data/tokens/train_tokens.npy: token id 600 is beyond the vocabulary size 512",
        setup=_replace_tokens("train", _set_id(600)),
    ),
    Case(
        "heldout-token-id-beyond-vocabulary",
        ["train", "--seed", "1"],
        "data/tokens/heldout_tokens.npy: token id 512 is beyond the vocabulary size 512",
        setup=_replace_tokens("heldout", _set_id(512)),
    ),
    Case(
        "negative-token-id",
        ["train", "--seed", "1"],
        "data/tokens/train_tokens.npy: token id -1 is negative, expected ids >= 0",
        setup=_replace_tokens("train", _set_id(-1, np.int32)),
    ),
    Case(
        "float-token-array",
        ["train", "--seed", "1"],
        "data/tokens/train_tokens.npy: expected integer token ids, got dtype float32",
        setup=_replace_tokens("train", lambda t: t.astype(np.float32)),
    ),
    Case(
        "token-array-not-2d",
        ["train", "--seed", "1"],
        "data/tokens/train_tokens.npy: expected a [sequences, context] array, got shape (64,)",
        setup=_replace_tokens("train", np.zeros(64, dtype=np.uint16)),
    ),
    Case(
        "corrupt-tokens-npy",
        ["train", "--seed", "1"],
        "data/tokens/train_tokens.npy: not a .npy token array (the file starts with "
        "b'version https://'); rerun the tokenize stage or restore it with `dvc checkout`",
        setup=_replace_tokens("train", b"version https://git-lfs.github.com/spec/v1\n"),
    ),
    Case(
        "truncated-tokens-npy",
        ["train", "--seed", "1"],
        "data/tokens/train_tokens.npy: not a readable .npy token array (mmap length is "
        "greater than file size); rerun the tokenize stage",
        setup=lambda root: (root / TOKENS / "train_tokens.npy").write_bytes(
            (root / TOKENS / "train_tokens.npy").read_bytes()[:1000]
        ),
    ),
    Case(
        "corrupt-tokenizer-json",
        ["train", "--seed", "1"],
        "data/tokens/tokenizer.json: not a valid tokenizer file (expected value at line 1 "
        "column 1); rerun the tokenize stage",
        setup=_write(f"{TOKENS}/tokenizer.json", b"<html>not found</html>"),
    ),
    Case(
        "tokens-context-differs-from-params",
        # The token array was cut for context 32; params ask for a 16-token model, which
        # could not even hold one sequence.
        ["train", "--seed", "1"],
        "data/tokens/train_tokens.npy: sequences of 32 tokens, but tokens.context is 16; "
        "rerun the tokenize stage",
        params=tiny_params_dict(tokens={"context": 16}),
    ),
    Case(
        "cuda-without-gpu",
        ["train", "--seed", "1"],
        "train.device: 'cuda' was asked for, but no CUDA device is available",
        params=tiny_params_dict(train={"device": "cuda"}),
        skip="a CUDA device is present" if torch.cuda.is_available() else None,
    ),
    # ---- analysis stages: models of the group
    Case(
        "threshold-zero",
        ["universality"],
        "params.yaml: invalid parameters\n  universality.threshold: input should be greater "
        "than 0, got 0.0",
        params={**tiny_params_dict(), "universality": {"threshold": 0.0}},
    ),
    Case(
        "threshold-above-one",
        ["universality"],
        "params.yaml: invalid parameters\n  universality.threshold: input should be less than "
        "or equal to 1, got 1.5",
        params={**tiny_params_dict(), "universality": {"threshold": 1.5}},
    ),
    Case(
        "missing-model-directory",
        ["collect", "--seed", "2"],
        "models/seed2: model directory does not exist",
        needs_models=True,
        setup=_remove("models", "seed2"),
    ),
    Case(
        "model-directory-without-weights",
        ["collect", "--seed", "2"],
        "models/seed2: model directory has no weights (*.safetensors)",
        needs_models=True,
        setup=_remove("models", "seed2", "model.safetensors"),
    ),
    Case(
        "truncated-safetensors",
        ["collect", "--seed", "2"],
        "models/seed2/model.safetensors: unreadable safetensors file (Error while "
        "deserializing header: incomplete metadata, file not fully covered); re-create or "
        "re-pull it",
        needs_models=True,
        setup=lambda root: _model_file(root, 2).write_bytes(
            _model_file(root, 2).read_bytes()[:20_000]
        ),
    ),
    Case(
        "models-of-different-shapes",
        ["correlate"],
        "models of a group must have the same (n_layers x d_mlp), got seed1 2x64, seed2 2x32, "
        "seed3 2x64",
        needs_models=True,
        setup=_replace_model(2, d_mlp=32),
    ),
    Case(
        "models-with-different-tokenizers",
        ["correlate"],
        "models of a group must share one tokenizer, but their vocabulary sizes differ: "
        "seed1 512, seed2 512, seed3 600",
        needs_models=True,
        setup=_replace_model(3, vocab_size=600),
    ),
    Case(
        "model-and-token-set-with-different-tokenizers",
        ["collect", "--seed", "3"],
        "model seed3 has a vocabulary of 600 tokens, but the token set's tokenizer "
        "data/tokens/tokenizer.json has 512: they do not share a tokenizer",
        needs_models=True,
        setup=_replace_model(3, vocab_size=600),
    ),
    Case(
        "context-longer-than-the-model-allows",
        ["collect", "--seed", "2"],
        "model seed2 accepts at most 16 tokens of context, but the token set has sequences "
        "of 32 (tokens.context)",
        needs_models=True,
        setup=_replace_model(2, n_ctx=16),
    ),
    Case(
        "analysis-token-id-beyond-vocabulary",
        ["collect", "--seed", "1"],
        "data/tokens/train_tokens.npy: token id 600 is beyond the vocabulary size 512",
        needs_models=True,
        setup=_replace_tokens("train", _set_id(600)),
    ),
    Case(
        "zero-kept-positions-after-exclusion",
        ["collect", "--seed", "1"],
        "analysis.exclude / analysis.exclude_ids: every position of the analysis token set "
        "is excluded; nothing is left to measure",
        params=tiny_params_dict(analysis={"exclude_ids": list(range(512))}),
        needs_models=True,
    ),
    Case(
        "nan-weight-in-model-file-collect",
        ["collect", "--seed", "2"],
        "models/seed2/model.safetensors: tensor transformer.h.1.mlp.c_fc.weight is not finite "
        "(NaN or inf in 1 of its 2048 entries); the weights are broken: retrain or re-fetch "
        "the model",
        needs_models=True,
        setup=_plant(2, "transformer.h.1.mlp.c_fc.weight", _set((0, 5), float("nan"))),
    ),
    Case(
        "inf-weight-in-model-file-correlate",
        ["correlate"],
        "models/seed3/model.safetensors: tensor transformer.h.0.mlp.c_proj.weight is not "
        "finite (NaN or inf in 1 of its 2048 entries); the weights are broken: retrain or "
        "re-fetch the model",
        needs_models=True,
        setup=_plant(3, "transformer.h.0.mlp.c_proj.weight", _set((7, 3), float("inf"))),
    ),
    Case(
        "huge-activations-overflow-the-statistics-collect",
        ["collect", "--seed", "2"],
        "model seed2 layer 1: correlation statistics became non-finite at analysis batch 0 "
        "(neurons 5 x 5); the activations are too large for the per-batch products "
        "(correlate.products: float64 has more range)",
        needs_models=True,
        setup=_plant(2, "transformer.h.1.mlp.c_fc.weight", _scale((slice(None), 5), 1e20)),
    ),
    Case(
        "huge-activations-overflow-the-statistics-correlate",
        ["correlate"],
        # Only the product of two huge activations overflows: seed1 x seed2 stays finite.
        # Above correlate.full_pairs_max_neurons, so that correlate takes the within-layer
        # covariances from collect's files (below, its own within pass stops first, with
        # collect's message, as in the case above)
        "models seed2 (layer 1) and seed3 (layer 1): correlation statistics became non-finite "
        "at analysis batch 0 (neurons 5 x 5); the activations are too large for the per-batch "
        "products (correlate.products: float64 has more range)",
        params=tiny_params_dict(correlate={"full_pairs_max_neurons": 64}),
        needs_analysis=True,  # collect's outputs, which correlate checks first
        setup=_chain(
            _within_covariances(),
            *(
                _plant(seed, "transformer.h.1.mlp.c_fc.weight", _scale((slice(None), 5), 1e20))
                for seed in (2, 3)
            ),
        ),
    ),
    Case(
        "analysis-on-cuda-without-gpu",
        ["collect", "--seed", "1"],
        "analysis.device: 'cuda' was asked for, but no CUDA device is available",
        params=tiny_params_dict(analysis={"device": "cuda"}),
        skip="a CUDA device is present" if torch.cuda.is_available() else None,
    ),
    # ---- stats stage inputs (dvc-tracked parquet tables)
    Case(
        "missing-parquet-input",
        ["stats"],
        "data/universality/seed1.parquet: file not found (run the universality stage first)",
    ),
    Case(
        "corrupt-parquet-input",
        ["stats"],
        "data/universality/seed1.parquet: not a readable parquet file (Parquet magic bytes not "
        "found in footer. Either the file is corrupted or this is not a parquet file.); rerun "
        "the universality stage or restore it with `dvc checkout`",
        setup=_write("data/universality/seed1.parquet", b"PAR1" + b"\x00" * 64),
    ),
    # ---- issue 15: model files hold exactly the tensors of their config, all finite
    Case(
        "weight-missing-from-model-file",
        ["collect", "--seed", "2"],
        "models/seed2/model.safetensors: tensor transformer.h.0.mlp.c_fc.weight is missing; "
        "the file does not hold the model its config.json describes: re-create or re-pull it",
        needs_models=True,
        setup=_drop_tensor(2, "transformer.h.0.mlp.c_fc.weight"),
    ),
    Case(
        "unexpected-tensor-in-model-file",
        ["collect", "--seed", "2"],
        "models/seed2/model.safetensors: unexpected tensor transformer.h.0.mlp.extra.weight "
        "(not part of the model its config.json describes)",
        needs_models=True,
        setup=_add_tensor(2, "transformer.h.0.mlp.extra.weight", torch.zeros(3)),
    ),
    Case(
        "tensor-of-wrong-shape",
        ["correlate"],
        "models/seed3/model.safetensors: tensor transformer.h.1.mlp.c_fc.bias has shape "
        "[65], config.json needs [64]",
        needs_models=True,
        setup=_add_tensor(3, "transformer.h.1.mlp.c_fc.bias", torch.zeros(65)),
    ),
    Case(
        "nan-output-weight-stats",
        ["weight_stats"],
        "models/seed2/model.safetensors: tensor transformer.h.1.mlp.c_proj.weight is not "
        "finite (NaN or inf in 1 of its 2048 entries); the weights are broken: retrain or "
        "re-fetch the model",
        # a pretrained (custom) group: stats then reads no emergence table
        params=tiny_params_dict(
            group={"preset": "custom", "models": {"a": "m/a", "b": "m/b", "c": "m/c"}}
        ),
        needs_analysis=True,
        setup=_plant(2, "transformer.h.1.mlp.c_proj.weight", _set((4, 0), float("nan"))),
    ),
    # ---- tokenizers
    Case(
        "tokenizer-with-too-few-entries",
        ["train", "--seed", "1"],
        "data/tokens/tokenizer.json: the tokenizer has 10 entries, fewer than 256: it cannot "
        "spell text (an empty or broken tokenizer?)",
        setup=_tiny_tokenizer,
    ),
    # ---- memory estimated before allocating (limit configured at 1 GB)
    Case(
        "runaway-tokens-per-model",
        ["train", "--seed", "1"],
        "train.tokens_per_model=10000000000000: training one model needs about 4.5 TiB "
        "(batch order: 4.5 TiB), more than the 953.7 MiB of the configured limit "
        "(UNIVERSAL_NEURONS_MEMORY_GB=1); lower the parameter",
        params=tiny_params_dict(train={"tokens_per_model": 10**13, "checkpoint_tokens": []}),
        env=MEMORY_ENV,
    ),
    Case(
        "runaway-d-mlp",
        ["train", "--seed", "1"],
        "model.d_mlp=10000000: training one model needs about 329.0 GiB (MLP activations of "
        "one step: 305.2 GiB), more than the 953.7 MiB of the configured limit "
        "(UNIVERSAL_NEURONS_MEMORY_GB=1); lower the parameter",
        params=tiny_params_dict(model={"d_mlp": 10**7}),
        env=MEMORY_ENV,
    ),
    Case(
        "runaway-d-model",
        ["train", "--seed", "1"],
        "model.d_model=1048576: training one model needs about 160.1 TiB (weights, gradients "
        "and AdamW moments: 160.0 TiB), more than the 953.7 MiB of the configured limit "
        "(UNIVERSAL_NEURONS_MEMORY_GB=1); lower the parameter",
        params=tiny_params_dict(model={"d_model": 2**20}),
        env=MEMORY_ENV,
    ),
    Case(
        "runaway-batch-size",
        ["train", "--seed", "1"],
        "train.batch_size=10000000: training one model needs about 7.7 TiB (activations of "
        "one step: 6.6 TiB), more than the 953.7 MiB of the configured limit "
        "(UNIVERSAL_NEURONS_MEMORY_GB=1); lower the parameter",
        params=tiny_params_dict(train={"batch_size": 10**7}),
        env=MEMORY_ENV,
    ),
    Case(
        "collect-beyond-the-configured-memory",
        ["collect", "--seed", "1"],
        "analysis.batch_size=32: collecting seed1 needs about 3.2 MiB (activations of one "
        "batch: 3.0 MiB), more than the 97.7 KiB of the configured limit "
        "(UNIVERSAL_NEURONS_MEMORY_GB=0.0001); lower the parameter",
        needs_models=True,
        env={"UNIVERSAL_NEURONS_MEMORY_GB": "0.0001"},
    ),
    Case(
        "d-model-beyond-the-sane-bound",
        ["train", "--seed", "1"],
        "params.yaml: invalid parameters\n  model.d_model: input should be less than or "
        "equal to 16777216, got 1073741824",
        params=tiny_params_dict(model={"d_model": 2**30}),
    ),
    # ---- stale inputs: every stage reading two upstream outputs checks they match
    Case(
        "stats-after-collect-with-other-sequences",
        ["stats"],
        "data/collect/seed3/summary.json: made from another token set than "
        "data/universality/summary.json (sequences 100 vs 200); rerun the stages between "
        "them (dvc repro)",
        needs_analysis=True,
        setup=_rerun("collect", 3, analysis={"max_sequences": 100}),
    ),
    Case(
        "universality-output-is-a-symlink",
        ["universality"],
        "data/universality: a symbolic link (to elsewhere); a stage replaces its output whole, which "
        "would replace the link instead of writing where it points: remove the link (a DVC "
        "output is a folder or file of its own)",
        needs_analysis=True,
        setup=_symlink("data/universality", "elsewhere"),
    ),
    Case(
        "report-truncated-universality-results",
        ["report"],
        "results/universality.json: not valid JSON (Expecting property name enclosed in double "
        "quotes: line 1 column 13 (char 12))",
        needs_analysis=True,
        setup=_write("results/universality.json", b'{"models": {'),
    ),
    Case(
        "correlate-after-collect-with-other-sequences",
        ["correlate"],
        "data/collect/seed3/summary.json: made from another token set than data/tokens "
        "(sequences 100 vs 200); rerun the stages between them (dvc repro)",
        needs_analysis=True,
        setup=_rerun("collect", 3, analysis={"max_sequences": 100}),
    ),
    Case(
        "universality-after-correlate-with-other-exclusions",
        ["universality"],
        "data/baseline/summary.json: made from another token set than "
        "data/correlate/summary.json (kept_positions 6083 vs 6082); rerun the stages between "
        "them (dvc repro)",
        needs_analysis=True,
        setup=_chain(  # correlate checks collect's token set: both rerun, baseline not
            *(_rerun("collect", seed, analysis={"exclude_ids": [5]}) for seed in (1, 2, 3)),
            _rerun("correlate", analysis={"exclude_ids": [5]}),
        ),
    ),
    # ---- a stage never writes over its own input
    Case(
        "fetch-member-with-an-empty-tokenizer-json",
        ["fetch", "--seed", "1"],
        "members/a/tokenizer.json: not a usable tokenizer (KeyError: 'added_tokens'); repair "
        "or remove it (a member without one needs tokenizer.path)",
        params=tiny_params_dict(
            group={"preset": "custom", "models": {"a": "members/a", "b": "members/b"}},
            train={"seeds": [1, 2]},
            uncertainty={"null_group": "none"},  # the members have no step 0
        ),
        needs_models=True,
        setup=_member_with_tokenizer("a", b"{}"),
    ),
    Case(
        "fetch-member-is-its-own-output",
        ["fetch", "--seed", "1"],
        "group.models: member 1 (a): models/seed1 is (or holds) models/seed1, which this "
        "stage replaces: it would delete its own input; copy the input elsewhere and point "
        "at the copy",
        params=tiny_params_dict(
            group={"preset": "custom", "models": {"a": "models/seed1", "b": "models/seed2"}},
            train={"seeds": [1, 2]},
        ),
        needs_models=True,
    ),
    Case(
        "corpus-file-inside-the-token-output",
        ["tokenize"],
        "corpus.sources: data/tokens/notes.txt is (or holds) data/tokens, which this stage "
        "replaces: it would delete its own input; copy the input elsewhere and point at the "
        "copy",
        params=tiny_params_dict(corpus={"sources": ["news", "data/tokens/notes.txt"]}),
        setup=_write("data/tokens/notes.txt", b"Some text of a note. " * 40),
    ),
    # ---- parameters: type, range, finiteness, duplicates
    Case(
        "boolean-where-a-number-is-expected",
        ["tokenize"],
        "params.yaml: invalid parameters\n  train.batch_size: expected a number, got the "
        "boolean True",
        params=tiny_params_dict(train={"batch_size": True}),
    ),
    Case(
        "boolean-in-a-list-of-numbers",
        ["tokenize"],
        "params.yaml: invalid parameters\n  train.seeds: expected a number, got the boolean True",
        params=tiny_params_dict(train={"seeds": [1, True]}),
    ),
    Case(
        "non-finite-learning-rate",
        ["tokenize"],
        "params.yaml: invalid parameters\n  train.learning_rate: input should be a finite "
        "number, got nan",
        params="train:\n  learning_rate: .nan\n",
    ),
    Case(
        "infinite-weight-decay",
        ["tokenize"],
        "params.yaml: invalid parameters\n  train.weight_decay: input should be a finite "
        "number, got inf",
        params="train:\n  weight_decay: .inf\n",
    ),
    Case(
        "checkpoint-beyond-tokens-per-model",
        ["tokenize"],
        "params.yaml: invalid parameters\n  train.checkpoint_tokens: must be below "
        "train.tokens_per_model=120000 (the final model is saved anyway), got 500000",
        params=tiny_params_dict(train={"checkpoint_tokens": [60_000, 500_000]}),
    ),
    Case(
        "exclude-id-outside-the-vocabulary",
        ["collect", "--seed", "1"],
        "analysis.exclude_ids: 9999 is beyond the vocabulary size 512 of "
        "data/tokens/tokenizer.json",
        params=tiny_params_dict(analysis={"exclude_ids": [9999]}),
        needs_models=True,
    ),
    Case(
        "exclude-id-listed-twice",
        ["tokenize"],
        "params.yaml: invalid parameters\n  analysis.exclude_ids: 5 is listed twice",
        params=tiny_params_dict(analysis={"exclude_ids": [5, 7, 5]}),
    ),
    Case(
        "corpus-sources-collapse-into-one-domain",
        ["tokenize"],
        "params.yaml: invalid parameters\n  corpus.sources: 'corpus/a/notes.txt' and "
        "'corpus/b/notes.txt' would both be domain 'notes'; rename one file (a local file's "
        "domain is its name without the extension)",
        params=tiny_params_dict(corpus={"sources": ["corpus/a/notes.txt", "corpus/b/notes.txt"]}),
    ),
    Case(
        "corpus-file-twice-under-two-spellings",
        ["tokenize"],
        "params.yaml: invalid parameters\n  corpus.sources: 'corpus/x.txt' and "
        "'./corpus/x.txt' are the same file",
        params=tiny_params_dict(corpus={"sources": ["corpus/x.txt", "./corpus/x.txt"]}),
        setup=_corpus("x.txt", b"Some words. " * 40),
    ),
    Case(
        "params-yaml-not-utf8",
        ["tokenize"],
        "params.yaml: not UTF-8 text (byte 0xe9 at offset 29); save it as UTF-8",
        setup=_write("params.yaml", "train:\n  seeds: [1, 2]  # caf\u00e9\n".encode("latin-1")),
    ),
    # ---- tools
    Case(
        "findings-given-another-json",
        ["findings", "--metrics", "metrics/stats.json"],
        "metrics/stats.json: not the stats stage's metrics (models.seed1.l2_penalty is not a "
        "comparison (median_universal, median_other, effect_size, p_value)); give "
        "results/stats.json",
        setup=_stats_metrics('{"models": {"seed1": {"skew": 0.3}}}'),
    ),
    Case(
        "show-on-a-parquet-that-is-no-neuron-table",
        ["show", "data/tokens/other.parquet"],
        "data/tokens/other.parquet: not a neuron table (no column layer, index, "
        "is_universal, excess_corr); give a table of data/stats/ or data/universality/",
        params_option=False,
        setup=lambda root: (
            __import__("pandas")
            .DataFrame({"a": [1, 2]})
            .to_parquet(root / TOKENS / "other.parquet")
        ),
    ),
    Case(
        "show-layer-the-model-lacks",
        ["show", "seed1", "--layer", "99"],
        "--layer: no layer 99; the model has layers [0, 1]",
        params_option=False,
        needs_analysis=True,
        setup=lambda root: shutil.copytree(root / "data" / "universality", root / "data" / "stats"),
    ),
    # ---- issue 27: duplicate keys, huge documents, ranges the code relies on
    Case(
        "key-given-twice-in-params-yaml",
        ["validate"],
        "params.yaml: key train.seeds is given twice, at line 2 and line 3; keep one",
        params="train:\n  seeds: [1, 2]\n  seeds: [3, 4]\n",
    ),
    Case(
        "section-given-twice-in-params-yaml",
        ["tokenize"],
        "params.yaml: key train is given twice, at line 1 and line 5; keep one",
        params="train:\n  seeds: [1, 2]\nmodel:\n  d_mlp: 64\ntrain:\n  seeds: [3, 4]\n",
    ),
    Case(
        "yaml-aliases-expanding-to-millions-of-values",
        ["validate"],
        "params.yaml: holds more than 100,000 values once its anchors and aliases are "
        "expanded; a parameter file is a few hundred",
        params=ALIAS_BOMB,
    ),
    Case(
        "huge-value-is-not-echoed-whole",
        ["tokenize"],
        "params.yaml: invalid parameters\n  train.batch_size: input should be a valid integer, "
        "unable to parse string as an integer, got 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
        "xxxxxxxxxxxxxx... (100,002 characters)",
        params=tiny_params_dict(train={"batch_size": "x" * 100_000}),
    ),
    Case(
        "params-file-too-large",
        ["validate"],
        "params.yaml: 2,097,165 bytes, more than the 1,048,576 a parameter file may have",
        params="# " + "x" * 2**21 + "\ntrain: {}\n",
    ),
    Case(
        "params-path-is-a-directory",
        ["tokenize"],
        "params.yaml: is a directory, expected the parameter file (YAML)",
        setup=_chain(_remove("params.yaml"), lambda root: (root / "params.yaml").mkdir()),
    ),
    Case(
        "params-path-is-a-fifo",
        ["tokenize"],
        "params.yaml: not a regular file, expected the parameter file (YAML)",
        setup=_chain(_remove("params.yaml"), lambda root: os.mkfifo(root / "params.yaml")),
    ),
    Case(
        "seed-beyond-what-torch-accepts",
        ["validate"],
        "params.yaml: invalid parameters\n  train.seeds.0: input should be less than or equal "
        "to 18446744073709551615, got 18446744073709551616",
        params=tiny_params_dict(train={"seeds": [2**64, 1]}),
    ),
    Case(
        "custom-group-with-more-seeds-than-members",
        ["validate"],
        "params.yaml: invalid parameters\n  train.seeds: [3] are not members of group custom "
        "(seeds 1..2 = a, b)",
        params=tiny_params_dict(group={"preset": "custom", "models": {"a": "m/a", "b": "m/b"}}),
    ),
    # ---- issue 27: an upstream output of another model
    Case(
        "collect-output-copied-from-another-model",
        ["stats"],
        "data/collect/seed1/summary.json: made for model 'seed2', but it lies in the folder "
        "of seed1; rerun its stage for seed1 (was another model's output copied here?)",
        needs_analysis=True,
        setup=_copy_folder("data/collect/seed2", "data/collect/seed1"),
    ),
    Case(
        "collect-output-copied-from-another-model-correlate",
        ["correlate"],
        "data/collect/seed3/summary.json: made for model 'seed1', but it lies in the folder "
        "of seed3; rerun its stage for seed3 (was another model's output copied here?)",
        needs_analysis=True,
        setup=_copy_folder("data/collect/seed1", "data/collect/seed3"),
    ),
    Case(
        "model-copied-from-another-seed",
        ["collect", "--seed", "1"],
        "models/seed1/training.json: the model was trained with seed 2, but it lies in the "
        "folder of seed 1; retrain seed1 (was another seed's model copied here?)",
        needs_models=True,
        setup=_copy_folder("models/seed2", "models/seed1"),
    ),
    # ---- issue 27: the plan refuses what correlate refuses
    Case(
        "plan-with-more-token-shards-than-batches",
        ["plan", "--products-tflops", "1", "--float64-tflops", "1"],
        "correlate.token_shards: expected 1 to 7 (the analysis set has 7 batches of 32 "
        "sequences), got 1000000",
        params=tiny_params_dict(correlate={"token_shards": 1_000_000}),
    ),
    # ---- issue 27: unclear errors made one clear line
    Case(
        "ui-port-negative",
        ["ui", "--port", "-1"],
        "--port: expected a port from 1 to 65535, got -1",
        params_option=False,
    ),
    Case(
        "ui-port-beyond-65535",
        ["ui", "--port", "70000"],
        "--port: expected a port from 1 to 65535, got 70000",
        params_option=False,
    ),
    Case(
        "ui-port-zero",
        ["ui", "--port", "0"],
        "--port: expected a port from 1 to 65535, got 0",
        params_option=False,
    ),
    Case(
        "ui-host-not-of-this-machine",
        ["ui", "--host", "192.0.2.1", "--port", "5000"],
        "--host: cannot listen on 192.0.2.1 ([Errno 99] Cannot assign requested address)",
        params_option=False,
    ),
    Case(
        "neuron-id-with-a-superscript-digit",
        ["neuron", "seed1", "0.\u00b2"],
        "NEURON: expected LAYER.INDEX like '0.17', got '0.\u00b2'",
        needs_analysis=True,
    ),
    Case(
        "neuron-with-a-truncated-universality-table",
        ["neuron", "seed1", "0.1"],
        "data/universality/seed1.parquet: not a readable parquet file (Parquet magic bytes not "
        "found in footer. Either the file is corrupted or this is not a parquet file.); rerun "
        "the universality stage or restore it with `dvc checkout`",
        needs_analysis=True,
        setup=lambda root: (root / "data/universality/seed1.parquet").write_bytes(
            (root / "data/universality/seed1.parquet").read_bytes()[:300]
        ),
    ),
    Case(
        "neuron-with-a-truncated-model-config",
        ["neuron", "seed1", "0.1"],
        "models/seed1/config.json: not valid JSON (Unterminated string starting at: line 2 "
        "column 26 (char 27))",
        needs_models=True,
        setup=lambda root: (root / "models/seed1/config.json").write_bytes(
            (root / "models/seed1/config.json").read_bytes()[:28]
        ),
    ),
    Case(
        # above correlate.full_pairs_max_neurons collect writes them and the units read them
        "truncated-within-layer-covariance",
        ["correlate"],
        "data/collect/seed2/within_layer_cov.npy: not a readable .npy array (mmap length is "
        "greater than file size); rerun collect with this params.yaml",
        params=tiny_params_dict(correlate={"full_pairs_max_neurons": 64}),
        needs_analysis=True,
        setup=_within_covariances(truncated="seed2"),
    ),
    Case(
        "tracking-uri-under-a-regular-file",
        ["log"],
        "MLFLOW_TRACKING_URI=blocker/mlruns: blocker is a file, not a folder; set it to a "
        "usable store or unset it (the default is the project's own mlruns.db)",
        setup=_write("blocker", b"a file\n"),
        env={"MLFLOW_TRACKING_URI": "blocker/mlruns"},
    ),
    Case(
        "exps-with-a-corrupt-dvc-lock",
        ["exps"],
        "dvc.lock: not valid YAML at line 4; restore it: git checkout dvc.lock",
        setup=_write("dvc.lock", b"schema: '2.0'\nstages: [\n  validate:\n"),
        params_option=False,
    ),
    Case(
        "mlflow-store-that-is-not-a-database",
        ["log"],
        "mlruns.db: not a SQLite database, so not an MLflow store; move it away (the next run "
        "starts a new store there) or set MLFLOW_TRACKING_URI to another store",
        setup=_write("mlruns.db", b"my notes, not a database\n"),
    ),
    Case(
        "tracking-uri-with-unknown-scheme",
        ["log"],
        "MLFLOW_TRACKING_URI=ftp://example.invalid/store: unknown scheme 'ftp' (expected a "
        "path, file:, sqlite:///, http(s):// or a database URI); set it to a usable store or "
        "unset it (the default is the project's own mlruns.db)",
        env={"MLFLOW_TRACKING_URI": "ftp://example.invalid/store"},
    ),
]


@pytest.fixture
def workspace(tmp_path, tiny_tokens_dir, request) -> Path:
    """A pipeline workspace with tokens, earlier outputs and metrics to keep intact."""
    root = tmp_path / "ws"
    shutil.copytree(tiny_tokens_dir, root / TOKENS)
    (root / "metrics").mkdir()
    (root / "metrics" / "earlier.json").write_text('{"kept": true}\n')
    (root / "models" / "seed1").mkdir(parents=True)
    (root / "models" / "seed1" / "earlier-output.txt").write_text("an earlier model\n")
    return root


def _run_cli(root: Path, case: Case, monkeypatch) -> tuple[int, str, str]:
    args = [*case.args, *(["--params", "params.yaml"] if case.params_option else [])]
    if case.subprocess:
        env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join([str(REPO_ROOT / "src"), str(REPO_ROOT)]),
            **case.env,
        )
        done = subprocess.run(
            command_argv(*args),
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
        )
        return done.returncode, done.stdout, done.stderr
    monkeypatch.chdir(root)
    for key, value in case.env.items():
        monkeypatch.setenv(key, value)
    result = invoke_command(args)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_gives_a_clear_error_and_changes_nothing(case, workspace, request, monkeypatch):
    if case.skip:
        pytest.skip(case.skip)
    if case.needs_models or case.needs_analysis:
        for seed, directory in request.getfixturevalue("tiny_group").items():
            target = workspace / "models" / f"seed{seed}"
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(directory, target)
    if case.needs_analysis:
        shutil.copytree(
            request.getfixturevalue("tiny_analysis"), workspace / "data", dirs_exist_ok=True
        )
    write_params(workspace, case.params)
    if case.setup:
        case.setup(workspace)
    before = snapshot(workspace)

    status, stdout, stderr = _run_cli(workspace, case, monkeypatch)

    assert status == 2, (status, stdout, stderr)
    assert ("\n" + stderr).endswith(f"\nerror: {case.message}\n"), stderr
    assert stdout == ""
    assert snapshot(workspace) == before


def test_there_are_at_least_20_bad_inputs():
    assert len({case.id for case in CASES}) == len(CASES) >= 20


# --------------------------------------------------------------------------- the docs' list


def _program(name: str) -> list[str]:
    """How a user starts ``name``: a stage's file, or the ``universal-neurons`` tool."""
    from stages import stage_names

    return [f"python -P stages/{name}.py"] if name in stage_names() else ["universal-neurons", name]


def markdown_table(cases: list[Case] = CASES) -> str:
    """The list of bad inputs and their messages, as docs/robustness.md shows it."""
    rows = ["| # | bad input | command | what the user reads on stderr |", "|---|---|---|---|"]
    for number, case in enumerate(cases, start=1):
        command = " ".join(_program(case.args[0]) + case.args[1:])
        message = f"error: {case.message}".replace("\n", " ↵ ")
        rows.append(f"| {number} | {case.id} | `{command}` | `` {message} `` |")
    return "\n".join(rows) + "\n"


def test_docs_list_every_bad_input_with_its_message():
    docs = (REPO_ROOT / "docs" / "robustness.md").read_text()
    assert markdown_table() in docs


def test_hub_id_while_offline(monkeypatch, tmp_path):
    """No stage takes a hub id yet; the library call a user makes stops before any download."""
    from universal_neurons.models.loading import ModelLoadError, load_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    hub_id = "stanford-crfm/alias-gpt2-small-x21"
    with pytest.raises(ModelLoadError) as info:
        load_model(hub_id)
    assert str(info.value) == (
        f"{hub_id}: not a local directory, and the Hugging Face hub cannot be reached "
        f"(offline). Download the model elsewhere (e.g. `huggingface-cli download {hub_id} "
        "--local-dir DIR`) and give its local directory instead."
    )
    assert list(tmp_path.iterdir()) == []


def test_a_jsonl_source_may_start_with_a_byte_order_mark(tmp_path):
    """Issue 27: a .jsonl file saved with a UTF-8 BOM reads like the same file without it."""
    from universal_neurons.text.corpus import local_documents

    lines = '{"text": "first document"}\n{"text": "second"}\n'
    plain, marked = tmp_path / "plain.jsonl", tmp_path / "marked.jsonl"
    plain.write_text(lines, encoding="utf-8")
    marked.write_text(lines, encoding="utf-8-sig")
    assert marked.read_bytes().startswith(b"\xef\xbb\xbf")
    assert (
        list(local_documents(marked))
        == list(local_documents(plain))
        == [
            "first document",
            "second",
        ]
    )
