"""A generated preset pipeline end to end with real DVC (issue 22): a pretrained group of tiny
local Hugging Face GPT-2 directories standing in for a preset's members goes through every stage
the preset runs, to families, a report and an MLflow run, without training outputs."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
from conftest import tiny_params_dict
from mlflow.tracking import MlflowClient
from pipeline_repo import make_preset_repo, pipeline_env, run
from transformers import PreTrainedTokenizerFast


def _hub_copy(model_dir, tokens_dir, dest):
    """A member as the hub holds it: config, weights and tokenizer, no training files."""
    dest.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copy2(model_dir / name, dest / name)
    PreTrainedTokenizerFast(
        tokenizer_file=str(tokens_dir / "tokenizer.json"), eos_token="<|endoftext|>"
    ).save_pretrained(dest)
    return str(dest)


NEURONS = 2 * 64
"""Neurons of a tiny member (TINY_PARAMS: 2 layers of 64)."""
RESAMPLES = 50


def _check_uncertainty(folder, members):
    """The preset's uncertainty outputs, made by the slab path: correlate wrote maxima (no
    pair files); per member ``[RESAMPLES, NEURONS]`` resampled and ``[NEURONS]`` whole-set
    excess correlations (a difference of two correlations: within [-2, 2]); per member a
    percentile interval lo <= median <= hi of % universal, the metrics' headline the
    results' own numbers, and the report's table of intervals."""
    correlate = json.loads((folder / "data" / "correlate" / "summary.json").read_text())
    assert correlate["outputs"] == "maxima"
    assert not (folder / "data" / "correlate" / "pairs").exists()
    resamples = folder / "data" / "uncertainty_resamples"
    for name in members:
        resampled = np.load(resamples / f"{name}_resampled.npy")
        whole = np.load(resamples / f"{name}_whole.npy")
        assert resampled.shape == (RESAMPLES, NEURONS) and whole.shape == (NEURONS,)
        live = np.isfinite(whole)
        assert live.sum() > NEURONS // 2 and np.abs(whole[live]).max() <= 2.0
        assert np.isfinite(resampled[:, live]).mean() > 0.99
        assert np.abs(resampled[:, live] - whole[live]).max() > 0  # resamples differ
    results = json.loads((folder / "results" / "uncertainty.json").read_text())
    headline = json.loads((folder / "metrics" / "uncertainty.json").read_text())
    assert results["settings"]["resamples"] == RESAMPLES
    assert len(results["kept_positions_per_block"]) == results["settings"]["blocks"]
    for name in members:
        model = results["models"][name]
        lo, hi = model["percent_universal_lo"], model["percent_universal_hi"]
        assert 0.0 <= lo <= model["percent_universal_median"] <= hi <= 100.0, (name, model)
        assert headline[name] == {"percent_universal_hi": hi, "percent_universal_lo": lo}
        assert len(model["per_layer"]) == 2


@pytest.mark.slow
def test_a_preset_pipeline_runs_to_families_report_and_mlflow_run(
    tiny_group, tiny_tokens_dir, tmp_path
):
    """``dvc repro`` of gpt2-small's generated pipeline with a custom group of two local
    members, above ``correlate.full_pairs_max_neurons`` as every preset is: every stage runs
    (no emergence or training curve exists), the uncertainty stages through the slab path, the
    families, the report with its neuron pages and the MLflow run record are written, and a
    second ``dvc status`` finds nothing to do but the always-changed fetch."""
    members = {
        f"member-{seed}": _hub_copy(tiny_group[seed], tiny_tokens_dir, tmp_path / "hub" / str(seed))
        for seed in (1, 2)
    }
    params = tiny_params_dict(
        group={"preset": "custom", "models": members},
        train={"seeds": [1, 2]},
        tokenizer={"kind": "model", "path": "models/seed1"},
        universality={"threshold": 0.05},  # universal neurons in a tiny group of two
        effects={"max_sequences": 8, "controls": 1},
        # 128 neurons per member: above this, as every preset is (maxima, then slabs)
        correlate={"full_pairs_max_neurons": NEURONS // 2},
        uncertainty={"null_group": "none", "resamples": RESAMPLES},
    )
    repo, folder = make_preset_repo(tmp_path / "repo", "gpt2-small", params)
    env = pipeline_env(repo, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlruns.db'}")
    run(repo, "dvc", "repro", "pipelines/gpt2-small/dvc.yaml", env=env)

    _check_uncertainty(folder, members=("seed1", "seed2"))
    families = json.loads((folder / "results" / "families.json").read_text())
    assert families and (folder / "data" / "families" / "seed1.parquet").is_file()
    index = (folder / "report" / "index.html").read_text()
    for section in ("universal-neuron-table", "families", "what-they-do", "how-sure"):
        assert f'<h2 id="{section}">' in index, section
    assert "Across training" not in index and 'id="training"' not in index  # no training here
    link = re.search(r'href="(neurons/seed1/\d+\.\d+\.html)"', index)
    assert link and (folder / "report" / link.group(1)).is_file()  # a neuron page
    record = json.loads((folder / "tracking" / "run.json").read_text())
    client = MlflowClient(record["tracking_uri"])
    assert client.get_run(record["run_id"]).info.status == "FINISHED"
    assert not (repo / "metrics").exists() and not (repo / "report").exists()  # root untouched
    status = run(repo, "dvc", "status", "pipelines/gpt2-small/dvc.yaml", env=env).stdout
    changed = {line.strip().rstrip(":") for line in status.splitlines() if line[:1] not in " \t"}
    assert {name.rsplit(":", 1)[-1].split("@")[0] for name in changed if name} == {"fetch"}
