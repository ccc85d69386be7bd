"""Real DVC: collect -> correlate -> baseline -> universality on the tiny group, in a temporary repo.

The tokenize and train outputs come from the session fixtures and are recorded with
``dvc commit`` (no retraining); ``dvc repro universality`` then runs the four analysis
stages through the ``universal-neurons`` CLI exactly as the default pipeline does.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO_ROOT, tiny_params

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent


def _run(args, cwd, env):
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_dvc_repro_runs_the_analysis_stages(tiny_group, tiny_tokens_dir, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("src",):
        shutil.copytree(REPO_ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO_ROOT / "dvc.yaml", repo / "dvc.yaml")
    params = tiny_params(analysis={"max_sequences": 100}, baseline={"samples": 2})
    (repo / "params.yaml").write_text(yaml.safe_dump(params.model_dump()))
    shutil.copytree(tiny_tokens_dir, repo / "data" / "tokens")
    for seed, directory in tiny_group.items():
        shutil.copytree(directory, repo / "models" / f"seed{seed}")
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "PYTHONPATH": f"{repo / 'src'}:{repo}",
    }
    _run(["git", "init", "-q"], repo, env)
    _run([BIN / "dvc", "init", "-q"], repo, env)
    _run([BIN / "dvc", "repro", "validate"], repo, env)
    _run([BIN / "dvc", "commit", "-f", "tokenize", "train"], repo, env)
    out = _run([BIN / "dvc", "repro", "universality"], repo, env)
    for stage in ("collect@1", "collect@2", "collect@3", "correlate", "baseline", "universality"):
        assert f"Running stage '{stage}'" in out
    assert "Running stage 'train" not in out and "Running stage 'tokenize'" not in out

    metrics = json.loads(_run([BIN / "dvc", "metrics", "show", "--json"], repo, env))
    shown = metrics[""]["data"]["metrics/universality.json"]["data"]
    written = json.loads((repo / "metrics" / "universality.json").read_text())
    assert list(written["models"]) == ["seed1", "seed2", "seed3"]
    # DVC shows the scalar entries (it leaves out the per-layer lists)
    assert shown["mean_percent_universal"] == written["mean_percent_universal"]
    assert shown["kept_positions"] == written["kept_positions"] == 3030
    for name, model in written["models"].items():
        assert shown["models"][name]["percent_universal"] == model["percent_universal"]
        assert shown["models"][name]["n_neurons"] == model["n_neurons"] == 128
    assert "metrics/baseline.json" in metrics[""]["data"]
    plots = json.loads(_run([BIN / "dvc", "plots", "show", "--json"], repo, env))
    assert "metrics/universality_per_layer.csv" in plots["data"]
    assert (repo / "data" / "correlate" / "pairs" / "seed1__seed3.safetensors").is_file()

    # the threshold is a param of universality alone: of the stages that ran, only that one is
    # out of date (the later stages, which this test never ran, are listed as not run)
    downstream = {"stats", "syntax", "classify", "report", "log"}
    before = set(json.loads(_run([BIN / "dvc", "status", "--json"], repo, env)))
    assert before <= downstream
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    raw["universality"]["threshold"] = 0.01
    (repo / "params.yaml").write_text(yaml.safe_dump(raw))
    status = json.loads(_run([BIN / "dvc", "status", "--json"], repo, env))
    assert set(status) - downstream == {"universality"}
    assert any("universality" in str(change) for change in status["universality"])
    _run([BIN / "dvc", "repro", "universality"], repo, env)
    relaxed = json.loads((repo / "metrics" / "universality.json").read_text())
    assert relaxed["threshold"] == 0.01
    assert relaxed["mean_percent_universal"] > written["mean_percent_universal"]
