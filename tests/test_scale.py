"""Bounded outputs at scale: per-neuron maxima instead of pair matrices, and the memory plan.

Above ``correlate.full_pairs_max_neurons`` correlate's units reduce their block to maxima and
baseline draws; the numbers must be those of the full-pairs path (maxima, argmaxes,
baselines within 1e-9), whatever the blocks and shards.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_params
from test_interrupt import _cli_env

from stages import baseline, collect, correlate
from universal_neurons.errors import UserError
from universal_neurons.matching import plan
from universal_neurons.pipeline.layout import Layout
from universal_neurons.pipeline.tools import plan as plan_tool


@pytest.fixture(scope="module")
def collected(tiny_group, tiny_tokens_dir, tmp_path_factory):
    """collect's outputs of the tiny group, in a data folder, with the within-layer covariances
    that collect writes above ``correlate.full_pairs_max_neurons`` (the full-pairs runs below
    take them in correlate itself: the two paths' numbers agree through them too)."""
    data = tmp_path_factory.mktemp("collected") / "data"
    layout = Layout.at(data.parent, tokens=tiny_tokens_dir, models=tiny_group[1].parent, data=data)
    params = tiny_params(correlate={"full_pairs_max_neurons": 0})
    for seed in params.train.seeds:
        collect.run(params, layout, seed, progress=False)
    return layout


def _run(params, collected, root):
    """correlate + baseline with ``params`` in ``root`` (collect's outputs copied in)."""
    import shutil

    layout = Layout.at(root, tokens=collected.tokens, models=collected.models)
    shutil.copytree(collected.stage_dir("collect"), layout.stage_dir("collect"))
    summary = correlate.run(params, layout, progress=False)
    metrics = baseline.run(params, layout)
    out = layout.stage_dir("correlate")
    maxima = pd.read_parquet(out / "max_corr.parquet")
    base = pd.read_parquet(layout.stage_dir("baseline") / "baseline.parquet")
    return summary, metrics, maxima, base, out


def _assert_same(got, want, column):
    """Same rows and integer columns exactly, ``column`` within 1e-9 (NaN where NaN)."""
    pd.testing.assert_frame_equal(got.drop(columns=column), want.drop(columns=column))
    assert got[column].isna().equals(want[column].isna())
    assert np.nanmax(np.abs(got[column] - want[column])) <= 1e-9


@pytest.mark.parametrize(
    "split",
    [
        {},  # the default one pass, only the outputs differ
        {"neuron_block": 64, "token_shards": 1, "products": "float64"},  # units reduce
        {"neuron_block": 64, "token_shards": 3, "products": "float64"},  # the stage reduces
    ],
    ids=["one-pass", "blocks", "blocks+shards"],
)
def test_maxima_path_gives_the_full_pairs_numbers(collected, tmp_path, split):
    products = split.get("products", "auto")
    full = tiny_params(correlate={"products": products}, baseline={"samples": 2})
    scale = tiny_params(
        correlate=split | {"full_pairs_max_neurons": 0}, baseline={"samples": 2, "seed": 0}
    )
    s_full, m_full, max_full, base_full, out_full = _run(full, collected, tmp_path / "full")
    s_scale, m_scale, max_scale, base_scale, out_scale = _run(scale, collected, tmp_path / "scale")

    # the full pairs are reduced in memory: one-to-one matches and candidate links, no [N, N]
    n = 2 * 64
    full_files = {p.name: p.stat().st_size for p in out_full.iterdir()}
    assert {"one_to_one_matches.parquet", "candidate_links.safetensors"} <= set(full_files)
    assert max(full_files.values()) < 8 * n * n
    assert not (out_scale / "candidate_links.safetensors").exists()
    assert s_full["outputs"] == "full_pairs" and s_scale["outputs"] == "maxima"
    assert len(max_full) == 3 * 2 * 128 and len(base_full) == 3 * 2 * 2 * 128
    _assert_same(max_scale, max_full, "max_corr")
    _assert_same(base_scale, base_full, "baseline")
    assert s_scale["dead"] == s_full["dead"]
    assert s_scale["kept_positions"] == s_full["kept_positions"] == 6083
    for model, values in m_full["models"].items():
        assert m_scale["models"][model]["mean_baseline"] == pytest.approx(
            values["mean_baseline"], abs=1e-12
        )
    # the scale path wrote nothing [N, N]: its outputs are a few rows per neuron
    sizes = sum(p.stat().st_size for p in out_scale.rglob("*") if p.is_file())
    assert sizes < sum(p.stat().st_size for p in out_full.rglob("*") if p.is_file())


def test_baseline_names_the_rerun_when_correlate_took_other_draws(collected, tmp_path):
    params = tiny_params(correlate={"full_pairs_max_neurons": 0}, baseline={"samples": 1})
    _run(params, collected, tmp_path)
    layout = Layout.at(tmp_path, tokens=collected.tokens, models=collected.models)
    other = tiny_params(correlate={"full_pairs_max_neurons": 0}, baseline={"samples": 2})
    with pytest.raises(UserError, match="correlate took the draws .* rerun correlate"):
        baseline.run(other, layout)


def test_scale_blocks_must_be_whole_layers(collected, tmp_path):
    params = tiny_params(correlate={"full_pairs_max_neurons": 0, "neuron_block": 96})
    layout = Layout.at(tmp_path, tokens=collected.tokens, models=collected.models)
    with pytest.raises(UserError, match=r"correlate.neuron_block: .* multiple of d_mlp = 64"):
        correlate.run(params, layout, progress=False)


# --- the memory plan ------------------------------------------------------------------------

GPT2_SMALL = plan.GroupShape(5, 12, 3072, 768, 50257, 512)


def test_unit_memory_is_the_documented_arithmetic():
    work = plan.WorkPlan(3072, 1, 24 * 512, full_pairs=False, samples=3, one_pass=False)
    mem = plan.unit_memory(GPT2_SMALL, work)
    b, n, t = 3072, 36864, 24 * 512
    assert mem["accumulators"] == 8 * b * n
    assert mem["product"] == 4 * b * n + 8 * 2**20
    assert mem["activations"] == 18 * t * (b + n)
    assert mem["models"] == 2 * 4 * GPT2_SMALL.loaded_parameters()
    # after the pass: three [1024, N] float64 correlation temporaries, or a rotated layer's
    # five [1024, d_mlp] and three [d_mlp, d_mlp], whichever is larger
    assert mem["reduction"] == max(3 * 8 * 1024 * n, 40 * 1024 * 3072 + 24 * 3072**2)
    product = 4 * b * n + 8 * 2**20
    assert mem["total"] == 8 * b * n + product + 18 * t * (b + n) + mem["models"] + plan.RUNTIME
    assert plan.unit_count(GPT2_SMALL, work) == 10 * 12
    # the default one pass of a whole group holds every pair's accumulator
    whole = plan.WorkPlan(0, 1, 24 * 512, full_pairs=True, samples=3, one_pass=True)
    assert plan.unit_memory(GPT2_SMALL, whole)["accumulators"] == 10 * 8 * n * n


def test_correlate_refuses_units_that_cannot_fit(collected, tmp_path, monkeypatch):
    # the configured limit counts for correlate too (issue 27: it was ignored)
    monkeypatch.setenv("UNIVERSAL_NEURONS_MEMORY_GB", "0.001")
    params = tiny_params(correlate={"neuron_block": 64})
    layout = Layout.at(tmp_path, tokens=collected.tokens, models=collected.models)
    with pytest.raises(UserError, match=r"correlate.neuron_block: a unit needs about .* GiB") as e:
        correlate.run(params, layout, progress=False)
    assert "more than the configured limit (UNIVERSAL_NEURONS_MEMORY_GB=0.001)" in str(e.value)
    assert not layout.stage_dir("correlate").exists()


def test_plan_clamps_a_block_beyond_the_model_and_honours_the_memory_limit(monkeypatch):
    """Issue 27: a neuron_block above the model's neurons is one block of the whole model (the
    plan estimated 15.6 GiB for it), and UNIVERSAL_NEURONS_MEMORY_GB bounds every executor."""
    huge = tiny_params(correlate={"neuron_block": 10**6})
    whole = tiny_params(correlate={"neuron_block": GPT2_SMALL.neurons})
    assert plan.work_plan(huge, GPT2_SMALL).block == GPT2_SMALL.neurons
    assert plan.unit_memory(GPT2_SMALL, plan.work_plan(huge, GPT2_SMALL)) == plan.unit_memory(
        GPT2_SMALL, plan.work_plan(whole, GPT2_SMALL)
    )
    monkeypatch.setenv("UNIVERSAL_NEURONS_MEMORY_GB", "0.5")
    for executor in ("inline", "slurm"):
        limit, source = plan.memory_limit(tiny_params(correlate={"executor": executor}))
        assert limit == 500_000_000
        assert source.startswith("the configured limit (UNIVERSAL_NEURONS_MEMORY_GB=0.5)")


def test_slurm_memory_limit_names_the_parameter_and_a_block_that_fits():
    def params(block):
        slurm = {"executor": "slurm", "neuron_block": block, "slurm": {"mem_gb": 8}}
        return tiny_params(analysis={"batch_size": 4}, correlate=slurm)

    with pytest.raises(UserError, match="more than correlate.slurm.mem_gb = 8") as error:
        plan.check_memory(params(0), GPT2_SMALL)
    block = int(str(error.value).split("a block of ")[1].split()[0])
    assert block % 3072 == 0 and 0 < block < 36864
    assert plan.check_memory(params(block), GPT2_SMALL)["total"] <= 8 * plan.GIB
    with pytest.raises(UserError):
        plan.check_memory(params(block + 3072), GPT2_SMALL)


def test_plan_command_prints_the_preset_plan(tmp_path):
    """``universal-neurons plan`` on the GPT2-small preset, with given rates (nothing measured),
    run from a folder holding another group's models/: the preset's parameter file is a
    pipeline of its own, whose paths are relative to its folder, so that group is ignored."""
    import json
    import subprocess
    import sys

    from conftest import REPO_ROOT

    decoy = tmp_path / "models" / "seed1"
    decoy.mkdir(parents=True)
    (decoy / "config.json").write_text(json.dumps({"n_layer": 2, "n_embd": 128, "vocab_size": 512}))
    preset = REPO_ROOT / "pipelines" / "gpt2-small" / "params.yaml"
    args = ["--params", str(preset), "--tokens", "100000000"]
    rates = ["--products-tflops", "664", "--float64-tflops", "67", "--parallel", "32"]
    command = [sys.executable, "-m", "universal_neurons", "plan", *args, *rates]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    work = plan.WorkPlan(
        36864, 1, 24 * 512, full_pairs=False, samples=3, one_pass=False, model_bytes=2, cuda=True
    )
    memory = plan.unit_memory(GPT2_SMALL, work)["total"] / plan.GIB
    assert "5 models x 12 layers x 3072 = 36,864 neurons each, 10 pairs; 100,000,000 tokens" in out
    assert "per-neuron maxima + baseline draws" in out
    assert "units: 10 = 10 pairs x 1 blocks of 36864 x 1 shards" in out
    assert f"memory per unit: {memory:.2f} GiB" in out
    # 10 pairs x 2 T N^2 of products at 664 TFLOP/s, plus the forward passes: over an hour
    products_h = 10 * 2 * 1e8 * 36864**2 / 664e12 / 3600
    hours = float(out.split("time on one device: correlate ")[1].split(" h")[0])
    assert products_h < hours < products_h * 1.3
    # fits 120 columns (long lines wrap, continued indented); --wide: one line per item
    assert max(len(line) for line in out.splitlines()) <= plan_tool.TERMINAL_WIDTH
    wide = subprocess.run([*command, "--wide"], cwd=tmp_path, capture_output=True, text=True)
    assert len(wide.stdout.splitlines()) == 7 < len(out.splitlines())
    assert max(len(line) for line in wide.stdout.splitlines()) > plan_tool.TERMINAL_WIDTH
    assert " ".join(out.split()) == " ".join(wide.stdout.split())  # the same words


# --- the heap of a unit worker --------------------------------------------------------------

HEAP_PROBE = """
import os, sys, torch
from universal_neurons.matching.units import map_large_allocations
def resident():  # bytes
    return int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE')
if sys.argv[1] == 'mapped':
    assert map_large_allocations()
torch.ones(30 * 2**20, dtype=torch.uint8)  # freed at once: glibc's threshold follows it to 30 MB
base = resident()
block = torch.ones(25 * 2**20, dtype=torch.uint8)
held = resident() - base
del block
print(held, resident() - base)
"""


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads /proc (Linux)")
@pytest.mark.parametrize("mode", ["default", "mapped"])
def test_unit_workers_return_freed_tensors_to_the_os(mode):
    """A freed 25 MB tensor (a reduction's ``[1024, 3072]`` float64 temporary) stays resident
    in glibc's heap once a larger block has raised glibc's mmap threshold; after
    ``units.map_large_allocations`` (what ``run_units`` calls) it is unmapped when freed."""
    import subprocess
    import sys

    command = [sys.executable, "-c", HEAP_PROBE, mode]
    result = subprocess.run(command, capture_output=True, text=True, env=_cli_env())
    assert result.returncode == 0, result.stderr
    held, after = (int(value) for value in result.stdout.split())
    assert held > 24 * 2**20  # the tensor was resident while alive
    if mode == "mapped":
        assert after < 2**20
    else:  # glibc's own policy keeps it: what made the 4 GB check's heap grow
        assert after > 24 * 2**20
