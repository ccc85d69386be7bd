"""What a failed `dvc repro` / `dvc exp run` leaves, and what restores it (docs/robustness.md).

Real git + DVC in a temporary copy of the repository, the tiny tokenize + train stages:
- a bad parameter is refused by the validate stage before DVC removes any output;
- a valid parameter change reruns the validate stage without rerunning anything else;
- a stage that fails after the parameters passed loses its outputs to DVC, and
  `dvc checkout` (cached outputs) + `git checkout` (uncached metrics, params.yaml) restore
  them byte for byte, as the docs say;
- a temporary folder left by a killed write is invisible to DVC (`.dvcignore`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
import yaml
from pipeline_repo import copy_pipeline_repo, make_pipeline_repo, run, tiny_pipeline_params

from universal_neurons.config import params_from_dict

pytestmark = pytest.mark.slow

UP_TO_DATE = "Data and pipelines are up to date."


def _files(repo: Path) -> dict[str, str]:
    """sha256 of every file of the outputs and of params.yaml / dvc.lock."""
    found = {}
    for top in ("models", "data", "metrics"):
        for path in sorted((repo / top).rglob("*")):
            if path.is_file():
                found[str(path.relative_to(repo))] = hashlib.sha256(path.read_bytes()).hexdigest()
    for name in ("params.yaml", "dvc.lock"):
        found[name] = hashlib.sha256((repo / name).read_bytes()).hexdigest()
    return found


def _set_param(repo: Path, section: str, key: str, value) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params[section][key] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def trained_template(tmp_path_factory) -> Path:
    """A repository where `dvc repro train` ran and everything is committed (made once)."""
    every_key = params_from_dict(tiny_pipeline_params()).model_dump(mode="json")  # DVC needs each
    repo = make_pipeline_repo(tmp_path_factory.mktemp("trained") / "repo", every_key)
    run(repo, "dvc", "repro", "train")
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-q", "-m", "trained")
    return repo


@pytest.fixture
def trained_repo(trained_template, tmp_path) -> Path:
    """Each test's own copy of the trained repository (git, DVC cache and outputs)."""
    return copy_pipeline_repo(trained_template, tmp_path / "repo")


def test_a_bad_parameter_is_refused_before_dvc_removes_any_output(trained_repo):
    repo = trained_repo
    before = _files(repo)
    for section, key, value in [("train", "learning_rate", 2), ("baseline", "samples", 0)]:
        _set_param(repo, section, key, value)
        failed = run(repo, "dvc", "repro", "train", check=False)
        assert failed.returncode != 0
        assert f"{section}.{key}: input should be" in failed.stderr + failed.stdout
        assert {k: v for k, v in _files(repo).items() if k != "params.yaml"} == {
            k: v for k, v in before.items() if k != "params.yaml"
        }
        run(repo, "git", "checkout", "params.yaml")
    assert _files(repo) == before
    assert UP_TO_DATE in run(repo, "dvc", "status", "train").stdout

    # dvc exp run -S writes the bad value into params.yaml, then the validate stage refuses
    # it: the outputs stay, params.yaml keeps the value until `git checkout params.yaml`.
    failed = run(repo, "dvc", "exp", "run", "-S", "train.learning_rate=abc", check=False)
    assert failed.returncode != 0
    assert yaml.safe_load((repo / "params.yaml").read_text())["train"]["learning_rate"] == "abc"
    assert {k: v for k, v in _files(repo).items() if k != "params.yaml"} == {
        k: v for k, v in before.items() if k != "params.yaml"
    }
    run(repo, "git", "checkout", "params.yaml")
    assert UP_TO_DATE in run(repo, "dvc", "status", "train").stdout


def test_a_valid_change_reruns_the_validate_stage_and_nothing_else(trained_repo):
    repo = trained_repo
    _set_param(repo, "stats", "alpha", 0.01)
    log = run(repo, "dvc", "repro", "train").stdout
    assert "Running stage 'validate'" in log
    assert "Stage 'train' didn't change" in log and "Running stage 'train'" not in log


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_after_a_failed_stage_checkout_restores_every_output(trained_repo):
    """train.device: cuda is valid but fails on this machine, after DVC removed models/ and
    the uncached metrics/train_time.json (and recorded the validate stage's run in dvc.lock):
    `git checkout params.yaml dvc.lock metrics/train_time.json` and `dvc checkout train`
    restore every byte."""
    repo = trained_repo
    before = _files(repo)
    _set_param(repo, "train", "device", "cuda")
    failed = run(repo, "dvc", "repro", "train", check=False)
    assert failed.returncode != 0
    assert "train.device: 'cuda' was asked for" in failed.stderr + failed.stdout
    assert not (repo / "models").exists() and not (repo / "metrics" / "train_time.json").exists()
    assert run(repo, "git", "diff", "--quiet", "dvc.lock", check=False).returncode == 1

    run(repo, "git", "checkout", "params.yaml", "dvc.lock", "metrics/train_time.json")
    run(repo, "dvc", "checkout", "train")
    assert _files(repo) == before
    assert UP_TO_DATE in run(repo, "dvc", "status", "train").stdout


def test_a_leftover_temporary_folder_is_invisible_to_dvc(trained_repo):
    """What a killed write leaves (``.seed1.<pid>.<random>.tmp``) does not make models/ look
    modified, so no stage that reads models/ reruns for nothing."""
    leftover = trained_repo / "models" / ".seed1.99999.abc.tmp" / "seed1"
    leftover.mkdir(parents=True)
    (leftover / "model.safetensors").write_bytes(b"half-written")
    assert UP_TO_DATE in run(trained_repo, "dvc", "status", "train").stdout
