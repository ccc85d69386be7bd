"""Faults met the way a user meets them (issue 15): real processes with real signals and
limits, a real MLflow URI that does not answer, real ``dvc repro`` / ``dvc exp run``.

Each test checks the one line the user reads and that nothing else was written or deleted
(``snapshot`` of the workspace before and after).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import OWN_PEAK_RSS_KB, REPO_ROOT, command_argv, tiny_params_dict
from test_bad_inputs import snapshot, write_params

TRAIN = {"seeds": [1, 2], "tokens_per_model": 100_000, "checkpoint_tokens": [16_000]}


def _env(**extra: str) -> dict[str, str]:
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(REPO_ROOT / "src"), str(REPO_ROOT)]),
        TQDM_DISABLE="1",
    )
    env.pop("UNIVERSAL_NEURONS_MEMORY_GB", None)
    env.update(extra)
    return env


def _cli(root: Path, *args: str, limit_bytes: int | None = None, **env: str):
    """``universal-neurons ARGS`` in a real process in ``root`` (optionally under ``ulimit -f``)."""

    def limit() -> None:
        if limit_bytes is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return subprocess.run(
        command_argv(*args),
        cwd=root,
        env=_env(**env),
        capture_output=True,
        text=True,
        preexec_fn=limit,
        timeout=600,
    )


def _workspace(tmp_path: Path, tokens: Path, params: dict, group: dict | None = None) -> Path:
    root = tmp_path / "ws"
    shutil.copytree(tokens, root / "data" / "tokens")
    for seed, directory in (group or {}).items():
        shutil.copytree(directory, root / "models" / f"seed{seed}")
    write_params(root, params)
    return root


# --------------------------------------------------------------------------- memory


RUNAWAY = [
    ("train.tokens_per_model", {"train": {"tokens_per_model": 10**13, "checkpoint_tokens": []}}),
    ("model.d_mlp", {"model": {"d_mlp": 10**7}}),
    ("model.d_model", {"model": {"d_model": 2**20}}),
    ("train.batch_size", {"train": {"batch_size": 10**7}}),
]

_MEASURE = f"""
import sys, time
from universal_neurons.pipeline.runner import stage_main
from stages import train  # imports done before the clock starts
start = time.monotonic()
try:
    stage_main(train.COMMAND, train.__doc__, ["--seed", "1"])
except SystemExit as exc:
    code = exc.code
rss = {OWN_PEAK_RSS_KB}
print("ELAPSED", time.monotonic() - start, "RSS_KB", rss, "CODE", code, file=sys.stderr)
"""


@pytest.mark.parametrize("key,sections", RUNAWAY, ids=[key for key, _ in RUNAWAY])
def test_runaway_parameters_are_refused_within_5_s_under_1_gb(
    key, sections, tiny_tokens_dir, tmp_path
):
    """The issue's runaway cases, against the machine's real memory: refused by the estimate
    before anything is allocated (the process's peak RSS, imports of torch included)."""
    root = _workspace(tmp_path, tiny_tokens_dir, tiny_params_dict(**sections))
    before = snapshot(root)
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE], cwd=root, env=_env(), capture_output=True, text=True
    )
    # the stage process's own peak (RUSAGE_CHILDREN would be the largest of every child this
    # test process ever waited for, e.g. another test's 4 GB stage)
    peak_rss = int(done.stderr.split("RSS_KB ")[1].split()[0]) * 1024
    elapsed = float(done.stderr.split("ELAPSED ")[1].split()[0])
    lines = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    print(f"{key}: refused in {elapsed:.2f} s, peak RSS {peak_rss / 2**20:.0f} MiB: {lines}")
    assert done.stderr.strip().endswith("CODE 2"), done.stderr
    assert len(lines) == 1 and lines[0].startswith(f"error: {key}="), done.stderr
    assert "needs about" in lines[0] and "more than" in lines[0]
    assert elapsed < 5.0
    assert peak_rss < 2**30
    assert snapshot(root) == before


# --------------------------------------------------------------------------- signals


def _wait_for(predicate, process: subprocess.Popen, what: str, limit_s: float = 300.0):
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        if process.poll() is not None:
            raise AssertionError(f"process ended before {what}: {process.communicate()}")
        time.sleep(0.01)
    process.kill()
    raise AssertionError(f"gave up waiting for {what}")


@pytest.mark.slow
@pytest.mark.parametrize("seeds", [["1"], []], ids=["one-seed-in-process", "worker-processes"])
def test_sigterm_during_train_removes_the_temporary_folders(seeds, tiny_tokens_dir, tmp_path):
    """SIGTERM is handled like SIGINT: the temporary model folders (of the worker processes
    too) are removed, the previous models stay, one line says what happened."""
    root = _workspace(tmp_path, tiny_tokens_dir, tiny_params_dict(train=TRAIN))
    (root / "models" / "seed1").mkdir(parents=True)
    (root / "models" / "seed1" / "earlier.txt").write_text("an earlier model\n")
    before = snapshot(root)
    args = ["train", *(["--seed", *seeds] if seeds else [])]
    process = subprocess.Popen(
        command_argv(*args),
        cwd=root,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for(
        lambda: next((root / "models").glob(".seed1.*.tmp/seed1/checkpoints/tokens_16000"), None),
        process,
        "the first checkpoint",
    )
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    assert stderr.strip().splitlines()[-1] == (
        "error: train stopped by SIGTERM; unfinished outputs were not written"
    )
    assert snapshot(root) == before


# --------------------------------------------------------------------------- disk full


@pytest.mark.parametrize(
    "args,limit,failed",
    [
        (["collect", "--seed", "1"], 4096, "data/collect/seed1/moments.parquet"),
        (
            ["train", "--seed", "1"],
            65536,
            "models/seed1/checkpoints/tokens_16000/model.safetensors",
        ),
    ],
    ids=["collect", "train"],
)
def test_a_full_disk_names_the_file(args, limit, failed, tiny_tokens_dir, tiny_group, tmp_path):
    """``ulimit -f`` in a real process: one line naming the output file, nothing written."""
    params = tiny_params_dict(train=TRAIN)
    root = _workspace(tmp_path, tiny_tokens_dir, params, tiny_group)
    before = snapshot(root)
    done = _cli(root, *args, limit_bytes=limit)
    assert done.returncode == 2, done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: {failed}: could not be written ("), line
    assert line.endswith(
        "the disk is full or a file size limit (ulimit -f) was reached; free space and rerun "
        "(the previous output is unchanged)"
    )
    assert snapshot(root) == before


# --------------------------------------------------------------------------- MLflow


def test_a_tracking_server_that_does_not_answer_is_named(tmp_path):
    """A port that accepts connections but never answers: refused after the timeout with the
    URI in the message (not after minutes of retries)."""
    from universal_neurons.outputs.tracking import TrackingError, check_tracking_uri

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        uri = f"http://127.0.0.1:{server.getsockname()[1]}"
        with pytest.raises(TrackingError) as info:
            check_tracking_uri(uri, timeout_s=1.0)
    assert str(info.value) == (
        f"MLFLOW_TRACKING_URI={uri}: no MLflow server answers within 1 s (timed out); set it "
        "to a usable store or unset it (the default is the project's own mlruns.db)"
    )


# --------------------------------------------------------------------------- fetch


def test_fetch_of_a_member_without_tokenizer_writes_none(tiny_group, tiny_tokens_dir, tmp_path):
    """A custom member without tokenizer files: fetch writes no tokenizer and says so, and a
    token set cannot be built from it."""
    members = {"a": str(tiny_group[1]), "b": str(tiny_group[2])}
    params = tiny_params_dict(
        group={"preset": "custom", "models": members},
        train={"seeds": [1, 2]},
        uncertainty={"null_group": "none"},  # the members have no step 0
    )
    root = _workspace(tmp_path, tiny_tokens_dir, params)
    done = _cli(root, "fetch", "--seed", "1")
    assert done.returncode == 0, done.stderr
    assert json.loads((root / "models" / "seed1" / "source.json").read_text())["tokenizer"] is False
    assert not list((root / "models" / "seed1").glob("tokenizer*"))
    params["tokenizer"] = {"kind": "model", "path": "models/seed1"}
    write_params(root, params)
    before = snapshot(root)
    done = _cli(root, "tokenize")
    assert done.returncode == 2
    assert done.stderr.strip().startswith("error: tokenizer.path: "), done.stderr
    assert snapshot(root) == before


def test_fetch_refuses_a_member_with_a_missing_weight(tiny_group, tiny_tokens_dir, tmp_path):
    """Any model the project loads is checked, fetched ones too: a custom member whose file
    lacks a tensor is not randomly completed."""
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(tiny_group[2], broken)
    weights = load_file(broken / "model.safetensors")
    del weights["transformer.h.1.mlp.c_proj.bias"]
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    members = {"a": str(tiny_group[1]), "b": str(broken)}
    root = _workspace(
        tmp_path,
        tiny_tokens_dir,
        tiny_params_dict(
            group={"preset": "custom", "models": members},
            train={"seeds": [1, 2]},
            uncertainty={"null_group": "none"},  # the members have no step 0
        ),
    )
    before = snapshot(root)
    done = _cli(root, "fetch", "--seed", "2")
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"error: {broken}/model.safetensors: tensor transformer.h.1.mlp.c_proj.bias is missing; "
        "the file does not hold the model its config.json describes: re-create or re-pull it"
    )
    assert snapshot(root) == before


# --------------------------------------------------------------------------- neuron page


@pytest.mark.slow
def test_neuron_page_with_max_sequences(tiny_tokens_dir, tiny_group, tmp_path):
    """``--max-sequences N`` below ``analysis.max_sequences``: the page uses the first N
    sequences' syntax labels instead of asking to rerun the syntax stage."""
    from conftest import tiny_params

    from stages import syntax
    from universal_neurons.pipeline.layout import Layout

    root = _workspace(tmp_path, tiny_tokens_dir, tiny_params_dict(), tiny_group)
    syntax.run(tiny_params(), Layout.at(root))
    done = _cli(root, "neuron", "seed1", "1.2", "--max-sequences", "16")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("seed1 neuron L1.N2"), done.stdout
    assert "rerun the syntax stage" not in done.stdout + done.stderr


# --------------------------------------------------------------------------- outputs together

# A stage's outputs change together or not at all (issue 27, class 4): the last output the
# stage writes is made unwritable and every output of the stage must stay as it was.
LAST_OUTPUT_FAILS = [
    ("universality", "metrics/universality_per_layer.csv", {}),
    ("baseline", "results/baseline.json", {}),
    # a pretrained (custom) group: stats then reads no emergence table
    (
        "stats",
        "metrics/findings.json",
        {"group": {"preset": "custom", "models": {"a": "m/a", "b": "m/b", "c": "m/c"}}},
    ),
]

STAGE_OUTPUTS = {
    "universality": [
        "data/universality",
        "results/universality.json",
        "metrics/universality.json",
        "metrics/universality_per_layer.csv",
    ],
    "baseline": ["data/baseline", "results/baseline.json"],
    "stats": [
        "data/stats",
        "metrics/stats_percentiles.csv",
        "results/stats.json",
        "metrics/findings.json",
    ],
}


def _earlier_outputs(root: Path, outputs: list[str]) -> None:
    """An earlier run's outputs, each marked so that a replaced one shows."""
    for relative in outputs:
        path = root / relative
        if path.suffix:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text('{"earlier": true}\n')
        else:
            path.mkdir(parents=True, exist_ok=True)
            (path / "earlier.txt").write_text("an earlier output\n")


def _analysis_workspace(tmp_path, tiny_tokens_dir, tiny_group, tiny_analysis, params) -> Path:
    root = _workspace(tmp_path, tiny_tokens_dir, params, tiny_group)
    shutil.copytree(tiny_analysis, root / "data", dirs_exist_ok=True)
    return root


@pytest.mark.parametrize(
    "stage,last,sections", LAST_OUTPUT_FAILS, ids=[s for s, _, _ in LAST_OUTPUT_FAILS]
)
def test_a_stage_whose_last_output_cannot_be_placed_changes_no_output(
    stage, last, sections, tiny_tokens_dir, tiny_group, tiny_analysis, tmp_path, monkeypatch
):
    """The rename of the stage's last output fails (EACCES, as in a read-only folder): the
    outputs already placed are put back, every output is the earlier one, one line names it."""
    import errno

    from conftest import invoke_command

    from universal_neurons import io

    params = tiny_params_dict(**sections)
    root = _analysis_workspace(tmp_path, tiny_tokens_dir, tiny_group, tiny_analysis, params)
    _earlier_outputs(root, STAGE_OUTPUTS[stage])
    assert STAGE_OUTPUTS[stage][-1] == last
    before = snapshot(root)
    real_replace, real_exchange = os.replace, io._exchange
    denied = str(root / last)

    def replace(source, target):
        if denied in (os.path.abspath(source), os.path.abspath(target)):
            raise PermissionError(errno.EACCES, "Permission denied", str(target))
        return real_replace(source, target)

    monkeypatch.setattr(
        io, "_exchange", lambda a, b: os.path.abspath(b) != denied and real_exchange(a, b)
    )
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.chdir(root)

    result = invoke_command([stage, "--params", "params.yaml"])

    assert result.exit_code == 2, result.output
    assert ("\n" + result.stderr).endswith(
        f"\nerror: {last}: could not be put in place (Permission denied); every output of "
        "this stage is left as it was\n"
    )
    assert snapshot(root) == before


def test_a_stage_whose_metrics_folder_is_in_the_way_changes_no_output(
    tiny_tokens_dir, tiny_group, tiny_analysis, tmp_path, monkeypatch
):
    """``metrics`` is a file (unwritable even for root): universality stops before it replaces
    ``data/universality`` or ``results/universality.json`` (before issue 27 both held the new
    results while the metrics were the old ones)."""
    from conftest import invoke_command

    root = _analysis_workspace(tmp_path, tiny_tokens_dir, tiny_group, tiny_analysis, {})
    write_params(root, tiny_params_dict())
    _earlier_outputs(root, STAGE_OUTPUTS["universality"][:2])
    (root / "metrics").write_text("not a folder\n")
    before = snapshot(root)
    monkeypatch.chdir(root)

    result = invoke_command(["universality", "--params", "params.yaml"])

    assert result.exit_code == 2, result.output
    assert ("\n" + result.stderr).endswith(
        "\nerror: metrics/universality.json: cannot write the output, metrics is a file, "
        "expected a directory\n"
    )
    assert snapshot(root) == before


def test_a_full_disk_during_log_is_one_line_and_leaves_no_store(tmp_path):
    """``ulimit -f`` under MLflow's SQLite store: SQLite's failed write (a "disk I/O error"
    deep in SQLAlchemy) becomes one line, and the store this run began is removed."""
    root = tmp_path / "ws"
    root.mkdir()
    write_params(root, tiny_params_dict())
    before = snapshot(root)
    done = _cli(root, "log", limit_bytes=64 * 1024, MLFLOW_TRACKING_URI="")
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "error: log: MLflow could not write the run ((sqlite3.OperationalError) disk I/O "
        "error): the disk is full or a file size limit (ulimit -f) was reached; free space "
        "and rerun (tracking/run.json is unchanged)"
    )
    assert snapshot(root) == before
