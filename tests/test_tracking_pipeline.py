"""The researcher's workflow end to end, with real tools: `dvc repro` logging to a real MLflow
server over HTTP, `dvc push`/`git clone`/`dvc pull` through a local-directory remote, and
`dvc exp run --temp/--queue` runs landing in one SQLite store that `universal-neurons ui` serves.

One tiny pipeline (2 seeds x 20k training tokens) is reproduced once per module and shared.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from pipeline_repo import copy_pipeline_repo, pipeline_env, reproduced_tiny, run
from text_tables import cells_by_row

from universal_neurons.outputs.tracking_ui import column_id, headline_metrics
from universal_neurons.pipeline.tools.exps import DETAIL_COLUMNS

pytestmark = pytest.mark.slow

STARTUP_LIMIT_S = 180  # how long a server may take to answer (a wait, not an assertion on speed)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_http(url: str, process: subprocess.Popen, log: Path) -> None:
    """Poll ``url`` until it answers 200; fail with the server's log if the process dies."""
    deadline = time.monotonic() + STARTUP_LIMIT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"server exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(1)
    pytest.fail(f"{url} did not answer within {STARTUP_LIMIT_S} s:\n{log.read_text()[-4000:]}")


def stop(process: subprocess.Popen) -> None:
    """Stop a server started in its own session: signal its process group (id = its pid)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


def leaves(tree: dict, prefix: str = "") -> dict[str, object]:
    """Reference flattening of a YAML/JSON mapping: dotted key -> leaf (lists and empty
    mappings, e.g. ``group.models: {}``, are leaves: the parameter is logged as ``{}``)."""
    out: dict[str, object] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict) and value:
            out.update(leaves(value, name))
        else:
            out[name] = value
    return out


def metric_leaves(tree: dict, prefix: str = "") -> dict[str, object]:
    """Reference flattening of a metrics document: as ``leaves``, but a list holding mappings
    is walked with each index as a key part (results/uncertainty.json's per-layer rows), as
    ``run_contents.flatten_metrics`` documents."""
    out: dict[str, object] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, list) and any(isinstance(item, dict) for item in value):
            out.update(metric_leaves({str(i): item for i, item in enumerate(value)}, name))
        elif isinstance(value, dict) and value:
            out.update(metric_leaves(value, name))
        else:
            out[name] = value
    return out


def decoded(logged: str, like: object) -> object:
    """A logged parameter back as the YAML value it came from (strings are logged verbatim)."""
    return logged if isinstance(like, str) else json.loads(logged)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on 127.0.0.1 (SQLite backend in tmp); yields its URI."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log = root / "server.log"
    with log.open("w") as handle:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--backend-store-uri",
                f"sqlite:///{root / 'server.db'}",
                "--artifacts-destination",
                str(root / "artifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
            ],  # fmt: skip
            cwd=root,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{uri}/health", process, log)
        yield uri
    finally:
        stop(process)


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory, mlflow_server):
    """A copy of the shared tiny pipeline (``reproduced_tiny``: one `dvc repro` from scratch,
    committed, logged to the default store at its root), whose log stage `dvc repro` then
    runs again with MLflow logging to the server; committed (dvc.lock, tracking/run.json) as
    a researcher would."""
    shared = reproduced_tiny(tmp_path_factory)
    repo = copy_pipeline_repo(shared, tmp_path_factory.mktemp("pipeline") / "repo")
    (repo / "mlruns.db").unlink()  # the copy's default store starts empty (test_exp_runs_...)
    shutil.rmtree(repo / "mlartifacts", ignore_errors=True)
    commit = run(repo, "git", "rev-parse", "HEAD").stdout.strip()
    env = pipeline_env(repo, MLFLOW_TRACKING_URI=mlflow_server)
    run(repo, "dvc", "repro", "--force", "--single-item", "log", env=env)
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-q", "-m", "log the tiny pipeline to the team's server")
    return {"repo": repo, "commit": commit, "uri": mlflow_server, "shared": shared}


def test_repro_logs_one_run_over_http(tiny_repo):
    from mlflow.tracking import MlflowClient

    repo, uri = tiny_repo["repo"], tiny_repo["uri"]
    # the whole `dvc repro` from scratch logged exactly one run (to the default store)
    default_store = MlflowClient(f"sqlite:///{tiny_repo['shared'] / 'mlruns.db'}")
    first = default_store.get_experiment_by_name("universal-neurons")
    shared_record = json.loads((tiny_repo["shared"] / "tracking" / "run.json").read_text())
    assert [r.info.run_id for r in default_store.search_runs([first.experiment_id])] == [
        shared_record["run_id"]
    ]
    record = json.loads((repo / "tracking" / "run.json").read_text())
    assert record["tracking_uri"] == uri
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("universal-neurons")
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_id for r in runs] == [record["run_id"]]
    run_data = client.get_run(record["run_id"]).data

    # params: exactly the leaves of params.yaml, values decoding to the same YAML values
    params = leaves(yaml.safe_load((repo / "params.yaml").read_text()))
    assert set(run_data.params) == set(params)
    for key, value in params.items():
        assert decoded(run_data.params[key], value) == value, key

    # metrics: every number of metrics/*.json (the headline) under the file's name, and of
    # results/*.json (the whole documents) under detail.<name>, same value; plus the loss
    # curves (generic over whichever files the pipeline writes; lists are per-step series)
    metrics_files = [(p, p.stem) for p in sorted((repo / "metrics").glob("*.json"))]
    metrics_files += [(p, f"detail.{p.stem}") for p in sorted((repo / "results").glob("*.json"))]
    assert {"training", "detail.training"} <= {prefix for _, prefix in metrics_files}
    expected_scalars, expected_series = {}, {}
    for path, prefix in metrics_files:
        for key, value in metric_leaves(json.loads(path.read_text())).items():
            name = f"{prefix}.{key}"
            if isinstance(value, list):  # a list of numbers is a series, of names nothing
                if all(v is None or isinstance(v, int | float) for v in value):
                    expected_series[name] = [(i, v) for i, v in enumerate(value) if v is not None]
            elif isinstance(value, int | float):  # bool is an int: logged as 1/0
                expected_scalars[name] = float(value)
    # the emergence curve (metrics/emergence.csv): one series per column, step = tokens
    with (repo / "metrics" / "emergence.csv").open() as handle:
        curve = list(csv.DictReader(handle))
    for column in curve[0]:
        if column != "tokens":
            expected_series[f"emergence.{column}"] = [
                (int(row["tokens"]), float(row[column])) for row in curve
            ]
    # the % universal headline goes by model first (a runs-table header shows its start), to 3
    # significant digits; the exact numbers stay under detail.universality.
    renamed = {}
    for name, value in expected_scalars.items():
        if name == "universality.mean_percent_universal":
            renamed["mean.percent_universal"] = float(f"{value:.3g}")
        elif name.startswith("universality.percent_universal."):
            renamed[f"{name.rsplit('.', 1)[1]}.percent_universal"] = float(f"{value:.3g}")
        else:
            renamed[name] = value
    expected_scalars = renamed
    logged = {k: v for k, v in run_data.metrics.items() if not k.startswith("curve.")}
    assert set(logged) == set(expected_scalars) | {k for k, v in expected_series.items() if v}
    scalars = {k: logged[k] for k in expected_scalars}
    assert scalars == expected_scalars
    for name, points in expected_series.items():
        history = client.get_metric_history(record["run_id"], name)
        assert sorted((m.step, m.value) for m in history) == points, name
    for seed in (1, 2):
        training = json.loads((repo / "models" / f"seed{seed}" / "training.json").read_text())
        assert (
            scalars[f"detail.training.models.seed{seed}.heldout_loss"] == training["heldout_loss"]
        )
        with (repo / "models" / f"seed{seed}" / "curve.csv").open() as handle:
            rows = list(csv.DictReader(handle))
        for column in ("train_loss", "heldout_loss"):
            history = client.get_metric_history(record["run_id"], f"curve.seed{seed}.{column}")
            assert sorted((m.step, m.value) for m in history) == [
                (int(r["step"]), float(r[column])) for r in rows if r[column]
            ]

    # tags: the commit the pipeline ran on, and the hash of every output in dvc.lock
    tags = run_data.tags
    assert tags["git.commit"] == tiny_repo["commit"]
    assert tags["dvc.run"] == "repro" and "dvc.exp_name" not in tags
    # named after the commit; the outputs `dvc repro` rewrote do not count as a dirty tree
    assert record["run_name"] == runs[0].info.run_name == f"repro-{tiny_repo['commit'][:7]}"
    # the UI opens on the runs table with the headline columns (outputs/tracking_ui)
    experiment_tags = client.get_experiment(experiment.experiment_id).tags
    assert experiment_tags["mlflow.experimentKind"] == "custom_model_development"
    view = json.loads(experiment_tags["mlflow.sharedViewState.headline"])
    headline = headline_metrics(run_data.metrics)
    assert headline[0] == "mean.percent_universal"
    assert view["selectedColumns"] == [column_id("metrics", key) for key in headline]
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    outs = {o["path"]: o["md5"] for s in lock["stages"].values() for o in s.get("outs", [])}
    assert {
        "data/tokens", "models", "metrics/train_time.json", "report",
        "metrics/training.json", "tracking/run.json",
    } <= set(outs)  # fmt: skip
    for path, digest in outs.items():
        if path != "tracking/run.json":  # the log stage's own output is written after the run
            assert tags[f"dvc.out.{path}"] == digest, path

    # artifacts, uploaded through the server: the report is byte-identical
    local = client.download_artifacts(record["run_id"], "report/index.html", str(repo.parent))
    assert Path(local).read_bytes() == (repo / "report" / "index.html").read_bytes()

    # nothing left to reproduce, and reproducing again logs no second run
    status = run(repo, "dvc", "status", "--json").stdout
    assert json.loads(status) == {}
    run(repo, "dvc", "repro", env=pipeline_env(repo, MLFLOW_TRACKING_URI=uri))
    assert len(client.search_runs([experiment.experiment_id])) == 1
    assert run(repo, "git", "status", "--porcelain").stdout == ""

    # dvc plots show renders the declared plots: curves per seed and the report's figures
    shown = json.loads(run(repo, "dvc", "plots", "show", "--json").stdout)["data"]
    curve = shown["report/curves/seed1.csv"][0]["content"]["data"]["values"]
    with (repo / "models" / "seed1" / "curve.csv").open() as handle:
        evaluated = [r for r in csv.DictReader(handle) if r["heldout_loss"]]
    assert [float(v["heldout_loss"]) for v in curve] == [
        float(r["heldout_loss"]) for r in evaluated
    ]
    assert "report/figures/training_curves.png" in shown


def test_push_clone_pull_round_trip(tiny_repo, tmp_path):
    repo = tiny_repo["repo"]
    remote = tmp_path / "team-remote"
    run(repo, "dvc", "remote", "add", "team", str(remote))
    run(repo, "dvc", "push", "-r", "team")
    clone = tmp_path / "clone"
    run(tmp_path, "git", "clone", "-q", str(repo), str(clone))
    # the clone pulls from the team remote (configured locally, like a teammate would)
    run(clone, "dvc", "remote", "add", "--local", "-d", "team", str(remote))
    # Outputs marked `push: false` (data/tokens: rebuilt deterministically) are not in the
    # remote: `dvc pull` would exit 1 on them, so --allow-missing, and `dvc repro` rebuilds
    # exactly those stages, to the hashes dvc.lock records.
    unpushed = _unpushed_outputs(clone / "dvc.yaml")
    run(clone, "dvc", "pull", "--allow-missing")
    status = json.loads(run(clone, "dvc", "status", "--json").stdout)
    # what status reports missing: exactly the unpushed outputs (as outputs and as deps)
    missing = {
        path for entries in status.values() for entry in entries for change in entry.values()
        for path in change
    }  # fmt: skip
    assert missing == {out for outs in unpushed.values() for out in outs}
    assert set(unpushed) <= set(status)
    # The teammate's machine takes another CPU code path (no AVX kernels, one thread): had the
    # analysis been recomputed there, its last bits (and every hash after it) would differ.
    # It is restored instead, so only the unpushed stages run, and the README's second
    # command logs the state into the clone's own MLflow store.
    other_cpu = pipeline_env(clone, ATEN_CPU_CAPABILITY="default", OMP_NUM_THREADS="1")
    if unpushed:
        reproduced = run(clone, "dvc", "repro", env=other_cpu).stdout
        for stage in unpushed:
            assert f"Running stage '{stage}'" in reproduced
        assert reproduced.count("Running stage") == len(unpushed), reproduced  # no training
    logged = run(clone, "universal-neurons", "log", "--if-missing", env=other_cpu).stdout
    assert '"logged": true' in logged
    assert json.loads(run(clone, "dvc", "status", "--json").stdout) == {}
    assert run(clone, "git", "status", "--porcelain").stdout == ""  # dvc.lock unchanged

    metrics = json.loads(run(repo, "dvc", "metrics", "show", "--json").stdout)
    assert json.loads(run(clone, "dvc", "metrics", "show", "--json").stdout) == metrics
    for relative in ("models/seed1/model.safetensors", "report/index.html", "tracking/run.json"):
        assert (clone / relative).read_bytes() == (repo / relative).read_bytes(), relative
    # pulled files are links into the cache, not second copies (cache.type hardlink/symlink)
    weights = clone / "models" / "seed2" / "model.safetensors"
    assert weights.is_symlink() or weights.stat().st_nlink > 1 or _reflinked(weights)


def _unpushed_outputs(dvc_yaml: Path) -> dict[str, list[str]]:
    """``{stage: [outputs with push: false]}`` of a dvc.yaml (plain stages only)."""
    found: dict[str, list[str]] = {}
    for name, stage in yaml.safe_load(dvc_yaml.read_text())["stages"].items():
        for out in stage.get("outs", []):
            if isinstance(out, dict):
                ((path, options),) = out.items()
                if (options or {}).get("push") is False and "foreach" not in stage:
                    found.setdefault(name, []).append(path)
    return found


def _reflinked(path: Path) -> bool:
    """Whether ``path``'s filesystem makes reflinks (copy-on-write clones: shared blocks, own
    inode), which DVC prefers over hard links; then a pulled file is no second copy either."""
    probe = path.parent / ".reflink-probe"
    probe.write_bytes(b"x")
    try:
        clone = subprocess.run(["cp", "--reflink=always", probe, f"{probe}.2"], capture_output=True)
        return clone.returncode == 0
    finally:
        probe.unlink()
        Path(f"{probe}.2").unlink(missing_ok=True)


def test_exp_runs_land_in_one_store_and_the_ui_serves_them(tiny_repo):
    from mlflow.tracking import MlflowClient

    repo = tiny_repo["repo"]
    env = pipeline_env(repo)  # no MLFLOW_TRACKING_URI: the default store at the repository root
    run(repo, "dvc", "exp", "run", "--temp", "-n", "lr-temp", "-S", "train.learning_rate=0.02", env=env)  # fmt: skip
    # queued: a new τ (README's example), which reruns the τ-dependent stages only; the
    # training and its metrics stay the baseline's, so they differ from lr-temp's
    run(repo, "dvc", "exp", "run", "--queue", "-n", "tau-queue", "-S", "universality.threshold=0.45", env=env)  # fmt: skip
    run(repo, "dvc", "exp", "run", "--run-all", env=env)
    # in the workspace: train.workers changes no result, so only the log stage runs again
    run(repo, "dvc", "exp", "run", "-n", "workers-ws", "-S", "train.workers=1", env=env)
    baseline_params = leaves(yaml.safe_load(run(repo, "git", "show", "HEAD:params.yaml").stdout))
    run(repo, "git", "checkout", "--", ".")  # back to the baseline workspace

    store = repo / "mlruns.db"
    assert store.is_file()
    assert not [p for p in (repo / ".dvc").rglob("mlruns.db")]  # nothing left in temp copies
    client = MlflowClient(f"sqlite:///{store}")
    experiment = client.get_experiment_by_name("universal-neurons")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {"lr-temp", "tau-queue", "workers-ws"}
    temp, queued = runs["lr-temp"], runs["tau-queue"]
    differing = {
        key
        for key in set(temp.data.params) | set(queued.data.params)
        if temp.data.params.get(key) != queued.data.params.get(key)
    }
    assert differing == {"train.learning_rate", "universality.threshold"}
    assert json.loads(temp.data.params["train.learning_rate"]) == 0.02
    assert json.loads(queued.data.params["universality.threshold"]) == 0.45
    for logged, key in ((temp, "universality.threshold"), (queued, "train.learning_rate")):
        assert decoded(logged.data.params[key], baseline_params[key]) == baseline_params[key]
    workspace = runs["workers-ws"].data.params
    assert set(workspace) == set(baseline_params)
    assert {k for k, v in baseline_params.items() if decoded(workspace[k], v) != v} == {
        "train.workers"
    }
    assert workspace["train.workers"] == "1"

    # each experiment's commit records its run, and the run holds that commit's metrics
    refs = run(repo, "git", "for-each-ref", "--format=%(refname)", "refs/exps").stdout.split()
    for name, logged in runs.items():
        (ref,) = [r for r in refs if r.endswith("/" + name)]
        assert logged.data.tags["dvc.exp_name"] == name
        assert (
            logged.data.tags["dvc.exp_baseline_rev"]
            == run(repo, "git", "rev-parse", "HEAD").stdout.strip()
        )
        committed = run(repo, "git", "show", f"{ref}:tracking/run.json").stdout
        assert str(repo.resolve()) not in committed and str(repo) not in committed
        record = json.loads(committed)
        assert record["run_id"] == logged.info.run_id
        assert record["tracking_uri"] == "sqlite:///mlruns.db"  # relative to the repository
        training = json.loads(run(repo, "git", "show", f"{ref}:metrics/training.json").stdout)
        assert {k: v for k, v in logged.data.metrics.items() if k.startswith("training.")} == {
            f"training.{k}": v for k, v in leaves(training).items()
        }
        # and its commit's universality results, whose threshold is the run's own τ (0.45 queued)
        results = json.loads(run(repo, "git", "show", f"{ref}:results/universality.json").stdout)
        numbers = {
            f"detail.universality.{k}": float(v)
            for k, v in metric_leaves(results).items()
            if isinstance(v, int | float)
        }
        assert {k: logged.data.metrics[k] for k in numbers} == numbers
        assert numbers["detail.universality.threshold"] == json.loads(
            logged.data.params["universality.threshold"]
        )
    assert (
        temp.data.metrics["training.mean_heldout_loss"]
        != (queued.data.metrics["training.mean_heldout_loss"])
    )
    _check_dvc_tables(repo, env, {name: r for r in refs for name in runs if r.endswith("/" + name)})

    # `universal-neurons ui` serves this store: the REST API of the printed address lists both
    port = free_port()
    log = repo.parent / "ui.log"
    with log.open("w") as handle:
        process = subprocess.Popen(
            ["universal-neurons", "ui", "--port", str(port)],
            cwd=repo,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        address = f"http://127.0.0.1:{port}"
        wait_for_http(f"{address}/health", process, log)
        assert f"MLflow UI: {address}" in log.read_text()
        printed = log.read_text().splitlines()
        start = next(i for i, line in enumerate(printed) if line.startswith("MLflow UI: "))
        assert printed[start].split()[2].startswith(f"{address}/#/experiments/")  # whole
        ours = [printed[start]] + [line for line in printed[start + 1 :][:1] if "(store: " in line]
        assert "(store: " in " ".join(ours) and max(map(len, ours)) <= 120
        request = urllib.request.Request(
            f"{address}/api/2.0/mlflow/runs/search",
            data=json.dumps({"experiment_ids": [experiment.experiment_id]}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            served = json.loads(response.read())["runs"]
        assert {r["info"]["run_id"] for r in served} == {r.info.run_id for r in runs.values()}
    finally:
        stop(process)


HEADLINE_FILES = {
    "metrics/universality.json": {"mean_percent_universal", "median_corr", "median_baseline"},
    "metrics/training.json": {"mean_heldout_loss"},
    "metrics/families.json": {
        "unigram", "byte", "alphabet", "previous_token", "position", "syntax", "semantic",
        "unexplained"
    },
    "metrics/findings.json": {"l2_penalty", "input_bias", "skew", "kurt", "sparsity"},
}  # fmt: skip
NEWER_HEADLINE_FILES = {
    "metrics/uncertainty.json": {"mean_percent_universal_lo", "mean_percent_universal_hi"},
    "metrics/one_to_one.json": {"available", "mean_percent_one_to_one_universal"},
    "metrics/effects.json": {
        "roles_entropy",
        "roles_none",
    },  # medians are null without universal neurons
}
"""The headline files of the stages of issues 23 and 24 (intervals, one-to-one matching,
effects): DVC lists them too; the first four keep the compact table of issue 25."""


def _check_dvc_tables(repo: Path, env: dict, refs: dict[str, str]) -> None:
    """What a researcher compares in a terminal: ``dvc metrics show`` holds the headline only
    (percent universal of each model besides), ``universal-neurons exps --wide`` (DVC's table)
    at most 200 columns and its default comparison at most 120 (``_check_comparison``), and ``dvc metrics diff`` between two experiments names the headline change."""
    shown = json.loads(run(repo, "dvc", "metrics", "show", "--json", env=env).stdout)
    data = shown[""]["data"]
    assert set(data) == set(HEADLINE_FILES) | set(NEWER_HEADLINE_FILES)
    for path, keys in {**HEADLINE_FILES, **NEWER_HEADLINE_FILES}.items():
        assert keys <= set(data[path]["data"]), path
    columns = [key for path in HEADLINE_FILES for key in leaves(data[path]["data"])]
    seeds = yaml.safe_load((repo / "params.yaml").read_text())["train"]["seeds"]
    assert sorted(columns) == sorted(
        [key for keys in HEADLINE_FILES.values() for key in keys]
        + [f"percent_universal.seed{seed}" for seed in seeds]
    )
    assert len(columns) <= 21
    # plain `dvc exp show --only-changed`: the changed params and headline metrics, no detail
    # column, but also one hash column per intermediate output (each changed with the lr)
    plain = run(repo, "dvc", "exp", "show", "--only-changed", "--csv", env=env).stdout
    plain_header = next(csv.reader(io.StringIO(plain)))
    assert "train.learning_rate" in plain_header and "mean_heldout_loss" in plain_header
    assert not [column for column in plain_header if "models." in column]  # no detail columns
    # `universal-neurons exps --csv` (DVC's table) drops exactly those hash columns
    table = run(repo, "universal-neurons", "exps", "--csv", env=env).stdout
    header = next(csv.reader(io.StringIO(table)))
    dropped = set(plain_header) - set(header)
    assert dropped and all(
        re.match(r"(data|models|report|results|metrics)(/|$)", c) or re.match(DETAIL_COLUMNS, c)
        for c in dropped
    )
    assert not [c for c in header if re.match(DETAIL_COLUMNS, c)]
    assert {"train.learning_rate", "universality.threshold", "mean_heldout_loss"} <= set(header)
    # `--wide`: DVC's drawn table (rounded to 5 digits), nothing cut, at most 200 columns
    wide = run(repo, "universal-neurons", "exps", "--wide", env=env).stdout
    assert "universality.threshold" in wide and "…" not in wide, wide
    assert max(len(line.rstrip()) for line in wide.splitlines()) <= 200, wide
    _check_comparison(repo, env, refs)
    diff = json.loads(
        run(
            repo, "dvc", "metrics", "diff", refs["lr-temp"], refs["tau-queue"], "--json", env=env
        ).stdout
    )
    loss = diff["metrics/training.json"]["mean_heldout_loss"]
    assert loss["old"] != loss["new"] and loss["diff"] == pytest.approx(loss["new"] - loss["old"])


def _check_comparison(repo: Path, env: dict, refs: dict[str, str]) -> None:
    """``universal-neurons exps`` (its default, drawn from `dvc exp show --json`) fits 120
    columns, and its column of each experiment holds that experiment's commit, changed
    parameters and headline metrics (read back from the commit with git)."""
    drawn = run(repo, "universal-neurons", "exps", env=env).stdout
    assert max(len(line) for line in drawn.splitlines()) <= 120, drawn
    cells = cells_by_row(drawn)
    branch = run(repo, "git", "rev-parse", "--abbrev-ref", "HEAD").stdout.strip()
    assert {"workspace", branch, *refs} <= set(cells["commit"])
    changed = {"lr-temp": ("train.learning_rate", "0.02"), "tau-queue": ("universality.threshold", "0.45"), "workers-ws": ("train.workers", "1")}  # fmt: skip
    for name, (key, value) in changed.items():
        assert cells[key][name] == value
        assert [n for n, cell in cells[key].items() if cell == value] == [name]
    for name, ref in {branch: "HEAD", **refs}.items():
        commit = run(repo, "git", "rev-parse", ref).stdout.strip()
        assert cells["commit"][name] == commit[:7]
        for path in ("metrics/universality.json", "metrics/training.json"):
            numbers = leaves(json.loads(run(repo, "git", "show", f"{commit}:{path}").stdout))
            for key, value in numbers.items():
                cell = cells[key][name]
                assert float(cell.removesuffix("%")) == pytest.approx(value, rel=5e-4, abs=5e-5)
                assert cell.endswith("%") == ("percent" in key)
    losses = cells["mean_heldout_loss"]
    assert losses["lr-temp"] != losses["tau-queue"] == losses[branch]


TAU_STAGES = {
    "validate",
    "universality",
    "emergence",
    "uncertainty",
    "one_to_one",
    "stats",
    "null_control",
    "classify",
    "effects",
    "report",
    "log",
}
"""The stages a new universality threshold reruns: those applying τ (universality, emergence,
uncertainty, one_to_one, null_control) and those describing the universal set (stats, classify,
effects, report, log). Never a measurement (collect, correlate, baseline, emergence_points,
uncertainty_resamples, null_measures), the description of the candidates (classify_candidates,
effects_candidates: every neuron above ``universality.candidate_threshold``), the weight
statistics (weight_stats) or the training."""


def test_a_new_threshold_reruns_only_what_depends_on_it(tiny_repo, tmp_path):
    """README's experiment example, `dvc exp run -S universality.threshold=...`, reruns the
    τ-dependent stages only (issue 25): the measurement of every checkpoint stays cached."""
    repo = tiny_repo["repo"]
    env = pipeline_env(repo, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'tau.db'}")
    command = ["dvc", "exp", "run", "--temp", "-n", "tau-0.4", "-S", "universality.threshold=0.4"]
    output = run(repo, *command, env=env).stdout
    ran = set(re.findall(r"Running stage '([^']+)'", output))
    skipped = set(re.findall(r"Stage '([^']+)' didn't change, skipping", output))
    # the stages applying τ always run; those describing the universal set run when it changed
    assert {"universality", "emergence", "uncertainty", "one_to_one", "null_control"} <= ran
    assert ran <= TAU_STAGES, output
    measurements = {"collect@1", "correlate", "baseline", "emergence_points", "train"}
    # τ = 0.4 is their threshold; the weight statistics depend on the weights alone
    candidates = {"classify_candidates", "effects_candidates", "weight_stats"}
    assert measurements | {"uncertainty_resamples", "null_measures"} | candidates <= skipped, output
