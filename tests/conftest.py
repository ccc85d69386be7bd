"""Shared fixtures: tiny parameter sets, a tiny real token set and a tiny trained seed group.

Everything is real (real text from the installed corpus packages, models really trained),
only small: a tokenize + train of the whole group takes seconds on two cores.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from universal_neurons.config import Params, params_from_dict
from universal_neurons.pipeline.layout import Layout

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _threads_per_worker() -> None:
    """Under pytest-xdist, each worker and every process it starts (the stages ``dvc repro``
    runs) computes with its share of the cores: on 2 cores 2 workers of 2 OpenMP threads each
    would oversubscribe them, and idle OpenMP threads spin. Set where nothing says otherwise;
    ``python -m pytest -n 0`` keeps torch's default."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers <= 1:
        return
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(name, threads)
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


_threads_per_worker()

REPO_ROOT = Path(__file__).resolve().parents[1]


# Python source for "this process's own peak resident memory, in kB", for tests that measure a
# stage in a child process. VmHWM belongs to the process's own address space; ru_maxrss does not:
# after subprocess's vfork + exec it starts at the parent's peak (an xdist worker's 1.6 GB once
# failed a 1 GB bound in CI).
OWN_PEAK_RSS_KB = (
    "next(int(line.split()[1]) for line in open('/proc/self/status') if line.startswith('VmHWM:'))"
)


def command_argv(*args: str) -> list[str]:
    """The process a user starts for ``ARGS``: ``python -P stages/<name>.py ...`` when ARGS[0]
    names a stage (as ``dvc.yaml`` runs it), else ``python -m universal_neurons ARGS`` (a tool)."""
    from stages import stage_names

    if args and args[0] in stage_names():
        return [sys.executable, "-P", str(REPO_ROOT / "stages" / f"{args[0]}.py"), *args[1:]]
    return [sys.executable, "-m", "universal_neurons", *args]


def invoke_command(args: list[str]):
    """``ARGS`` through click's CliRunner, in this process: a stage file's command line when
    ARGS[0] names a stage, else the ``universal-neurons`` tool."""
    import importlib
    import inspect

    from click.testing import CliRunner

    from stages import stage_names
    from universal_neurons.pipeline.cli import main
    from universal_neurons.pipeline.runner import click_command

    if args and args[0] in stage_names():
        module = importlib.import_module(f"stages.{args[0]}")
        command = click_command(module.COMMAND)
        command.help = inspect.cleandoc(module.__doc__)
        return CliRunner().invoke(command, list(args[1:]))
    return CliRunner().invoke(main, list(args))


TINY_PARAMS = {
    "corpus": {"sources": ["news", "python_docs"], "min_doc_chars": 200},
    "tokenizer": {"kind": "bpe", "vocab_size": 512},
    "tokens": {"context": 32, "heldout_fraction": 0.05, "seed": 0},
    "model": {"n_layers": 2, "d_model": 32, "n_heads": 2, "d_mlp": 64, "activation": "gelu_new"},
    "train": {
        "seeds": [1, 2, 3],
        "tokens_per_model": 120_000,
        "batch_size": 16,
        "learning_rate": 1.0e-2,
        "warmup_fraction": 0.05,
        "weight_decay": 0.1,
        "heldout_sequences": 64,
        "eval_every_steps": 50,
        "checkpoint_tokens": [60_000],
        "device": "cpu",
        "threads": 1,
    },
    "analysis": {"split": "train", "max_sequences": 200, "batch_size": 32},
    # correlate takes the candidate links with these (matching.pair_reductions), so the tests
    # that resample tiny_analysis's outputs use them too
    "uncertainty": {"candidates": 4, "baseline_draws": 3},
}


def tiny_params_dict(**sections) -> dict:
    """A deep copy of TINY_PARAMS with whole sections or single keys replaced.

    ``tiny_params_dict(train={"seeds": [1, 2]})`` updates keys inside the section.
    """
    import copy

    raw = copy.deepcopy(TINY_PARAMS)
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    # Every section and every key of a section present (defaults where TINY_PARAMS says
    # nothing): DVC requires each parameter that dvc.yaml names to exist in params.yaml.
    defaults = Params().model_dump(mode="json")
    for section, values in defaults.items():
        present = raw.setdefault(section, values)
        if isinstance(values, dict) and present is not values:
            for key, value in values.items():
                present.setdefault(key, value)
    return raw


def tiny_params(**sections) -> Params:
    """Validated tiny parameters (see ``tiny_params_dict``)."""
    return params_from_dict(tiny_params_dict(**sections))


