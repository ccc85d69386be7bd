"""Interruptions lose nothing: a stage killed mid-write leaves the previous output byte-identical,
and the rerun (over the killed run's leftovers) gives what an uninterrupted run gives."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO_ROOT, command_argv, tiny_params, tiny_params_dict
from test_bad_inputs import snapshot

from stages import train
from universal_neurons.io import atomic_path

# Long enough (200 steps) that the kill, sent as soon as the first checkpoint appears in the
# temporary directory (step 32), always lands while the model is still training.
TRAIN = {"seeds": [1, 2], "tokens_per_model": 100_000, "checkpoint_tokens": [16_000]}


def _cli_env() -> dict[str, str]:
    return dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(REPO_ROOT / "src"), str(REPO_ROOT)]),
        TQDM_DISABLE="1",
    )


def _wait_for(predicate, process: subprocess.Popen, what: str, limit_s: float = 300.0):
    """Poll until ``predicate()`` returns a true value; fail if the process ends first."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        if process.poll() is not None:
            out, err = process.communicate()
            raise AssertionError(f"process ended before {what}: {out}\n{err}")
        time.sleep(0.01)
    process.kill()
    raise AssertionError(f"gave up waiting for {what}")


def _model_files(directory: Path) -> dict[str, bytes]:
    """Every file of a trained model directory."""
    files = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            files[str(path.relative_to(directory))] = data
    return files


@pytest.mark.slow
def test_train_killed_mid_write_keeps_the_previous_model_and_the_rerun_matches(
    tiny_tokens_dir, tmp_path
):
    root = tmp_path / "ws"
    shutil.copytree(tiny_tokens_dir, root / "data" / "tokens")
    # The previous output: seed 1 trained with another learning rate.
    previous = tiny_params(train={**TRAIN, "tokens_per_model": 20_000, "checkpoint_tokens": []})
    train.train_seed(previous, 1, root / "data" / "tokens", root / "models" / "seed1")
    before = snapshot(root / "models")

    params = tiny_params_dict(train=TRAIN)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    command = command_argv("train", "--seed", "1")
    process = subprocess.Popen(
        command, cwd=root, env=_cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    checkpoint = _wait_for(
        lambda: next(
            (root / "models").glob(".seed1.*.tmp/seed1/checkpoints/tokens_16000/model.safetensors"),
            None,
        ),
        process,
        "the first checkpoint in the temporary directory",
    )
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert process.returncode == -signal.SIGKILL  # killed mid-training, not finished

    leftovers = list((root / "models").glob(".seed1.*.tmp"))
    assert leftovers == [checkpoint.parents[3]]
    after_kill = snapshot(root / "models")
    assert {k: v for k, v in after_kill.items() if not k.startswith(".seed1.")} == before

    # The rerun works over the leftovers, removes them, and gives the uninterrupted result.
    rerun = subprocess.run(command, cwd=root, env=_cli_env(), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert sorted(p.name for p in (root / "models").iterdir()) == ["seed1"]
    reference = tmp_path / "reference" / "seed1"
    train.train_seed(tiny_params(train=TRAIN), 1, root / "data" / "tokens", reference)
    assert _model_files(root / "models" / "seed1") == _model_files(reference)
    assert snapshot(root / "models")["seed1/model.safetensors"] != before["seed1/model.safetensors"]


def test_failed_write_leaves_the_previous_output_and_no_temporary_path(tmp_path):
    target = tmp_path / "out"
    with atomic_path(target) as temp:
        temp.mkdir()
        (temp / "a.txt").write_text("old")
    with pytest.raises(RuntimeError, match="boom"), atomic_path(target) as temp:
        temp.mkdir()
        (temp / "a.txt").write_text("half of the new")
        raise RuntimeError("boom")
    assert (target / "a.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_replacing_an_output_swaps_it_in_one_step(tmp_path):
    """The new output takes the old one's place with one rename: the old directory's inode
    ends up in the temporary directory (removed), the new one's at the target."""
    target = tmp_path / "out"
    with atomic_path(target) as temp:
        temp.mkdir()
        (temp / "v").write_text("1")
    with atomic_path(target) as temp:
        temp.mkdir()
        (temp / "v").write_text("2")
        new_inode = temp.stat().st_ino
    assert target.stat().st_ino == new_inode and (target / "v").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_kill_between_the_two_renames_of_the_fallback_is_repaired(tmp_path):
    """Where renameat2 is missing the old output is first moved aside into the temporary
    directory; if the process dies right then, the next write puts it back before anything."""
    target = tmp_path / "out"
    dead_pid = _dead_pid()
    temp = tmp_path / f".out.{dead_pid}.abc123.tmp"
    (temp / ".old").mkdir(parents=True)
    (temp / ".old" / "v").write_text("previous")
    (temp / "out").mkdir()
    (temp / "out" / "v").write_text("half-written")
    with pytest.raises(RuntimeError), atomic_path(target):
        assert (target / "v").read_text() == "previous"  # restored before the new write
        raise RuntimeError("stop before writing")
    assert (target / "v").read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_temporary_paths_of_a_live_process_are_left_alone(tmp_path):
    live = tmp_path / f".out.{os.getppid()}.abc.tmp"
    live.mkdir()
    with atomic_path(tmp_path / "out") as temp:
        temp.write_text("x")
    assert live.is_dir()


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid
