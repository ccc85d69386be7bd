"""`universal-neurons exps`: the comparison it draws from `dvc exp show --json` (planted here
in DVC's shape; tests/test_tracking_pipeline.py reads a real one), and DVC's wide table."""

from __future__ import annotations

import copy
import re

import pytest
from text_tables import cells_by_row, text_tables

from universal_neurons.errors import UserError
from universal_neurons.outputs.text_table import TERMINAL_WIDTH
from universal_neurons.pipeline.tools.exps import comparison_table, exp_show_command

BASE_PARAMS = {
    "train": {"learning_rate": 0.01, "seeds": [1, 2]},
    "universality": {"threshold": 0.5},
}
BASE_METRICS = {
    "metrics/universality.json": {
        "mean_percent_universal": 1.5,
        "median_corr": 0.3152227,
        "median_baseline": 0.2161594,
        "percent_universal": {"seed1": 2.0, "seed2": 1.0},
    },
    "metrics/training.json": {"mean_heldout_loss": 3.782034},
    "metrics/families.json": {"unigram": 4, "alphabet": 1},
    "metrics/one_to_one.json": {"mean_percent_universal": 0.7, "available": True},
    "metrics/uncertainty.json": {"mean_percent_universal_lo": 1.0},
    "metrics/effects.json": {"roles_none": 3},
}


def _entry(rev: str, name: str | None, params: dict, metrics: dict) -> dict:
    """One row of `dvc exp show --json` (DVC 3): files as ``{path: {"data": ...}}``."""
    data = {
        "rev": rev,
        "params": {"params.yaml": {"data": params}},
        "metrics": {path: {"data": content} for path, content in metrics.items()},
        "deps": {},
        "outs": {},
    }
    return {"rev": rev, "name": name, "data": data, "error": None, "experiments": None}


def _changed(base: dict, **dotted) -> dict:
    """A deep copy of ``base`` with ``{"a__b": value}`` set at ``a.b``."""
    out = copy.deepcopy(base)
    for path, value in dotted.items():
        *parents, leaf = path.split("__")
        target = out
        for key in parents:
            target = target[key]
        target[leaf] = value
    return out


def _shown(experiments: list[tuple[str, dict, dict, str | None]]) -> list[dict]:
    """`dvc exp show --json` of a workspace, a ``main`` baseline and ``experiments`` (name,
    params, metrics, executor state) on it."""
    main = _entry("a" * 40, "main", BASE_PARAMS, BASE_METRICS)
    main["experiments"] = [
        {
            "name": name,
            "executor": None if state is None else {"state": state, "name": "dvc-task"},
            "revs": [_entry(f"{i:x}" * 40, name, params, metrics)],
        }
        for i, (name, params, metrics, state) in enumerate(experiments, start=1)
    ]
    return [_entry("workspace", None, BASE_PARAMS, BASE_METRICS), main]


def _number(cell: str) -> float:
    return float(cell.removesuffix("%"))


