"""tracking_ui: headline columns, run names, the UI's addresses, and two logged runs compared."""

from __future__ import annotations

import json
import tomllib
import urllib.parse
from pathlib import Path

import yaml
from conftest import git
from synthetic_results import write_results

from universal_neurons.outputs import mlflow_app
from universal_neurons.outputs.tracking import default_tracking_uri, log_run, ui_command
from universal_neurons.outputs.tracking_ui import (
    HEADLINE_METRICS,
    MAX_COLUMNS,
    changed_inputs,
    compare_runs_url,
    headline_metrics,
    local_experiment_url,
    logging_order,
    run_name,
    runs_table_url,
    view_state,
)
from universal_neurons.pipeline.layout import Layout
from universal_neurons.pipeline.tools.log import run_inputs


def _git(cwd: Path, *args: str) -> str:
    return git(cwd, *args)


def test_headline_metrics_pick_and_order():
    """Pattern order, natural seed order, ``*`` = one key part: details logged deeper under the
    same prefix (``families.models...``) and other files' keys are no columns."""
    keys = [
        "stats.models.seed1.kurt.median_universal",
        "seed10.percent_universal",
        "seed2.percent_universal",
        "universality.models.seed2.percent_universal",
        "emergence.mean_percent_universal",
        "training.mean_heldout_loss",
        "training.models.seed2.heldout_loss",
        "mean.percent_universal",
        "universality.median_baseline",
        "universality.median_corr",
        "universality.kept_positions",
        "families.unigram",
        "families.models.seed1.counts.unigram",
        "Families.position",
        "findings.skew",
        "findings.l2_penalty",
    ]
    assert headline_metrics(keys) == [
        "mean.percent_universal",
        "seed2.percent_universal",
        "seed10.percent_universal",
        "universality.median_corr",
        "universality.median_baseline",
        "training.mean_heldout_loss",
        "families.unigram",
        "findings.l2_penalty",
        "findings.skew",
    ]
    many = [f"seed{s}.percent_universal" for s in range(1, 40)]
    assert len(headline_metrics(many)) == MAX_COLUMNS == 32
    column = "metrics.`universality.median_baseline`"
    assert view_state(["findings.skew"])["columnWidths"] == {"metrics.`findings.skew`": 40 + 7 * 13}
    assert view_state(["universality.median_baseline", "x.y"]) == {
        "selectedColumns": [column],
        "columnOrder": [column],
        "columnWidths": {column: 236},  # 40 + 7 * 28 characters
    }
    assert view_state(["findings." + "x" * 40])["columnWidths"] == {
        "metrics.`findings.xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx`": 240  # capped
    }


def test_headline_names_put_the_model_first():
    """The % universal of ``metrics/universality.json`` is logged model first (what a column
    header shows before it is cut), to 3 significant digits; other keys keep their names and
    their exact values."""
    from universal_neurons.outputs.run_contents import headline_name, headline_scalars

    assert headline_name("universality.percent_universal.seed1") == "seed1.percent_universal"
    assert headline_name("universality.percent_universal.alias") == "alias.percent_universal"
    assert headline_name("universality.mean_percent_universal") == "mean.percent_universal"
    assert headline_name("universality.median_corr") == "universality.median_corr"
    assert headline_name("universality.percent_universal.a.b") == (
        "universality.percent_universal.a.b"
    )
    scalars = {
        "universality.mean_percent_universal": 0.29296875,
        "universality.percent_universal.seed1": 10.256410256410257,
        "universality.median_corr": 0.31521987915039062,
    }
    assert headline_scalars(scalars) == {
        "mean.percent_universal": 0.293,
        "seed1.percent_universal": 10.3,
        "universality.median_corr": 0.31521987915039062,
    }


