"""A fresh clone's store gets the state's run exactly once (`universal-neurons log --if-missing`)."""

import json

import yaml
from conftest import tiny_params_dict
from mlflow.tracking import MlflowClient

from universal_neurons.config import load_params
from universal_neurons.pipeline.layout import Layout
from universal_neurons.pipeline.tools import log


def test_log_if_missing_logs_once_into_an_empty_store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params_dict()))
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "universality.json").write_text(
        json.dumps({"threshold": 0.5, "mean_percent_universal": 1.25, "models": {}})
    )
    (tmp_path / "tracking").mkdir()
    record = tmp_path / "tracking" / "run.json"
    record.write_text(
        json.dumps({"run_id": "0123456789abcdef", "tracking_uri": "sqlite:////elsewhere.db"})
    )
    before = record.read_bytes()

    layout = Layout.at(tmp_path)
    first = log.ensure(load_params(layout.params), layout)
    assert first["logged"] is True
    run = MlflowClient(uri).get_run(first["run_id"])
    assert run.data.metrics["mean.percent_universal"] == 1.25
    assert run.data.tags["log.stands_for_run"] == "0123456789abcdef"
    assert record.read_bytes() == before  # the committed record is left alone

    second = log.ensure(load_params(layout.params), layout)
    assert second == {**second, "logged": False, "run_id": first["run_id"]}
    experiment = MlflowClient(uri).get_experiment_by_name(
        run.info.experiment_id and "universal-neurons"
    )
    assert len(MlflowClient(uri).search_runs([experiment.experiment_id])) == 1
