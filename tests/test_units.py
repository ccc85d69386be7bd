"""correlate in work units (pair x neuron block x token shard): exact merge, executors."""

import json
import shutil
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_params

from universal_neurons.matching.activations import load_analysis_set
from universal_neurons.matching.pairs import correlate_group
from universal_neurons.matching.units import (
    UnitContext,
    UnitError,
    execute,
    merge_units,
    plan_units,
)
from universal_neurons.models.loading import load_model


def test_plan_covers_pairs_blocks_and_batch_aligned_shards():
    units = plan_units(["m1", "m2", "m3"], 128, 200, 32, neuron_block=96, token_shards=3)
    assert len(units) == 3 * 2 * 3
    assert {u.rows for u in units} == {(0, 96), (96, 128)}
    # 7 batches of 32 sequences split 2 / 3 / 2: every shard starts on a batch boundary
    assert sorted({u.sequences for u in units}) == [(0, 64), (64, 160), (160, 200)]
    assert {(u.a, u.b) for u in units} == {("m1", "m2"), ("m1", "m3"), ("m2", "m3")}
    with pytest.raises(ValueError, match="correlate.token_shards: expected 1 to 7"):
        plan_units(["m1", "m2"], 128, 200, 32, token_shards=8)


@pytest.fixture(scope="module")
def unit_setup(tiny_group, tiny_tokens_dir):
    params = tiny_params()
    tokens, excluded, kept = load_analysis_set(tiny_tokens_dir, params.analysis)
    names = ["seed1", "seed2", "seed3"]
    context = UnitContext(
        models={f"seed{s}": str(path) for s, path in tiny_group.items()},
        tokens_dir=str(tiny_tokens_dir),
        analysis=params.analysis.model_dump(),
        products="float64",
        device="cpu",
        units_dir="",
    )
    return params, tokens, excluded, kept, names, context


def test_sharded_units_merge_to_the_one_pass_statistics(unit_setup, tmp_path):
    params, tokens, excluded, kept, names, context = unit_setup
    # 2 pairs x 2 neuron blocks (the second starts mid-layer 1) x 3 token shards
    units = [
        u
        for u in plan_units(names, 128, len(tokens), 32, neuron_block=96, token_shards=3)
        if u.a == "seed1"
    ]
    assert len(units) == 12
    context = replace(context, units_dir=str(tmp_path / "units"))
    execute(units, context, "inline", progress=False)
    assert len(list((tmp_path / "units").glob("*.safetensors"))) == 12
    merged, batches = merge_units(units, tmp_path / "units", 128)

    models = {name: load_model(context.models[name]) for name in names}
    whole = correlate_group(models, tokens, excluded, 32, "float64", progress=False)
    assert batches == whole.batches == 7
    for pair in [("seed1", "seed2"), ("seed1", "seed3")]:
        got, want = merged[pair], whole.pairs[pair]
        assert got.count == want.count == kept
        for field in ("mean_x", "mean_y", "m2_x", "m2_y", "cxy"):
            a, b = getattr(got, field), getattr(want, field)
            assert a.shape == b.shape
            assert (a - b).abs().max() <= 1e-9 * max(1.0, float(b.abs().max())), field
        corr_got, corr_want = got.correlation(), want.correlation()
        np.testing.assert_array_equal(corr_got.isnan(), corr_want.isnan())
        assert np.nanmax((corr_got - corr_want).abs().numpy()) <= 1e-9


