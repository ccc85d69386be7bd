"""`dvc repro` for real, on a tiny parameter set, in a temporary copy of the repository."""

import pytest
import yaml
from pipeline_repo import copy_pipeline_repo, reproduced_tiny, run

pytestmark = pytest.mark.slow


def test_dvc_repro_runs_tokenize_and_train_and_is_then_up_to_date(tmp_path_factory, tmp_path):
    # the shared tiny pipeline after its first `dvc repro` (pipeline_repo.reproduced_tiny)
    repo = copy_pipeline_repo(reproduced_tiny(tmp_path_factory), tmp_path / "repo")
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert {"tokenize", "train"} <= set(lock["stages"])
    for seed in (1, 2):
        assert (repo / "models" / f"seed{seed}" / "model.safetensors").is_file()
    assert "up to date" in run(repo, "dvc", "status").stdout

    # A changed train parameter reruns training only, never tokenize.
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["learning_rate"] = 0.005
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = run(repo, "dvc", "status").stdout
    assert "train" in status and "tokenize" not in status
    before = (repo / "models" / "seed1" / "model.safetensors").read_bytes()
    log = run(repo, "dvc", "repro", "train").stdout  # the stages after train: test_determinism
    assert "Stage 'tokenize' didn't change" in log and "Running stage 'train'" in log
    assert (repo / "models" / "seed1" / "model.safetensors").read_bytes() != before
