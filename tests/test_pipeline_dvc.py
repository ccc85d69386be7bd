"""`dvc repro` for real, on a tiny parameter set, in a temporary copy of the repository."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO_ROOT, tiny_params_dict

pytestmark = pytest.mark.slow


def run(cmd, cwd, check=True):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    env.update(
        GIT_AUTHOR_NAME="t",
        GIT_AUTHOR_EMAIL="t@t",
        GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@t",
    )
    result = subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, shell=isinstance(cmd, str)
    )
    if check and result.returncode:
        raise AssertionError(f"{cmd} failed:\n{result.stdout}\n{result.stderr}")
    return result


def copy_repository(destination: Path, params: dict) -> Path:
    """A fresh git+DVC repository holding the project's tracked files and ``params``."""
    files = run(["git", "ls-files"], REPO_ROOT).stdout.split()
    for name in files:
        if name == "dvc.lock" or name.startswith(("dvc-remote/", "metrics/", "results/")):
            continue
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / name, target)
    (destination / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], destination)
    run(["git", "add", "-A"], destination)
    run(["git", "commit", "-qm", "tiny"], destination)
    return destination


def test_dvc_repro_runs_tokenize_and_train_and_is_then_up_to_date(tmp_path):
    repo = copy_repository(
        tmp_path / "repo",
        tiny_params_dict(
            train={"seeds": [1, 2], "tokens_per_model": 30_000, "checkpoint_tokens": [15_000]}
        ),
    )
    run(["dvc", "repro"], repo)
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert {"tokenize", "train"} <= set(lock["stages"])
    for seed in (1, 2):
        assert (repo / "models" / f"seed{seed}" / "model.safetensors").is_file()
    assert "up to date" in run(["dvc", "status"], repo).stdout

    # A changed train parameter reruns training only, never tokenize.
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["learning_rate"] = 0.005
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = run(["dvc", "status"], repo).stdout
    assert "train" in status and "tokenize" not in status
    before = (repo / "models" / "seed1" / "model.safetensors").read_bytes()
    log = run(["dvc", "repro"], repo).stdout
    assert "Stage 'tokenize' didn't change" in log
    assert (repo / "models" / "seed1" / "model.safetensors").read_bytes() != before