def test_missing_or_foreign_unit_files_are_named(unit_setup, tmp_path):
    _, tokens, _, _, names, context = unit_setup
    units = plan_units(names[:2], 128, len(tokens), 32, neuron_block=64, token_shards=2)
    context = replace(context, units_dir=str(tmp_path))
    execute(units, context, "inline", progress=False)
    with pytest.raises(UnitError, match=r"neuron blocks \[\(0, 64\)\] do not cover 0..128"):
        merge_units([u for u in units if u.rows == (0, 64)], tmp_path, 128)
    with pytest.raises(UnitError, match="sequences start at 128, expected 0"):
        merge_units([u for u in units if u.sequences[0] > 0], tmp_path, 128)
    (tmp_path / f"{units[0].name}.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=units[0].name):
        merge_units(units, tmp_path, 128)


def _run_stage(params, tiny_group, tiny_tokens_dir, root, collected):
    """correlate on the tiny group in ``root``, beside a copy of the ``collected`` outputs."""
    from stages import correlate
    from universal_neurons.pipeline.layout import Layout

    models_dir = tiny_group[1].parent
    layout = Layout.at(root, tokens=tiny_tokens_dir, models=models_dir)
    shutil.copytree(collected, layout.stage_dir("collect"))
    return correlate.run(params, layout, progress=False), layout.stage_dir("correlate")


@pytest.mark.slow
def test_submitit_local_executor_gives_the_inline_maxima(
    tiny_group, tiny_tokens_dir, tiny_analysis, tmp_path
):
    base = {"products": "float64"}
    inline = tiny_params(correlate=base)
    local = tiny_params(
        correlate=base
        | {
            "executor": "local",
            "workers": 2,
            "neuron_block": 96,
            "token_shards": 2,
            "log_dir": str(tmp_path / "submitit"),
        }
    )
    collected = tiny_analysis / "collect"
    want, inline_dir = _run_stage(
        inline, tiny_group, tiny_tokens_dir, tmp_path / "inline", collected
    )
    got, local_dir = _run_stage(local, tiny_group, tiny_tokens_dir, tmp_path / "local", collected)
    assert got["units"] == {
        "units": 3 * 2 * 2,
        "pairs": 3,
        "neuron_blocks": 2,
        "token_shards": 2,
        "executor": "local",
    }
    assert {k: v for k, v in got.items() if k != "units"} == want
    # the work really ran in submitit's worker processes: their logs name run_units
    logs = list((tmp_path / "submitit").glob("*_log.out"))
    assert len(logs) == 2
    a = pd.read_parquet(inline_dir / "max_corr.parquet")
    b = pd.read_parquet(local_dir / "max_corr.parquet")
    pd.testing.assert_frame_equal(
        a.drop(columns="max_corr"), b.drop(columns="max_corr"), check_exact=True
    )
    assert np.nanmax(np.abs(a["max_corr"] - b["max_corr"])) <= 1e-9
    assert a["max_corr"].isna().equals(b["max_corr"].isna())
    assert len(list((local_dir / "units").glob("*.safetensors"))) == 12
    summary = json.loads((local_dir / "summary.json").read_text())
    assert summary["units"]["executor"] == "local"
    # what the later stages read of the merged pair statistics agrees too: the baseline
    # draws (analytic from the whole cross-covariance) and the one-to-one matching
    base_a = pd.read_parquet(inline_dir / "baseline_draws.parquet")
    base_b = pd.read_parquet(local_dir / "baseline_draws.parquet")
    assert np.nanmax(np.abs(base_a["baseline"] - base_b["baseline"])) <= 1e-9
    match_a = pd.read_parquet(inline_dir / "one_to_one_matches.parquet")
    match_b = pd.read_parquet(local_dir / "one_to_one_matches.parquet")
    assert match_a["partner"].equals(match_b["partner"])
    assert np.nanmax(np.abs(match_a["corr"] - match_b["corr"])) <= 1e-9


@pytest.mark.xfail(
    strict=True,
    reason="finding (issue 8): with bf16 *models* the bf16 products are off by up to 1.4e-3 "
    "(0.3% of entries > 1e-3) from float64 on the same activations; float32 models: 3.4e-4",
)
def test_gpu_path_bf16_models_and_bf16_products_on_cpu(unit_setup):
    """The CUDA combination (bf16 models, bf16 products, float32 accumulation, float64 merge),
    emulated on CPU: within 1e-3 of float64 products on the same bf16 activations."""
    from universal_neurons.matching.units import Unit, correlate_unit
    from universal_neurons.models.loading import model_dtype

    assert model_dtype("cuda") == "bfloat16" and model_dtype("cuda:1") == "bfloat16"
    assert model_dtype("cpu") == "float32"
    _, tokens, excluded, kept, _, context = unit_setup
    a = load_model(context.models["seed1"], "cpu", torch.bfloat16)
    b = load_model(context.models["seed2"], "cpu", torch.bfloat16)
    unit = Unit("seed1", "seed2", (0, 128), (0, len(tokens)))
    got, _ = correlate_unit(unit, a, b, tokens, excluded, 32, "bfloat16")
    want, _ = correlate_unit(unit, a, b, tokens, excluded, 32, "float64")
    assert got.count == want.count == kept
    diff = (got.correlation() - want.correlation()).abs()
    assert float(diff.nan_to_num(0).max()) > 0  # the products really were bf16
    assert float(diff.nan_to_num(0).max()) <= 1e-3
