"""A unit run killed mid-way runs, when started again, only the units without a complete file,
and merges to what an uninterrupted run gives."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess

import pandas as pd
import pytest
import yaml
from conftest import command_argv, tiny_params, tiny_params_dict
from test_interrupt import _cli_env, _wait_for

from stages import correlate
from universal_neurons.matching.units import UnitContext, pending_units, plan_units, unit_path
from universal_neurons.pipeline.layout import Layout

# 3 pairs x 8 neuron blocks x 4 token shards = 96 units of a few batches each: the kill, sent
# once 6 unit files are complete, lands while most units are still to run.
SPLIT = {"neuron_block": 16, "token_shards": 4, "products": "float64"}
ANALYSIS = {"batch_size": 16}


def _workspace(root, tiny_group, tiny_tokens_dir, collected):
    shutil.copytree(tiny_tokens_dir, root / "data" / "tokens")
    shutil.copytree(collected, root / "data" / "collect")
    for seed, directory in tiny_group.items():
        shutil.copytree(directory, root / "models" / f"seed{seed}")
    raw = tiny_params_dict(correlate=SPLIT, analysis=ANALYSIS)
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


@pytest.mark.slow
def test_killed_unit_run_resumes_with_the_missing_units_only(
    tiny_group, tiny_tokens_dir, tiny_analysis, tmp_path
):
    root = tmp_path / "ws"
    _workspace(root, tiny_group, tiny_tokens_dir, tiny_analysis / "collect")
    work = root / "data" / ".correlate-units.tmp"
    command = command_argv("correlate")
    process = subprocess.Popen(
        command, cwd=root, env=_cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    _wait_for(
        lambda: len(list(work.glob("*.safetensors"))) >= 6, process, "six complete unit files"
    )
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert process.returncode == -signal.SIGKILL
    assert not (root / "data" / "correlate").exists()  # killed before any output

    params = tiny_params(correlate=SPLIT, analysis=ANALYSIS)
    units = plan_units(["seed1", "seed2", "seed3"], 128, 200, 16, 16, 4)
    assert len(units) == 96
    complete = [unit for unit in units if unit_path(work, unit).is_file()]
    assert 6 <= len(complete) < 96  # the kill landed mid-run
    inodes = {unit: unit_path(work, unit).stat().st_ino for unit in complete}

    rerun = subprocess.run(command, cwd=root, env=_cli_env(), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    found = re.search(
        r"correlate: (\d+) of 96 units complete from an earlier run; running (\d+)", rerun.stderr
    )
    assert found, rerun.stderr
    reused, ran = int(found.group(1)), int(found.group(2))
    assert reused == len(complete) and ran == 96 - len(complete)
    # the complete files were kept (same inodes, moved into the outputs), not rewritten
    kept = root / "data" / "correlate" / "units"
    assert all(unit_path(kept, unit).stat().st_ino == inode for unit, inode in inodes.items())
    assert not work.exists()

    reference = Layout.at(tmp_path / "ref", tokens=root / "data" / "tokens", models=root / "models")
    shutil.copytree(root / "data" / "collect", reference.stage_dir("collect"))
    correlate.run(params, reference, progress=False)
    got = pd.read_parquet(root / "data" / "correlate" / "max_corr.parquet")
    want = pd.read_parquet(reference.stage_dir("correlate") / "max_corr.parquet")
    pd.testing.assert_frame_equal(got, want, check_exact=True)


def test_files_of_other_inputs_or_half_written_are_not_complete(tmp_path):
    from universal_neurons.matching.correlation import CrossMoments
    from universal_neurons.matching.units import _save_unit

    units = plan_units(["a", "b"], 8, 64, 16, 4, 2)
    context = UnitContext({}, "", {}, "float64", "cpu", str(tmp_path), manifest="inputs-1")
    stats = CrossMoments.empty(4, 8)
    for unit in units[:3]:
        _save_unit(unit, stats, 2, context, whole=False)
    (tmp_path / f".{units[3].name}.safetensors.123.tmp").write_bytes(b"half")
    assert pending_units(units, tmp_path, "inputs-1") == units[3:]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        unit_path(tmp_path, u).name for u in units[:3]
    )
    # another model, token set or setting: another manifest, nothing is complete
    assert pending_units(units, tmp_path, "inputs-2") == units
    assert list(tmp_path.iterdir()) == []
