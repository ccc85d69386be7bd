"""Real DVC: collect -> correlate -> baseline -> universality on the tiny group, in a temporary repo.

The tokenize and train outputs come from the session fixtures and are recorded with
``dvc commit`` (no retraining); ``dvc repro universality`` then runs the four analysis
stages through their stage files (``python -P stages/<name>.py``) exactly as the default
pipeline does.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO_ROOT, tiny_params

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent


def _run(args, cwd, env):
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _after(target: str, repo: Path, env) -> set[str]:
    """The stages of the repo's pipeline that ``dvc repro TARGET`` does not run: every stage
    but ``target`` and its ancestors (from ``dvc dag``, so no list here can go stale)."""
    dot = _run([BIN / "dvc", "dag", "--dot"], repo, env)
    edges = [
        tuple(part.strip().strip('";') for part in line.split("->"))
        for line in dot.splitlines()
        if "->" in line
    ]
    names = {name for edge in edges for name in edge}
    ancestors, todo = {target}, [target]
    while todo:
        node = todo.pop()
        for parent, child in edges:
            if child == node and parent not in ancestors:
                ancestors.add(parent)
                todo.append(parent)
    return {name.split("@")[0] for name in names - ancestors}


def test_dvc_repro_runs_the_analysis_stages(tiny_group, tiny_tokens_dir, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("src", "stages"):
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
    # the train stage's other output, its wall times (the fixture trained the models)
    (repo / "metrics").mkdir()
    (repo / "metrics" / "train_time.json").write_text('{"trained_by": "test fixture"}\n')
    _run([BIN / "dvc", "repro", "validate"], repo, env)
    _run([BIN / "dvc", "commit", "-f", "tokenize", "train"], repo, env)
    out = _run([BIN / "dvc", "repro", "universality"], repo, env)
    for stage in ("collect@1", "collect@2", "collect@3", "correlate", "baseline", "universality"):
        assert f"Running stage '{stage}'" in out
    assert "Running stage 'train" not in out and "Running stage 'tokenize'" not in out

    metrics = json.loads(_run([BIN / "dvc", "metrics", "show", "--json"], repo, env))
    shown = metrics[""]["data"]["metrics/universality.json"]["data"]
    written = json.loads((repo / "results" / "universality.json").read_text())
    assert list(written["models"]) == ["seed1", "seed2", "seed3"]
    assert written["kept_positions"] == 3030
    # DVC shows the headline: mean and per-model percentages, median correlation and baseline
    assert shown["mean_percent_universal"] == written["mean_percent_universal"]
    assert set(shown) == {
        "mean_percent_universal", "percent_universal", "median_corr", "median_baseline"
    }  # fmt: skip
    for name, model in written["models"].items():
        assert shown["percent_universal"][name] == model["percent_universal"]
        assert model["n_neurons"] == 128
    tables = [
        pd.read_parquet(repo / "data" / "universality" / f"seed{s}.parquet") for s in (1, 2, 3)
    ]
    live = pd.concat([t[~t["dead"]] for t in tables])
    assert shown["median_corr"] == pytest.approx(np.median(live["mean_corr"]), abs=1e-12)
    assert shown["median_baseline"] == pytest.approx(np.median(live["mean_baseline"]), abs=1e-12)
    # the baseline's summary is a result, not a metric
    assert "metrics/baseline.json" not in metrics[""]["data"]
    assert json.loads((repo / "results" / "baseline.json").read_text())["kind"] == "rotation"
    plots = json.loads(_run([BIN / "dvc", "plots", "show", "--json"], repo, env))
    assert "metrics/universality_per_layer.csv" in plots["data"]
    # correlate kept what the later stages read of the pairs, not the [N, N] statistics
    files = {p.name: p.stat().st_size for p in (repo / "data" / "correlate").iterdir()}
    assert {"candidate_links.safetensors", "one_to_one_matches.parquet"} <= set(files)
    assert "pairs" not in files and max(files.values()) < 8 * 128 * 128

    # the threshold is a param of universality alone: of the stages that ran, only that one is
    # out of date (the later stages, which this test never ran, are listed as not run)
    downstream = _after("universality", repo, env)
    assert {"stats", "report", "log"} <= downstream and "correlate" not in downstream
    before = set(json.loads(_run([BIN / "dvc", "status", "--json"], repo, env)))
    assert before <= downstream
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    raw["universality"].update(threshold=0.01, candidate_threshold=0.01)
    (repo / "params.yaml").write_text(yaml.safe_dump(raw))
    status = json.loads(_run([BIN / "dvc", "status", "--json"], repo, env))
    # (validate reads the whole params.yaml, so it reruns too; its output stays the same, so it
    # makes nothing else rerun)
    assert set(status) - downstream == {"validate", "universality"}
    assert any("universality" in str(change) for change in status["universality"])
    _run([BIN / "dvc", "repro", "universality"], repo, env)
    relaxed = json.loads((repo / "results" / "universality.json").read_text())
    assert relaxed["threshold"] == 0.01
    assert relaxed["mean_percent_universal"] > written["mean_percent_universal"]

    # correlate takes the baseline draws while it holds the pair statistics (no [N, N] file
    # between stages, docs/sharing.md): more draws rerun correlate's pass, not collect
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    raw["baseline"]["samples"] = 3
    (repo / "params.yaml").write_text(yaml.safe_dump(raw))
    status = json.loads(_run([BIN / "dvc", "status", "--json"], repo, env))
    assert set(status) - downstream == {"validate", "correlate", "baseline"}
    out = _run([BIN / "dvc", "repro", "universality"], repo, env)
    assert "Running stage 'baseline'" in out and "Running stage 'universality'" in out
    assert "Running stage 'correlate'" in out and "Running stage 'collect" not in out
    assert json.loads((repo / "results" / "baseline.json").read_text())["samples"] == 3
