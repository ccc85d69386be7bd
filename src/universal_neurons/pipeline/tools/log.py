"""Log the pipeline state as one MLflow run (MLFLOW_TRACKING_URI or ./mlruns.db).

The pipeline state -> one MLflow run; ``tracking/run.json`` says where it is. The last stage of
the pipeline (``stages/log.py``) runs this same command.

The store is ``MLFLOW_TRACKING_URI`` or ``mlruns.db`` at the repository root
(``outputs.tracking``). ``--if-missing`` (``ensure``) logs only when this store lacks the
run that ``tracking/run.json`` names, as in a fresh clone.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import click
import yaml

from universal_neurons.io import OutputError, read_json, write_json
from universal_neurons.outputs.tracking import (
    RunInputs,
    find_run,
    log_run,
    portable_record,
    project_root,
    record_dict,
    set_run_tag,
    tracking_uri,
)
from universal_neurons.pipeline.command import Command
from universal_neurons.pipeline.layout import Layout, model_name

if TYPE_CHECKING:
    from universal_neurons.config import Params

TABLE_STAGES = ("universality", "stats", "families")
"""Stages whose neuron tables the run keeps as artifacts (``tables/<stage>/``)."""


def logged_outputs(layout: Layout, outputs: Iterable[Path]) -> list[Path]:
    """Of the stages' ``outputs``, those a run keeps (what ``artifacts`` reads): the models, the
    report, every file under metrics/ and results/, and the neuron tables; sorted, each once."""
    tables = {layout.stage_dir(stage) for stage in TABLE_STAGES}
    kept = {
        path
        for path in outputs
        if path in tables
        or path in (layout.models, layout.report)
        or path.parent in (layout.metrics, layout.results)
    }
    return sorted(kept)


def artifacts(layout: Layout, seeds: list[int]) -> list[tuple[Path, str]]:
    """``(path, artifact folder)`` of everything a run keeps (missing ones are skipped later):
    the report, the metrics and results, the parameter file and DVC files, each model's training curve
    and summary, and the neuron tables."""
    items: list[tuple[Path, str]] = [(layout.report, "report")]
    for folder in (layout.metrics, layout.results):
        if folder.is_dir():
            items += [(path, folder.name) for path in sorted(folder.iterdir()) if path.is_file()]
    items += [(path, "dvc") for path in (layout.params, *layout.dvc_files)]
    for seed in seeds:
        for name in ("curve.csv", "training.json"):
            items.append((layout.model(seed) / name, f"training/{model_name(seed)}"))
    for stage in TABLE_STAGES:
        directory = layout.stage_dir(stage)
        if directory.is_dir():
            items += [(path, f"tables/{stage}") for path in sorted(directory.glob("*.parquet"))]
    return items


def run_inputs(layout: Layout, seeds: list[int]) -> RunInputs:
    """What the run of the pipeline state in ``layout`` logs."""
    return RunInputs(
        repository=layout.root,
        metrics_dir=layout.metrics,
        results_dir=layout.results,
        lock=layout.dvc_files[1],
        curves={model_name(seed): layout.model(seed) / "curve.csv" for seed in seeds},
        emergence_curve=layout.metric("emergence.csv"),
        artifacts=artifacts(layout, seeds),
    )


def log_state(
    params: Params, layout: Layout, write_record: bool = True, uri: str | None = None
) -> dict:
    """Log params, metrics, curves, tags and artifacts as one MLflow run into the store ``uri``
    (default: ``tracking_uri``); return its record."""
    raw = yaml.safe_load(Path(layout.params).read_text(encoding="utf-8"))  # the file's own keys
    own_output = str(Layout().run_record)  # as dvc.lock names it
    uri = uri or tracking_uri(project_root(layout.root))
    record = log_run(
        run_inputs(layout, params.train.seeds), raw, uri=uri, exclude_outputs=[own_output]
    )
    portable = portable_record(record_dict(record), project_root(layout.root))
    if write_record:
        write_json(layout.run_record, portable)
    return portable


def ensure(params: Params, layout: Layout, uri: str | None = None) -> dict:
    """Make sure the current store holds a run of this state; log one if it does not.

    A fresh clone restores ``tracking/run.json`` from git, so ``dvc repro`` finds the ``log``
    stage up to date although this machine's MLflow store has never seen that run. This logs
    the state into the local store, tagged ``log.stands_for_run`` = the recorded run id,
    without rewriting ``tracking/run.json`` (which would make ``dvc status`` report a change).
    Calling it again finds that run and logs nothing. Returns the record and ``logged``.
    ``uri``: the store (default: ``tracking_uri``).
    """
    record_path = layout.run_record
    recorded = read_json(record_path)["run_id"] if record_path.is_file() else None
    uri = uri or tracking_uri(project_root(layout.root))
    if recorded is not None:
        existing = find_run(uri, recorded)
        if existing is not None:
            return {**existing, "logged": False}
    record = log_state(params, layout, write_record=recorded is None, uri=uri)
    if recorded is not None:
        set_run_tag(uri, record["run_id"], "log.stands_for_run", recorded)
    return {**record, "logged": True}


STORE_FULL_TEXTS = ("database or disk is full", "disk I/O error", "No space left", "too large")
"""How SQLite (through MLflow and SQLAlchemy) and the artifact copy say a write failed for
lack of space (``ulimit -f`` makes SQLite's writes fail as "disk I/O error")."""


def _out_of_space(exc: Exception) -> bool:
    full = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
    return (isinstance(exc, OSError) and exc.errno in full) or any(
        text in str(exc) for text in STORE_FULL_TEXTS
    )


def _store_file(uri: str) -> Path | None:
    """The SQLite file of the store ``uri`` (None: another kind of store)."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def run(params: Params, layout: Layout, if_missing: bool = False) -> dict:
    """Log the pipeline state (``if_missing``: only if this store lacks its run). A write
    that fails for lack of space is one line; a store this call created is removed then."""
    uri = tracking_uri(project_root(layout.root))  # resolved and checked once
    store = _store_file(uri)
    existed = store is None or store.exists()
    try:
        return ensure(params, layout, uri) if if_missing else log_state(params, layout, uri=uri)
    except Exception as exc:
        if not _out_of_space(exc):
            raise
        if not existed:
            store.unlink(missing_ok=True)
        reason = str(exc).strip().splitlines()[0][:200]
        raise OutputError(
            f"log: MLflow could not write the run ({reason}): the disk is full or a file size "
            "limit (ulimit -f) was reached; free space and rerun (tracking/run.json is unchanged)"
        ) from None


COMMAND = Command(
    name="log",
    run=run,
    options=[
        click.option(
            "--if-missing",
            is_flag=True,
            help="Only log if this store lacks the run named in tracking/run.json "
            "(e.g. a fresh clone).",
        )
    ],
)
