"""tracking: flattening, the store's anchor, and one real run in a real SQLite MLflow store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import git
from synthetic_results import write_results

from universal_neurons.outputs.run_contents import flatten_metrics, flatten_params
from universal_neurons.outputs.tracking import (
    default_tracking_uri,
    log_run,
    project_root,
    tracking_uri,
)
from universal_neurons.pipeline.layout import Layout
from universal_neurons.pipeline.tools.log import run_inputs


def test_flatten_metrics_by_hand():
    scalars, series = flatten_metrics(
        {
            "threshold": 0.5,
            "models": {"seed1": {"n": 3, "per_layer": [1.0, None, 2], "ok": True, "name": "x"}},
            "empty": None,
            "families": {"counts/weird:key": 2},
            "rows": [{"a": 1}, {"a": 2}],
        },
        "universality",
    )
    assert scalars == {
        "universality.threshold": 0.5,
        "universality.models.seed1.n": 3.0,
        "universality.models.seed1.ok": 1.0,
        "universality.families.counts/weird_key": 2.0,
        "universality.rows.0.a": 1.0,
        "universality.rows.1.a": 2.0,
    }
    assert series == {"universality.models.seed1.per_layer": [(0, 1.0), (2, 2.0)]}


def test_flatten_params_round_trip():
    raw = {
        "train": {"seeds": [1, 2], "learning_rate": 1.0e-5, "device": "cpu", "flag": True},
        "corpus": {"sources": ["news"], "extra": None},
        "empty": {},
    }
    flat = flatten_params(raw)
    assert flat == {
        "train.seeds": "[1, 2]",
        "train.learning_rate": "1e-05",
        "train.device": "cpu",
        "train.flag": "true",
        "corpus.sources": '["news"]',
        "corpus.extra": "null",
        "empty": "{}",
    }
    assert json.loads(flat["train.learning_rate"]) == 1.0e-5


def test_project_root_anchors(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    (repo / ".dvc" / "tmp" / "exps" / "tmpabc" / "src").mkdir(parents=True)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    # inside a --temp/--queue copy: the parent repository
    assert project_root(repo / ".dvc" / "tmp" / "exps" / "tmpabc" / "src") == repo.resolve()
    # below a DVC repository: its root
    (repo / "src" / "deep").mkdir(parents=True)
    assert project_root(repo / "src" / "deep") == repo.resolve()
    # DVC_ROOT, which DVC sets for every stage, wins
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.setenv("DVC_ROOT", str(other))
    assert project_root(repo / "src") == other.resolve()
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri() == f"sqlite:///{other.resolve()}/mlruns.db"
    elsewhere = f"sqlite:///{tmp_path / 'team' / 'store.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", elsewhere)
    assert tracking_uri() == elsewhere


def _git(cwd: Path, *args: str) -> str:
    return git(cwd, *args)


def all_artifacts(client, run_id: str, path: str | None = None) -> set[str]:
    """Every artifact file of a run, recursively."""
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= all_artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return found


@pytest.mark.slow
def test_log_run_to_sqlite(tmp_path, monkeypatch):
    """A synthetic workspace logged into a real SQLite store, read back through MlflowClient."""
    from mlflow.tracking import MlflowClient

    work = tmp_path / "work"
    documents = write_results(work)
    (work / "report").mkdir()
    (work / "report" / "index.html").write_text("<html>report</html>")
    raw_params = {"train": {"seeds": [1, 2], "learning_rate": 0.003}, "model": {"n_layers": 2}}
    (work / "params.yaml").write_text(yaml.safe_dump(raw_params))
    lock = {
        "schema": "2.0",
        "stages": {
            "train@1": {"cmd": "x", "outs": [{"path": "models/seed1", "md5": "aa11.dir"}]},
            "log": {"cmd": "y", "outs": [{"path": "tracking/run.json", "md5": "bb22"}]},
        },
    }
    (work / "dvc.lock").write_text(yaml.safe_dump(lock))
    _git(work, "init", "-q")
    _git(work, "add", "-A")
    _git(work, "commit", "-qm", "results")
    commit = _git(work, "rev-parse", "HEAD")
    monkeypatch.setenv("DVC_EXP_NAME", "brisk-lynx")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", commit)
    uri = default_tracking_uri(tmp_path / "store")
    (tmp_path / "store").mkdir()

    inputs = run_inputs(Layout.at(work), [1, 2])
    record = log_run(inputs, raw_params, uri=uri, exclude_outputs=["tracking/run.json"])

    client = MlflowClient(uri)
    run = client.get_run(record.run_id)
    assert record.run_name == run.info.run_name == "brisk-lynx"
    assert run.info.status == "FINISHED"
    assert run.info.artifact_uri.startswith((tmp_path / "store" / "mlartifacts").as_uri())
    assert run.data.params == {
        "train.seeds": "[1, 2]",
        "train.learning_rate": "0.003",
        "model.n_layers": "2",
    }
    metrics = run.data.metrics
    uni = documents["universality"]["models"]["seed1"]
    # the headline (metrics/) under the file's name; the whole documents (results/) as details
    # the % universal model first, to 3 significant digits (exact among the details)
    assert metrics["seed1.percent_universal"] == float(f"{uni['percent_universal']:.3g}")
    assert metrics["seed1.percent_universal"] != uni["percent_universal"]  # 10.2564... planted
    mean = (
        uni["percent_universal"] + documents["universality"]["models"]["seed2"]["percent_universal"]
    ) / 2
    assert metrics["mean.percent_universal"] == float(f"{mean:.3g}") == 7.76
    assert "universality.percent_universal.seed1" not in metrics
    assert metrics["detail.universality.models.seed1.percent_universal"] == uni["percent_universal"]
    assert metrics["detail.universality.models.seed1.n_dead"] == 1.0
    assert metrics["detail.universality.kept_positions"] == 12345.0
    assert metrics["detail.stats.models.seed2.sparsity.median_other"] == 0.22
    assert "detail.stats.models.seed1.input_bias.p_value" not in metrics  # null: skipped
    assert metrics["detail.families.models.seed1.counts.unigram"] == 2.0
    assert not [key for key in metrics if key.startswith(("stats.", "families."))]
    history = client.get_metric_history(
        record.run_id, "detail.universality.models.seed1.percent_universal_per_layer"
    )
    assert sorted((m.step, m.value) for m in history) == [(0, 300 / 19), (1, 5.0)]
    fam_history = client.get_metric_history(
        record.run_id, "detail.families.models.seed1.counts_per_layer.unigram"
    )
    # unigram neurons of seed1: the 1st universal one (layer 0) and the 4th (layer 1)
    assert sorted((m.step, m.value) for m in fam_history) == [(0, 1.0), (1, 1.0)]
    heldout = client.get_metric_history(record.run_id, "curve.seed2.heldout_loss")
    assert sorted((m.step, m.value) for m in heldout) == [(2, 4.78), (4, 4.58), (6, 4.38)]
    assert len(client.get_metric_history(record.run_id, "curve.seed1.train_loss")) == 6
    tags = run.data.tags
    assert tags["git.commit"] == commit
    assert tags["dvc.exp_name"] == "brisk-lynx"
    assert tags["dvc.exp_baseline_rev"] == commit
    assert tags["dvc.out.models/seed1"] == "aa11.dir"
    assert "dvc.out.tracking/run.json" not in tags
    artifacts = all_artifacts(client, record.run_id)
    assert {
        "report/index.html",
        "metrics/universality.json",
        "results/universality.json",
        "dvc/params.yaml",
        "dvc/dvc.lock",
        "training/seed1/curve.csv",
        "tables/universality/seed1.parquet",
        "tables/families/seed2.parquet",
    } <= artifacts
    local = client.download_artifacts(record.run_id, "results/stats.json", str(tmp_path))
    assert Path(local).read_bytes() == (work / "results" / "stats.json").read_bytes()


def test_ui_refuses_a_busy_port(tmp_path, monkeypatch):
    import socket

    from universal_neurons.outputs.tracking import serve_ui

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ValueError, match=rf"--port: cannot listen on 127.0.0.1:{port}"):
            serve_ui("127.0.0.1", port, echo=lambda line: None)
    assert not (tmp_path / "mlruns.db").exists()


def test_ui_points_at_a_tracking_server(monkeypatch):
    """With MLFLOW_TRACKING_URI naming a server that answers, that server is the UI."""
    import http.server
    import threading

    from universal_neurons.outputs.tracking import serve_ui

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the handler's API)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    uri = f"http://127.0.0.1:{server.server_address[1]}"
    lines = []
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        assert serve_ui("127.0.0.1", 5000, echo=lines.append) == 0
    finally:
        server.shutdown()
    assert lines == [f"MLflow UI: {uri} (MLFLOW_TRACKING_URI names a running server)"]


def _logged_repository(root: Path) -> dict:
    """A synthetic workspace at ``root`` with its own SQLite store, one run logged in it."""
    write_results(root)
    raw_params = {"train": {"seeds": [1, 2]}}
    (root / "params.yaml").write_text(yaml.safe_dump(raw_params))
    log_run(run_inputs(Layout.at(root), [1, 2]), raw_params, uri=default_tracking_uri(root))
    return raw_params


def test_a_copied_repository_logs_inside_the_copy(tmp_path):
    """Issue 27: MLflow records the experiment's artifact location as an absolute path; a run
    logged in a copy of the repository must write its artifacts into the copy, not into the
    tree the store was copied from."""
    import os
    import shutil

    from mlflow.tracking import MlflowClient
    from test_bad_inputs import snapshot

    original, copy = tmp_path / "original", tmp_path / "copy"
    raw_params = _logged_repository(original)
    shutil.copytree(original, copy)
    before = snapshot(original)

    record = log_run(
        run_inputs(Layout.at(copy), [1, 2]), raw_params, uri=default_tracking_uri(copy)
    )

    assert snapshot(original) == before  # nothing written outside the copy
    assert record.artifact_uri.startswith((copy / "mlartifacts").as_uri() + "/")
    written = copy / "mlartifacts" / record.artifact_uri.split("/mlartifacts/", 1)[1]
    assert (written / "dvc" / "params.yaml").read_text() == yaml.safe_dump(raw_params)
    client = MlflowClient(default_tracking_uri(copy))
    runs = client.search_runs([record.experiment_id])
    assert len(runs) == 2  # the copied run too now names the copy's artifacts
    assert all(run.info.artifact_uri.startswith(copy.as_uri()) for run in runs)
    assert not [p for p in os.listdir(tmp_path) if p not in ("original", "copy")]
