"""One MLflow run per pipeline state, logged from one place; the store it goes to and its UI.

The ``log`` stage (last in ``dvc.yaml``) calls :func:`log_run` with the paths of what the stages
left in the workspace (``RunInputs``: ``metrics/*.json``, ``models/seed{s}/curve.csv``,
``dvc.lock``, the report and the neuron tables) and the parsed ``params.yaml``, and writes one
MLflow run: params, metrics, training curves and tags as ``outputs.run_contents`` reads them,
and

- artifacts: ``report/``, ``metrics/``, ``params.yaml`` + ``dvc.lock`` (under ``dvc/``),
  training curves (``training/seed{s}/``) and the neuron tables (``tables/<stage>/``).
- the run's name: the DVC experiment, else ``repro-<commit>`` (``-dirty`` when files other
  than the pipeline's outputs differ from the commit); the experiment's runs table shows the
  headline metrics as columns (``outputs.tracking_ui``), and ``serve_ui`` prints its address.

The store: ``MLFLOW_TRACKING_URI`` when set, else a SQLite store at the repository root
(``sqlite:///<root>/mlruns.db``, artifacts in ``<root>/mlartifacts``). The root is anchored to
the *parent* repository even inside ``dvc exp run --temp`` / ``--queue``, which run in a copy
under ``.dvc/tmp/exps/``: DVC passes the parent root to every stage as ``DVC_ROOT``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from universal_neurons.errors import UserError
from universal_neurons.outputs import mlflow_app, tracking_ui
from universal_neurons.outputs.run_contents import (
    DETAIL_PREFIX,
    TrackingError,
    flatten_params,
    headline_scalars,
    lock_hashes,
    read_emergence,
    read_metrics,
    run_tags,
    training_curves,
)

DEFAULT_EXPERIMENT = "universal-neurons"
STORE_FILE = "mlruns.db"
ARTIFACTS_DIR = "mlartifacts"

_EXPERIMENT_TEMP_DIR = f"{os.sep}.dvc{os.sep}tmp{os.sep}exps{os.sep}"


# ----------------------------------------------------------------------------- the store


def project_root(cwd: str | Path | None = None) -> Path:
    """The repository whose store every run of this project goes to.

    1. ``DVC_ROOT``: DVC sets it for every stage command, and inside ``dvc exp run``
       (workspace, ``--temp``, ``--queue``) it names the parent repository, not the temporary
       copy under ``.dvc/tmp/exps/``;
    2. a working directory under ``<root>/.dvc/tmp/exps/``: ``<root>``;
    3. the nearest directory upwards that holds a ``.dvc`` directory;
    4. the working directory itself.
    """
    env_root = os.environ.get("DVC_ROOT")
    if env_root and Path(env_root).is_dir():
        return Path(env_root).resolve()
    here = Path(cwd or Path.cwd()).resolve()
    text = str(here) + os.sep
    if _EXPERIMENT_TEMP_DIR in text:
        return Path(text.split(_EXPERIMENT_TEMP_DIR, 1)[0])
    for candidate in (here, *here.parents):
        if (candidate / ".dvc").is_dir():
            return candidate
    return here


def default_tracking_uri(root: Path) -> str:
    """``sqlite:///<root>/mlruns.db``: the project's own store."""
    return f"sqlite:///{(Path(root) / STORE_FILE).resolve()}"


