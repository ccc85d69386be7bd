"""A generated preset pipeline end to end with real DVC (issue 22): a pretrained group of tiny
local Hugging Face GPT-2 directories standing in for a preset's members goes through every stage
the preset runs, to families, a report and an MLflow run, without training outputs. The members
carry a training checkpoint and their step 0 as local checkpoint folders: the emergence and null
stages must give the numbers of the trained group's own paths on the same models."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pandas as pd
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


CHECKPOINT = "checkpoints/tokens_60000"
"""The tiny group's training checkpoint (TINY_PARAMS: 60,000 tokens asked, 60,416 seen)."""


def _with_checkpoints(model_dir, step0_dir, tokens_dir, dest) -> str:
    """A member as another project's train stage leaves it: the hub copy plus its
    ``training.json``, its checkpoint at 60,000 tokens and its step 0 (``step0_dir``), as local
    checkpoint folders."""
    _hub_copy(model_dir, tokens_dir, dest)
    shutil.copy2(model_dir / "training.json", dest / "training.json")
    (dest / CHECKPOINT).mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "checkpoint.json"):
        shutil.copy2(model_dir / CHECKPOINT / name, dest / CHECKPOINT / name)
    shutil.copytree(step0_dir, dest / "checkpoints" / "tokens_0")
    return str(dest)


def _trained_step0(tokens_dir, scratch) -> None:
    """The trained group's step 0 of seeds 1 and 2, as its null stage builds it
    (``null_measures.untrained_models``), saved as ``scratch/seed{s}``."""
    from conftest import tiny_params

    from stages.null_measures import untrained_models
    from universal_neurons.pipeline.layout import Layout

    untrained_models(
        tiny_params(train={"seeds": [1, 2]}), Layout.at(scratch, tokens=tokens_dir), scratch
    )


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


COMPARED = ["mean_corr", "mean_baseline", "excess_corr"]


def _assert_close(got: pd.DataFrame, want: pd.DataFrame) -> None:
    """Same neurons, same dead flags; ``COMPARED`` within 1e-9 (NaN where NaN)."""
    np.testing.assert_array_equal(got[["layer", "index", "dead"]], want[["layer", "index", "dead"]])
    assert got[COMPARED].isna().equals(want[COMPARED].isna())
    assert np.nanmax(np.abs(got[COMPARED].to_numpy() - want[COMPARED].to_numpy())) <= 1e-9


def _check_in_memory_numbers(folder, tiny_group) -> None:
    """The preset's emergence points (the stages' path above the full-pairs size, on the fetched
    checkpoints) and null tables (on the fetched step 0) against the trained group's in-memory
    paths on the same token set: the trained models themselves, and ``init_model`` of each seed."""
    from stages import emergence_points, null_measures
    from universal_neurons.config import load_params
    from universal_neurons.pipeline.layout import Layout

    params = load_params(folder / "params.yaml")
    trained = params.model_copy(
        update={"group": params.group.model_copy(update={"preset": "trained"})}
    )
    layout = Layout.at(folder, models=tiny_group[1].parent)
    points = json.loads((folder / "data" / "emergence_points" / "points.json").read_text())
    own = json.loads((tiny_group[1] / "training.json").read_text())["tokens"]
    assert [p["tokens"] for p in points["points"]] == [60_416, own]
    analysis = emergence_points.analysis_params(params).analysis
    from universal_neurons.matching.activations import load_analysis_set

    tokens, excluded, _ = load_analysis_set(layout.tokens, analysis)
    for point in points["points"]:
        measures = emergence_points.in_memory_measures(
            params, layout, point["checkpoint"], (tokens, excluded)
        )
        got = pd.read_parquet(folder / "data" / "emergence_points" / point["file"])
        for name, table in measures.tables.items():
            _assert_close(got[got["model"] == name].reset_index(drop=True), table)
    null, _ = null_measures.null_tables(trained, layout)
    assert json.loads((folder / "data" / "null_measures" / "summary.json").read_text())["run"]
    for name, table in null.items():
        fetched = pd.read_parquet(folder / "data" / "null_measures" / f"{name}.parquet")
        _assert_close(fetched, table)  # and every other column: weights, moments, percentiles
        pd.testing.assert_frame_equal(fetched, table, check_exact=False, rtol=1e-9, atol=1e-9)


@pytest.mark.slow
def test_a_preset_pipeline_runs_to_families_report_and_mlflow_run(
    tiny_group, tiny_tokens_dir, tmp_path
):
    """``dvc repro`` of gpt2-small's generated pipeline with a custom group of two local
    members, above ``correlate.full_pairs_max_neurons`` as every preset is: every stage runs,
    the uncertainty stages through the slab path, the emergence stages over the members' local
    checkpoints and the null stages over their step 0 through the stages' path, with the trained
    group's in-memory numbers; the families, the report with its neuron pages and the MLflow run
    record are written, and a second ``dvc status`` finds nothing to do but the always-changed
    fetch."""
    step0 = tmp_path / "step0"
    _trained_step0(tiny_tokens_dir, step0)
    members = {
        f"member-{seed}": _with_checkpoints(
            tiny_group[seed], step0 / f"seed{seed}", tiny_tokens_dir, tmp_path / "hub" / str(seed)
        )
        for seed in (1, 2)
    }
    params = tiny_params_dict(
        group={"preset": "custom", "models": members},
        train={"seeds": [1, 2], "checkpoint_tokens": [60_000]},
        tokenizer={"kind": "model", "path": "models/seed1"},
        universality={
            "threshold": 0.05,
            "candidate_threshold": 0.05,
        },  # universal neurons in a tiny group of two
        effects={"max_sequences": 8, "controls": 1},
        # 128 neurons per member: above this, as every preset is (maxima, then slabs)
        correlate={"full_pairs_max_neurons": NEURONS // 2},
        uncertainty={"null_group": "untrained", "resamples": RESAMPLES, "null_max_sequences": 0},
    )
    repo, folder = make_preset_repo(tmp_path / "repo", "gpt2-small", params)
    env = pipeline_env(repo, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlruns.db'}")
    run(repo, "dvc", "repro", "pipelines/gpt2-small/dvc.yaml", env=env)

    _check_in_memory_numbers(folder, tiny_group)
    _check_uncertainty(folder, members=("seed1", "seed2"))
    families = json.loads((folder / "results" / "families.json").read_text())
    assert families and (folder / "data" / "families" / "seed1.parquet").is_file()
    index = (folder / "report" / "index.html").read_text()
    for section in ("universal-neuron-table", "families", "what-they-do", "how-sure"):
        assert f'<h2 id="{section}">' in index, section
    assert "Across training" in index and "Loss over training tokens" not in index  # no curves
    link = re.search(r'href="(neurons/seed1/\d+\.\d+\.html)"', index)
    assert link and (folder / "report" / link.group(1)).is_file()  # a neuron page
    record = json.loads((folder / "tracking" / "run.json").read_text())
    client = MlflowClient(record["tracking_uri"])
    assert client.get_run(record["run_id"]).info.status == "FINISHED"
    assert not (repo / "metrics").exists() and not (repo / "report").exists()  # root untouched
    status = run(repo, "dvc", "status", "pipelines/gpt2-small/dvc.yaml", env=env).stdout
    changed = {line.strip().rstrip(":") for line in status.splitlines() if line[:1] not in " \t"}
    assert {name.rsplit(":", 1)[-1].split("@")[0] for name in changed if name} == {"fetch"}