def test_every_headline_key_of_five_models_is_a_column():
    """The headline keys of the metrics files (issue 16) for five models: all 21 are columns,
    in the order of HEADLINE_METRICS, none cut by MAX_COLUMNS."""
    families = ["unigram", "alphabet", "previous_token", "position", "syntax", "semantic"]
    findings = ["l2_penalty", "input_bias", "skew", "kurt", "sparsity"]
    keys = [
        "mean.percent_universal",
        *(f"seed{s}.percent_universal" for s in range(1, 6)),
        "universality.median_corr",
        "universality.median_baseline",
        "training.mean_heldout_loss",
        *(f"families.{name}" for name in sorted([*families, "unexplained"])),
        *(f"findings.{name}" for name in sorted(findings)),
    ]
    assert len(keys) == 21
    assert headline_metrics(reversed(keys)) == keys
    assert len(HEADLINE_METRICS) == 7


def test_run_names():
    commit = "0123456789abcdef0123456789abcdef01234567"
    assert run_name("tau-0.15", commit, dirty=True) == "tau-0.15"
    assert run_name(None, commit, dirty=False) == "repro-0123456"
    assert run_name(None, commit, dirty=True) == "repro-0123456-dirty"
    assert run_name(None, None, dirty=False) == "repro"


def test_changed_inputs_ignores_pipeline_outputs(tmp_path):
    (tmp_path / "metrics").mkdir()
    for name in ("params.yaml", "dvc.lock", "metrics/stats.json", "code.py", ".gitignore"):
        (tmp_path / name).write_text("a\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-qm", "state")
    for name in ("dvc.lock", "metrics/stats.json", ".gitignore"):
        (tmp_path / name).write_text("b\n")
    (tmp_path / "untracked.txt").write_text("new\n")
    assert changed_inputs(tmp_path, ["metrics/stats.json"]) == []
    assert changed_inputs(tmp_path, ["metrics"]) == []
    (tmp_path / "params.yaml").write_text("b\n")
    assert changed_inputs(tmp_path, ["metrics"]) == ["params.yaml"]
    assert changed_inputs(tmp_path, []) == ["metrics/stats.json", "params.yaml"]  # dvc.lock never
    assert changed_inputs(tmp_path.parent / "nowhere", []) == []


def test_runs_table_url(tmp_path):
    assert runs_table_url("http://127.0.0.1:5000/", "7") == (
        "http://127.0.0.1:5000/#/experiments/7/runs"
        "?workflowType=machine_learning&viewStateShareKey=headline"
    )
    # no store yet: the server root, and no store is created by asking
    missing = tmp_path / "mlruns.db"
    assert local_experiment_url("http://h:1", f"sqlite:///{missing}", "x") == "http://h:1"
    assert not missing.exists()


def _log_state(work: Path, uri: str, threshold: float, mean_percent: float):
    """Log ``work`` with the parameter ``universality.threshold`` and the headline mean %
    universal (``metrics/universality.json``) set as given."""
    metrics = work / "metrics" / "universality.json"
    headline = json.loads(metrics.read_text())
    headline["mean_percent_universal"] = mean_percent
    metrics.write_text(json.dumps(headline))
    raw_params = {"universality": {"threshold": threshold}, "train": {"seeds": [1, 2]}}
    (work / "params.yaml").write_text(yaml.safe_dump(raw_params))
    return log_run(run_inputs(Layout.at(work), [1, 2]), raw_params, uri=uri)