def tracking_uri(root: Path | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` when set (checked to be usable: ``check_tracking_uri``), else
    the SQLite store at the repository root."""
    configured = os.environ.get("MLFLOW_TRACKING_URI")
    if configured:
        return check_tracking_uri(configured)
    uri = default_tracking_uri(root or project_root())
    check_sqlite_file(Path(uri.removeprefix("sqlite:///")))
    return uri


URI_TIMEOUT_S = 5.0
"""How long a tracking server may take to answer before the URI is refused."""
_DATABASE_SCHEMES = ("postgresql", "mysql", "mssql", "databricks", "databricks-uc", "uc")


def _uri_error(uri: str, problem: str) -> TrackingError:
    return TrackingError(
        f"MLFLOW_TRACKING_URI={uri}: {problem}; set it to a usable store or unset it "
        "(the default is the project's own mlruns.db)"
    )


def _check_store_path(uri: str, path: Path) -> None:
    """A local store (a folder, or a SQLite file's folder) can be created at ``path``: no
    regular file stands where a folder must be."""
    for ancestor in [path, *path.parents]:
        if ancestor.exists():
            if not ancestor.is_dir():
                raise _uri_error(uri, f"{ancestor} is a file, not a folder")
            return


def _check_server(uri: str, timeout_s: float) -> None:
    """An MLflow server at ``uri`` answers its ``/health`` within ``timeout_s`` seconds."""
    import urllib.error
    import urllib.request

    health = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(health, timeout=timeout_s) as response:  # noqa: S310
            response.read(64)
    except urllib.error.HTTPError as exc:
        raise _uri_error(uri, f"the server answered {health} with HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise _uri_error(
            uri, f"no MLflow server answers within {timeout_s:g} s ({reason})"
        ) from None


SQLITE_HEADER = b"SQLite format 3\x00"


def check_sqlite_file(database: Path) -> None:
    """A SQLite store's file, where it exists, is a SQLite database (not, say, a file that
    took its name): else one line naming it, instead of sqlite3's traceback."""
    if not database.is_file() or database.stat().st_size == 0:
        return
    with database.open("rb") as handle:
        header = handle.read(len(SQLITE_HEADER))
    if header != SQLITE_HEADER:
        try:
            shown = database.resolve().relative_to(Path.cwd().resolve())
        except ValueError:
            shown = database
        raise TrackingError(
            f"{shown}: not a SQLite database, so not an MLflow store; move it away (the next "
            "run starts a new store there) or set MLFLOW_TRACKING_URI to another store"
        )


def check_tracking_uri(uri: str, timeout_s: float = URI_TIMEOUT_S) -> str:
    """``uri`` unchanged when MLflow can use it: a local path or ``file:`` URI whose folder
    can exist, a ``sqlite:///`` file whose folder can exist, an ``http(s)://`` server that
    answers within ``timeout_s``, or a database scheme MLflow knows; else one line naming it."""
    from urllib.parse import urlparse

    parsed = urlparse(uri)
    scheme = parsed.scheme.lower()
    if scheme in ("", "file"):
        _check_store_path(uri, Path(parsed.path if scheme else uri).expanduser())
    elif scheme == "sqlite":
        database = Path(uri.split(":///", 1)[-1]).expanduser()
        _check_store_path(uri, database.parent)
        check_sqlite_file(database)
    elif scheme in ("http", "https"):
        _check_server(uri, timeout_s)
    elif not scheme.startswith(_DATABASE_SCHEMES):
        raise _uri_error(
            uri,
            f"unknown scheme {scheme!r} (expected a path, file:, sqlite:///, http(s):// "
            "or a database URI)",
        )
    return uri


def experiment_name() -> str:
    """``MLFLOW_EXPERIMENT_NAME`` when set, else ``universal-neurons``."""
    return os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT


def artifact_location(uri: str) -> str | None:
    """Where a new experiment keeps its artifacts: ``mlartifacts/`` beside a SQLite file.

    Other stores (an MLflow server, a database server) decide for themselves (``None``).
    """
    if uri.startswith("sqlite:///"):
        database = Path(
            uri.removeprefix("sqlite:///")
        )  # relative paths: from the cwd, as SQLite does
        return (database.resolve().parent / ARTIFACTS_DIR).as_uri()
    return None


# ----------------------------------------------------------------------------- logging


@dataclass(frozen=True)
class RunRecord:
    """What ``log`` writes to ``tracking/run.json``: where to find the run again."""

    run_id: str
    run_name: str
    experiment_id: str
    experiment_name: str
    tracking_uri: str
    artifact_uri: str


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _experiment_id(client: Any, name: str, uri: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location(uri))
    except Exception:  # created by a concurrent run in the meantime
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


@dataclass(frozen=True)
class RunInputs:
    """What one run logs, by path (missing files are skipped).

    ``repository``: the git work tree (commit and dirty tags); ``metrics_dir``: every
    ``*.json`` in it (the headline metrics); ``results_dir``: every ``*.json`` in it, under
    ``DETAIL_PREFIX``; ``lock``: ``dvc.lock`` (output hashes as tags); ``curves``: per model,
    its ``curve.csv``; ``emergence_curve``: ``metrics/emergence.csv`` (series with step =
    training tokens); ``artifacts``: ``(path, artifact folder)``, a file or a directory.
    """

    repository: Path
    metrics_dir: Path
    results_dir: Path
    lock: Path
    curves: Mapping[str, Path]
    emergence_curve: Path
    artifacts: Sequence[tuple[Path, str]]


def _run_name(repository: Path, tags: Mapping[str, str], outputs: Iterable[str]) -> str:
    """The DVC experiment's name inside ``dvc exp run``, else ``repro-<commit>`` (``-dirty``:
    files other than the pipeline's ``outputs`` differ from that commit)."""
    commit = tags.get("git.commit")
    dirty = bool(commit) and bool(tracking_ui.changed_inputs(repository, outputs))
    return tracking_ui.run_name(os.environ.get("DVC_EXP_NAME"), commit, dirty)


def _log_contents(
    client: Any,
    run_id: str,
    values: tuple[dict[str, float], dict[str, list[tuple[int, float]]]],
    params: dict[str, str],
    tags: dict[str, str],
    artifacts: Sequence[tuple[Path, str]],
) -> None:
    """Metrics (``values``: scalars at step 0, series by step), params, tags and artifacts."""
    from mlflow.entities import Metric, Param, RunTag

    scalars, series = values
    now = int(time.time() * 1000)
    order = tracking_ui.logging_order(scalars)  # headline first: the compare page's plot
    metrics = [Metric(key, scalars[key], now, 0) for key in order]
    for key, points in sorted(series.items()):
        metrics += [Metric(key, value, now, step) for step, value in points]
    for chunk in _chunks(metrics, 1000):
        client.log_batch(run_id, metrics=chunk)
    for chunk in _chunks([Param(k, v) for k, v in sorted(params.items())], 100):
        client.log_batch(run_id, params=chunk)
    for chunk in _chunks([RunTag(k, v) for k, v in sorted(tags.items())], 100):
        client.log_batch(run_id, tags=chunk)
    for path, where in artifacts:
        if path.is_dir():
            client.log_artifacts(run_id, str(path), where)
        else:
            client.log_artifact(run_id, str(path), where)


def relocate_artifacts(uri: str, experiment_id: str) -> None:
    """Point the experiment (and its runs) at the ``mlartifacts/`` beside its SQLite store.

    MLflow records an experiment's artifact location as an absolute ``file://`` URI; a store
    copied or moved with its repository still names the original tree, and a run logged in
    the copy would write its artifacts there. Called before every run: a location that is
    not the one beside the store now (and was one beside a store, ``.../mlartifacts``) is
    replaced, and every run's artifact URI under it is moved along (the artifacts came with
    the copy). Other stores and locations the user chose are left alone.
    """
    import sqlite3

    wanted = artifact_location(uri)
    if wanted is None:
        return
    database = Path(uri.removeprefix("sqlite:///")).resolve()
    with contextlib.closing(sqlite3.connect(database)) as connection, connection:
        row = connection.execute(
            "SELECT artifact_location FROM experiments WHERE experiment_id = ?",
            (int(experiment_id),),
        ).fetchone()
        old = row[0] if row else None
        if not old or old == wanted or not old.rstrip("/").endswith("/" + ARTIFACTS_DIR):
            return
        connection.execute(
            "UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?",
            (wanted, int(experiment_id)),
        )
        connection.execute(
            "UPDATE runs SET artifact_uri = ? || substr(artifact_uri, ?) "
            "WHERE experiment_id = ? AND substr(artifact_uri, 1, ?) = ?",
            (wanted, len(old) + 1, int(experiment_id), len(old) + 1, old + "/"),
        )


def _create_run(client: Any, experiment: str, uri: str, run_name: str) -> tuple[str, str]:
    """``(experiment id, run id)`` of a new run of ``experiment`` in the store ``uri`` (its
    artifacts beside the store, ``relocate_artifacts``)."""
    try:
        experiment_id = _experiment_id(client, experiment, uri)
        relocate_artifacts(uri, experiment_id)
        return experiment_id, client.create_run(experiment_id, run_name=run_name).info.run_id
    except Exception as exc:
        raise TrackingError(f"MLflow store {uri}: cannot create a run ({exc})") from exc


def log_run(
    inputs: RunInputs,
    raw_params: dict,
    *,
    uri: str | None = None,
    experiment: str | None = None,
    exclude_outputs: Iterable[str] = (),
) -> RunRecord:
    """Log the pipeline state of ``inputs`` as one MLflow run; return where it is.

    ``raw_params``: the parsed ``params.yaml``; ``exclude_outputs``: outputs of ``dvc.lock``
    not to tag (the log stage's own).
    """
    from mlflow.tracking import MlflowClient

    uri = uri or tracking_uri()
    name = experiment or experiment_name()
    scalars, series = read_metrics(inputs.metrics_dir)
    scalars = headline_scalars(scalars)
    detail_scalars, detail_series = read_metrics(inputs.results_dir, DETAIL_PREFIX)
    scalars.update(detail_scalars)
    series.update(detail_series)
    series.update(training_curves(inputs.curves))
    series.update(read_emergence(inputs.emergence_curve))
    repository = Path(inputs.repository).resolve()
    lock = lock_hashes(inputs.lock)
    tags = run_tags(repository, lock, exclude_outputs)
    artifacts = [(Path(path).resolve(), where) for path, where in inputs.artifacts]
    params = flatten_params(raw_params)
    run_name = _run_name(repository, tags, [*lock, *exclude_outputs])
    client = MlflowClient(tracking_uri=uri)
    experiment_id, run_id = _create_run(client, name, uri, run_name)
    try:
        existing = [(path, where) for path, where in artifacts if path.exists()]
        _log_contents(client, run_id, (scalars, series), params, tags, existing)
        tracking_ui.publish_view(client, experiment_id, scalars)  # the runs table's columns
    except Exception as exc:
        client.set_terminated(run_id, "FAILED")
        raise TrackingError(f"MLflow run {run_id} in {uri}: logging failed ({exc})") from exc
    client.set_terminated(run_id, "FINISHED")
    return RunRecord(
        run_id=run_id,
        run_name=run_name,
        experiment_id=experiment_id,
        experiment_name=name,
        tracking_uri=uri,
        artifact_uri=client.get_run(run_id).info.artifact_uri,
    )


def find_run(uri: str, run_id: str) -> dict[str, str] | None:
    """The run ``run_id`` in the store ``uri``, or the run logged there in its place
    (tag ``log.stands_for_run``); None if neither exists."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    try:
        run = client.get_run(run_id)
    except MlflowException:
        experiment = client.get_experiment_by_name(experiment_name())
        if experiment is None:
            return None
        runs = client.search_runs(
            [experiment.experiment_id], filter_string=f"tags.`log.stands_for_run` = '{run_id}'"
        )
        if not runs:
            return None
        run = runs[0]
    return {"run_id": run.info.run_id, "run_name": run.info.run_name, "tracking_uri": uri}


def set_run_tag(uri: str, run_id: str, key: str, value: str) -> None:
    """Set one tag on a run."""
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri=uri).set_tag(run_id, key, value)


def record_dict(record: RunRecord) -> dict[str, str]:
    """The run record as a JSON-ready mapping."""
    return asdict(record)


def portable_record(record: Mapping[str, str], root: Path) -> dict[str, str]:
    """``record`` with every location under the repository ``root`` written relative to it
    (``sqlite:///mlruns.db``, ``mlartifacts/<run>/artifacts``), so that the committed
    ``tracking/run.json`` names no path of the machine that logged the run. A server's
    address (``http://...``) stays as it is."""
    base = str(Path(root).resolve()).rstrip("/")
    prefixes = {f"sqlite:///{base}/": "sqlite:///", f"file://{base}/": ""}
    portable = {}
    for key, value in record.items():
        for prefix, relative in prefixes.items():
            if isinstance(value, str) and value.startswith(prefix):
                value = relative + value.removeprefix(prefix)
        portable[key] = value
    return portable


# ----------------------------------------------------------------------------- the UI


def ui_command(host: str, port: int, uri: str, root: Path) -> list[str]:
    """The ``mlflow server`` command line that serves the UI of store ``uri``: the project's
    app (classic-ML view, ``outputs.mlflow_app``) when installed, else MLflow's own."""
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri]
    if mlflow_app.app_installed():
        command += ["--app-name", mlflow_app.APP_NAME]
    command += ["--host", host, "--port", str(port), "--workers", "1"]
    if uri.startswith("sqlite:"):
        command += ["--artifacts-destination", str(Path(root) / ARTIFACTS_DIR)]
    return command


def check_listen_address(host: str, port: int) -> None:
    """Stop unless the UI can listen on ``host:port``: a port of 1 to 65535 (0 would let the
    system pick one the printed address could not name), a host this machine has (IPv4 or
    IPv6), a port that is free; the message names the option at fault."""
    if not 1 <= port <= 65535:
        raise UserError(f"--port: expected a port from 1 to 65535, got {port}")
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except (socket.gaierror, UnicodeError) as exc:
        raise UserError(f"--host: {host!r} is not an address of this machine ({exc})") from None
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                raise UserError(
                    f"--port: cannot listen on {host}:{port} ({exc}); pick another port"
                ) from None
            raise UserError(f"--host: cannot listen on {host} ({exc})") from None


def serve_ui(
    host: str, port: int, echo: Callable[[str], None] = print, root: Path | None = None
) -> int:
    """Serve the MLflow UI of the store of the project at ``root`` (default: found from the
    working directory, ``project_root``) on ``host:port`` until interrupted.

    When ``MLFLOW_TRACKING_URI`` names a server (http/https), that server is the UI: its
    address is printed and nothing is started.
    """
    root = project_root(root)
    uri = tracking_uri(root)
    if uri.startswith(("http://", "https://")):
        address = tracking_ui.server_experiment_url(uri, experiment_name())
        echo(f"MLflow UI: {address} (MLFLOW_TRACKING_URI names a running server)")
        return 0
    check_listen_address(host, port)
    shown_host = f"[{host}]" if ":" in host else host
    address = tracking_ui.local_experiment_url(
        f"http://{shown_host}:{port}", uri, experiment_name()
    )
    echo(f"MLflow UI: {address}  (store: {uri}; Ctrl+C stops it)")
    if not mlflow_app.app_installed():
        echo("note: the UI's own links may open GenAI pages; `pip install -e .` fixes that")
    process = subprocess.Popen(ui_command(host, port, uri, root), cwd=root)
    try:
        status = process.wait()
    except KeyboardInterrupt:
        process.terminate()
        return process.wait(timeout=30)
    if status != 0:
        raise TrackingError(f"mlflow server exited with status {status}")
    return status
