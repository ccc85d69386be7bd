"""``universal-neurons metrics``: the declared metrics files, one number per line, in 120 columns."""

from __future__ import annotations

import json

from conftest import REPO_ROOT, invoke_command

from universal_neurons.pipeline.tools.metrics import declared_metrics, flat_items, metrics_text


def test_the_declared_metrics_files_are_dvc_yamls():
    assert declared_metrics(REPO_ROOT / "dvc.yaml") == [
        "metrics/universality.json",
        "metrics/uncertainty.json",
        "metrics/one_to_one.json",
        "metrics/findings.json",
        "metrics/families.json",
        "metrics/effects.json",
        "metrics/training.json",
    ]


def test_one_number_per_line_from_each_declared_file(tmp_path):
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  a:\n    cmd: x\n    metrics:\n      - m/one.json:\n          cache: false\n"
        "  b:\n    foreach: [1]\n    do:\n      cmd: y\n      metrics:\n        - m/two.json\n"
    )
    (tmp_path / "m").mkdir()
    one = {"mean": 0.29296875, "percent": {"seed1": 0.390625, "seed10": 12.5}, "kind": "rotation"}
    (tmp_path / "m" / "one.json").write_text(json.dumps(one))
    assert dict(flat_items(one)) == {
        "mean": 0.29296875,
        "percent.seed1": 0.390625,
        "percent.seed10": 12.5,
        "kind": "rotation",
    }
    assert metrics_text(tmp_path) == (
        "m/one.json\n"
        "  mean            0.293\n"
        "  percent.seed1   0.3906\n"
        "  percent.seed10  12.5\n"
        "  kind            rotation\n"
        "\n"
        "m/two.json: not written yet (dvc repro)"
    )


def test_the_default_pipelines_metrics_fit_120_columns(monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    result = invoke_command(["metrics"])
    assert result.exit_code == 0, result.output
    shown = json.loads((REPO_ROOT / "metrics" / "universality.json").read_text())
    assert f"{shown['mean_percent_universal']:.4g}" in result.output
    assert max(len(line) for line in result.output.splitlines()) <= 120