def test_two_runs_compared(tmp_path, monkeypatch):
    """Two states that differ in one parameter: the compare address names both runs, MLflow
    shows the changed parameter, and the experiment carries the headline view."""
    from mlflow.tracking import MlflowClient

    work = tmp_path / "work"
    write_results(work)
    universality = {"cmd": "x", "outs": [{"path": "metrics/universality.json", "md5": "aa"}]}
    (work / "dvc.lock").write_text(yaml.safe_dump({"stages": {"universality": universality}}))
    _git(work, "init", "-q")
    _git(work, "add", "-A")
    _git(work, "commit", "-qm", "results")
    commit = _git(work, "rev-parse", "HEAD")
    uri = default_tracking_uri(tmp_path)
    for name in ("DVC_EXP_NAME", "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(name, raising=False)
    # the metrics file is a pipeline output (dvc.lock), params.yaml untracked: a clean state
    first = _log_state(work, uri, threshold=0.5, mean_percent=7.5)
    monkeypatch.setenv("DVC_EXP_NAME", "tau-0.15")
    second = _log_state(work, uri, threshold=0.15, mean_percent=12.5)

    assert first.run_name == f"repro-{commit[:7]}"
    assert second.run_name == "tau-0.15"
    url = compare_runs_url(
        "http://127.0.0.1:5000", first.experiment_id, [first.run_id, second.run_id]
    )
    address, fragment = url.split("#", 1)
    route, query = fragment.split("?", 1)
    assert (address, route) == ("http://127.0.0.1:5000/", "/compare-runs")
    fields = urllib.parse.parse_qs(query)
    assert json.loads(fields["runs"][0]) == [first.run_id, second.run_id]
    assert json.loads(fields["experiments"][0]) == [first.experiment_id]
    assert fields["workflowType"] == ["machine_learning"]

    client = MlflowClient(uri)
    a, b = (client.get_run(record.run_id).data for record in (first, second))
    changed = {
        k: (a.params[k], b.params.get(k)) for k in a.params if a.params[k] != b.params.get(k)
    }
    assert changed == {"universality.threshold": ("0.5", "0.15")}
    assert (
        a.metrics["mean.percent_universal"],
        b.metrics["mean.percent_universal"],
    ) == (7.5, 12.5)

    base = "http://127.0.0.1:5000"
    assert local_experiment_url(base, uri, "universal-neurons") == runs_table_url(
        base, first.experiment_id
    )
    assert local_experiment_url(base, uri, "no-such-experiment") == base

    tags = client.get_experiment(first.experiment_id).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    view = json.loads(tags["mlflow.sharedViewState.headline"])
    assert (
        view["selectedColumns"]
        == view["columnOrder"]
        == [
            "metrics.`mean.percent_universal`",
            "metrics.`seed1.percent_universal`",
            "metrics.`seed2.percent_universal`",
        ]
    )


def test_logging_order_puts_the_headline_first():
    """Every key once: the headline metrics in their order, then the rest sorted, so the
    compare page's default plot (the first shared metric) is a headline one, not ``detail.``."""
    keys = ["detail.a.b", "seed2.percent_universal", "zeta", "mean.percent_universal", "alpha"]
    keys += ["seed1.percent_universal", "families.unigram"]
    assert logging_order(keys) == [
        "mean.percent_universal",
        "seed1.percent_universal",
        "seed2.percent_universal",
        "families.unigram",
        "alpha",
        "detail.a.b",
        "zeta",
    ]
    assert logging_order([]) == []


def test_the_served_page_stores_classic_ml_first():
    """MLflow's own index.html, served by the app ``ui`` names: the workflow script comes in
    the head before the UI's bundle, and writes the key only when it is unset."""
    from mlflow.server import app as flask_app

    page = mlflow_app.create_app().test_client().get("/")  # no uvicorn: the Flask app itself
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and page.mimetype == "text/html"
    script = mlflow_app.workflow_script()
    assert html.index("<head>") < html.index(script) < html.index("static/js/main.")
    original = (Path(flask_app.static_folder) / "index.html").read_text(encoding="utf-8")
    assert html.replace(script, "") == original
    assert 'localStorage.getItem("mlflow.workflowType_v1")===null' in script
    assert 'setItem("mlflow.workflowType_v1","\\"machine_learning\\"")' in script


def test_mlflow_server_finds_the_app():
    """pyproject.toml declares the ``mlflow.app`` entry point that ``mlflow server
    --app-name`` resolves (mlflow.server._find_app), as a factory; ``ui`` names it."""
    from mlflow.server import _is_factory

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    target = pyproject["project"]["entry-points"]["mlflow.app"][mlflow_app.APP_NAME]
    assert target == "universal_neurons.outputs.mlflow_app:create_app"
    assert _is_factory(target)  # uvicorn gets --factory
    command = ui_command("127.0.0.1", 5000, "sqlite:///x.db", Path("."))
    assert (mlflow_app.APP_NAME in command) == mlflow_app.app_installed()