def test_comparison_shows_the_changed_params_and_the_headline_metrics_of_each_experiment():
    tau = _changed(BASE_METRICS["metrics/universality.json"], mean_percent_universal=2.25)
    tau_metrics = {**BASE_METRICS, "metrics/universality.json": tau}
    tau_metrics["metrics/effects.json"] = {"roles_none": 9}  # a detail metric: never shown
    tau_metrics["metrics/one_to_one.json"] = {"mean_percent_universal": 1.9, "available": True}
    lr_metrics = {
        **BASE_METRICS,
        "metrics/training.json": {"mean_heldout_loss": 3.782074},  # alike at 4 digits
        "metrics/families.json": {"unigram": 7, "alphabet": 1},  # changed: shown
    }
    text = comparison_table(
        _shown(
            [
                ("tau-0.4", _changed(BASE_PARAMS, universality__threshold=0.4), tau_metrics, None),
                ("lr-low", _changed(BASE_PARAMS, train__learning_rate=1e-3), lr_metrics, "success"),
                ("queued-one", _changed(BASE_PARAMS, train__seeds=[1, 3]), {}, "queued"),
            ]
        )
    )
    assert max(len(line) for line in text.splitlines()) <= TERMINAL_WIDTH
    (table,) = text_tables(text)
    assert table[0] == ["experiment", "workspace", "main", "tau-0.4", "lr-low", "queued-one"]
    cells = cells_by_row(text)
    assert cells["commit"] == {
        "workspace": "-", "main": "aaaaaaa", "tau-0.4": "1111111", "lr-low": "2222222",
        "queued-one": "3333333",
    }  # fmt: skip
    assert cells["state"]["queued-one"] == "queued" and cells["state"]["lr-low"] == "success"
    assert cells["state"]["main"] == "-"
    rows = [row[0] for row in table]
    params = rows[rows.index("params") + 1 : rows.index("metrics")]
    assert params == ["train.learning_rate", "train.seeds", "universality.threshold"]
    assert cells["universality.threshold"]["tau-0.4"] == "0.4"
    assert cells["train.learning_rate"]["lr-low"] == "0.001"
    assert cells["train.seeds"]["queued-one"] == "[1, 3]"
    assert cells["train.seeds"]["main"] == "[1, 2]"
    metrics = rows[rows.index("metrics") + 1 :]
    assert sorted(metrics) == sorted(
        (
            "mean_percent_universal", "median_corr", "median_baseline", "percent_universal.seed1",
            "percent_universal.seed2", "mean_heldout_loss", "unigram",
        )
    )  # fmt: skip
    expected = {
        ("mean_percent_universal", "main"): 1.5,
        ("mean_percent_universal", "tau-0.4"): 2.25,
        ("percent_universal.seed1", "lr-low"): 2.0,
        ("median_corr", "tau-0.4"): 0.3152227,
        ("mean_heldout_loss", "lr-low"): 3.782074,
        ("mean_heldout_loss", "workspace"): 3.782034,
        ("unigram", "lr-low"): 7,
        ("unigram", "main"): 4,
    }
    for (key, name), value in expected.items():
        cell = cells[key][name]
        assert _number(cell) == pytest.approx(value, rel=5e-4), (key, name, cell)
        assert cell.endswith("%") == ("percent" in key)
        if key != "mean_heldout_loss":
            assert len(cell.removesuffix("%").replace(".", "").lstrip("0")) <= 4  # 4 digits
    # a row shows 4 significant digits, more where 4 would show different values alike
    assert cells["mean_heldout_loss"]["main"] == "3.782"
    assert cells["mean_heldout_loss"]["lr-low"] == "3.7821"
    assert set(cells["median_corr"].values()) == {"0.3152", "-"}
    assert cells["median_corr"]["queued-one"] == "-"  # no metrics yet


def test_many_experiments_are_split_into_tables_that_fit_120_columns():
    names = [f"threshold-sweep-{i:02d}" for i in range(14)]
    shown = _shown(
        [(n, _changed(BASE_PARAMS, universality__threshold=0.3 + i / 100), BASE_METRICS, None)
         for i, n in enumerate(names)]
    )  # fmt: skip
    text = comparison_table(shown)
    assert max(len(line) for line in text.splitlines()) <= TERMINAL_WIDTH
    tables = text_tables(text)
    assert len(tables) > 1
    assert [name for table in tables for name in table[0][1:]] == ["workspace", "main", *names]
    assert all([row[0] for row in table] == [row[0] for row in tables[0]] for table in tables)
    thresholds = cells_by_row(text)["universality.threshold"]
    assert [_number(thresholds[n]) for n in names] == pytest.approx(
        [0.3 + i / 100 for i in range(14)]
    )
    assert "no experiments yet" not in text


def test_without_experiments_the_comparison_says_how_to_run_one():
    text = comparison_table(_shown([]))
    (table,) = text_tables(text)
    assert table[0] == ["experiment", "workspace", "main"]
    assert "params: none changed" in [row[0] for row in table]
    assert "no experiments yet: dvc exp run" in text
    empty = comparison_table([_entry("workspace", None, BASE_PARAMS, {})])  # before dvc repro
    assert "metrics: none yet" in empty.splitlines()
    with pytest.raises(UserError, match="exps: dvc exp show listed no commit"):
        comparison_table([])  # a repository without a commit


def test_wide_drops_hash_and_detail_columns_but_keeps_a_metric_named_with_its_file():
    """``--wide``/``--csv`` (DVC's own table) drop DVC's output-hash columns and the detail
    metrics, not a headline metric that DVC names with its file because another file has the
    same key (``mean_percent_universal``: universality.json and one_to_one.json)."""
    command = exp_show_command("csv")
    drop = re.compile(command[command.index("--drop") + 1])
    kept = [
        "metrics/universality.json:mean_percent_universal",
        "mean_percent_universal",
        "percent_universal.seed1",
        "universality.threshold",
        "train.learning_rate",
        "mean_heldout_loss",
    ]
    dropped = [
        "data/correlate",
        "models",
        "report",
        "metrics/effects_per_layer.csv",
        "metrics/one_to_one.json:mean_percent_universal",
        "seed1.percent_universal_hi",
        "roles_none",
    ]
    assert [column for column in kept if drop.match(column)] == []
    assert [column for column in dropped if not drop.match(column)] == []