def write_token_set_summary(path: Path, tokens_dir: Path, params: Params, **fields) -> None:
    """A stage's ``summary.json`` recording the analysis token set of ``params`` (as the
    analysis stages write it), plus ``fields`` (``group=[...]`` or ``model="seed1"``)."""
    import json

    from universal_neurons.matching.activations import load_analysis_set, token_set_record

    tokens, excluded, kept = load_analysis_set(tokens_dir, params.analysis)
    record = token_set_record(tokens, excluded, kept, params.analysis.split)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"token_set": record, **fields}))


@pytest.fixture(scope="session")
def tiny_tokens_dir(tmp_path_factory) -> Path:
    """A tokenize stage output built from real text with TINY_PARAMS."""
    from stages import tokenize

    root = tmp_path_factory.mktemp("tokens")
    directory = root / "tokens"
    tokenize.run(tiny_params(), Layout.at(root, tokens=directory))
    return directory


@pytest.fixture(scope="session")
def tiny_group(tiny_tokens_dir, tmp_path_factory) -> dict[int, Path]:
    """Three tiny GPT-2s trained on the tiny token set, one per seed: ``{seed: model_dir}``."""
    from stages import train

    params = tiny_params()
    root = tmp_path_factory.mktemp("models")
    layout = Layout.at(tmp_path_factory.mktemp("train"), tokens=tiny_tokens_dir, models=root)
    train.run(params, layout)  # in parallel processes
    return {seed: root / f"seed{seed}" for seed in params.train.seeds}


@pytest.fixture(scope="session")
def tiny_analysis(tiny_tokens_dir, tiny_group, tmp_path_factory) -> Path:
    """A workspace ``data/`` with the analysis outputs of the tiny group (collect of every
    seed, correlate, baseline, universality, weight_stats), made with TINY_PARAMS."""
    from stages import baseline, collect, correlate, universality, weight_stats

    params = tiny_params()
    root = tmp_path_factory.mktemp("analysis")
    models = next(iter(tiny_group.values())).parent
    layout = Layout.at(root, tokens=tiny_tokens_dir, models=models)
    for seed in params.train.seeds:
        collect.run(params, layout, seed, progress=False)
    correlate.run(params, layout, progress=False)
    baseline.run(params, layout)
    universality.run(params, layout)
    weight_stats.run(params, layout)
    return root / "data"


def save_tiny_neox(directory: Path, seed: int, vocab_size: int = 512, context: int = 64) -> None:
    """A tiny Pythia-architecture model (GPT-NeoX: rotary, parallel attention + MLP; 2 layers
    of 64 neurons), random weights from ``seed``, saved in Hugging Face format."""
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    config = GPTNeoXConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=context,
        rotary_pct=0.25,
        initializer_range=0.2,
    )
    torch.manual_seed(seed)
    GPTNeoXForCausalLM(config).save_pretrained(directory)


def git(cwd: Path, *args: str) -> str:
    """Run ``git *args`` in ``cwd`` with a fixed identity and no inherited git settings;
    return its stdout, stripped."""
    import subprocess

    env = {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.invalid",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.invalid",
        "PATH": "/usr/bin:/bin",
    }
    return subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True
    ).stdout.strip()


LONGEST_MODULES = (
    "test_real_width_preset.py",
    "test_scale_gpt2_small.py",
    "test_tracking_pipeline.py",
    "test_determinism.py",
    "test_preset_pipeline.py",
    "test_pipeline_dvc.py",
)
"""The modules that take longest on 2 cores, longest first (``pytest --durations=0``): the
GPT-2-width tier (``make test-width``), then the pipelines run through real ``dvc repro``/``dvc exp
run``. test_tracking_pipeline builds the shared tiny pipeline (``pipeline_repo.reproduced_tiny``,
its module fixture) while test_determinism, on the other worker, reproduces its own copy first;
test_pipeline_dvc, which only copies it, comes after them so that no worker waits on its lock."""


def _start_order(item: pytest.Item) -> tuple[int, int]:
    name = item.path.name
    if name in LONGEST_MODULES:
        return 0, LONGEST_MODULES.index(name)
    return (1 if item.get_closest_marker("slow") else 2), 0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest modules first, then the other slow tests (stable otherwise): under
    pytest-xdist (``-n``, pyproject) they start at once on their own workers instead of
    trailing at the end of the run while the other workers idle."""
    items.sort(key=_start_order)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A test marked ``browser`` needs headless Chromium: skipped, naming how to install it,
    where there is none (``make test`` installs it where it can), but failed under CI."""
    if item.get_closest_marker("browser") is None:
        return
    from headless_chromium import BrowserError, chromium_executable

    try:
        chromium_executable()
    except BrowserError as missing:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set and the browser tests cannot run: {missing}")
        pytest.skip(str(missing))
