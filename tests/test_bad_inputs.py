"""Bad input gets a clear error and changes nothing.

Each case is met the way a user meets it: a workspace (the layout `dvc repro` works in:
``params.yaml``, ``data/``, ``models/``, ``metrics/``) in a temporary directory, a
``universal-neurons <stage> --params params.yaml`` call through click's CliRunner (or a
real subprocess where the environment matters), and the exact one-line message the user
reads on stderr. Before and after the call every file of the workspace is snapshotted
(bytes and mtime) with the set of directories: a failed stage must leave all of it as it was,
temporary directories included.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from conftest import REPO_ROOT, tiny_params_dict

from universal_neurons.pipeline.cli import main

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
    subprocess: bool = False  # run the installed CLI in a real process
    env: dict[str, str] = field(default_factory=dict)
    skip: str | None = None


def _corpus(name: str, content: bytes | None = None, directory: bool = False):
    def setup(root: Path) -> None:
        path = root / "corpus" / name
        path.parent.mkdir(exist_ok=True)
        if directory:
            path.mkdir()
        elif content is not None:
            path.write_bytes(content)

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
        "nan-weight-gives-nan-activations-collect",
        ["collect", "--seed", "2"],
        "model seed2: non-finite pre-activations in layer 1 (layers [1]) at analysis batch 0; "
        "the model or its weights are broken",
        needs_models=True,
        setup=_plant(2, "transformer.h.1.mlp.c_fc.weight", _set((0, 5), float("nan"))),
    ),
    Case(
        "inf-weight-gives-nan-activations-correlate",
        ["correlate"],
        "model seed3: non-finite post-activations in layer 1 (layers [1]) at analysis batch 0; "
        "the model or its weights are broken",
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
        "models seed2 (layer 1) and seed3 (layer 1): correlation statistics became non-finite "
        "at analysis batch 0 (neurons 5 x 5); the activations are too large for the per-batch "
        "products (correlate.products: float64 has more range)",
        needs_models=True,
        setup=_chain(
            *(
                _plant(seed, "transformer.h.1.mlp.c_fc.weight", _scale((slice(None), 5), 1e20))
                for seed in (2, 3)
            )
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
    args = [*case.args, "--params", "params.yaml"]
    if case.subprocess:
        env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join([str(REPO_ROOT / "src"), str(REPO_ROOT)]),
            **case.env,
        )
        done = subprocess.run(
            [sys.executable, "-m", "universal_neurons", *args],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
        )
        return done.returncode, done.stdout, done.stderr
    monkeypatch.chdir(root)
    for key, value in case.env.items():
        monkeypatch.setenv(key, value)
    result = CliRunner().invoke(main, args)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_gives_a_clear_error_and_changes_nothing(case, workspace, request, monkeypatch):
    if case.skip:
        pytest.skip(case.skip)
    if case.needs_models:
        for seed, directory in request.getfixturevalue("tiny_group").items():
            target = workspace / "models" / f"seed{seed}"
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(directory, target)
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


def markdown_table(cases: list[Case] = CASES) -> str:
    """The list of bad inputs and their messages, as docs/robustness.md shows it."""
    rows = ["| # | bad input | command | what the user reads on stderr |", "|---|---|---|---|"]
    for number, case in enumerate(cases, start=1):
        command = " ".join(["universal-neurons", *case.args])
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
