"""One MLflow run per pipeline state: params, metrics, curves, tags and artifacts, logged from one place.

The ``log`` stage (last in ``dvc.yaml``) calls :func:`log_run` with the paths of what the stages
left in the workspace (``RunInputs``: ``metrics/*.json``, ``models/seed{s}/curve.csv``,
``dvc.lock``, the report and the neuron tables) and the parsed ``params.yaml``, and writes one
MLflow run:

- params: every leaf of ``params.yaml`` under its dotted key (``train.learning_rate``); strings
  verbatim, everything else as JSON (``0.003``, ``[1, 2, 3]``, ``true``).
- metrics: every number of ``metrics/<name>.json`` under ``<name>.<dotted.key>`` with the same
  value; a list of numbers becomes a step series with step = list index (per-layer values:
  step = layer); ``null`` is skipped; booleans are 1/0.
- training curves: ``curve.seed{s}.train_loss`` / ``curve.seed{s}.heldout_loss``, step = the
  training step of ``curve.csv`` (held-out loss only at evaluation steps).
- tags: ``git.commit`` (also MLflow's ``mlflow.source.git.commit``), ``git.dirty``,
  ``dvc.exp_name`` / ``dvc.exp_baseline_rev`` inside ``dvc exp run``, and ``dvc.out.<path>`` =
  the hash ``dvc.lock`` records for every stage output.
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

import csv
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from universal_neurons.errors import UserError
from universal_neurons.outputs import tracking_ui

DEFAULT_EXPERIMENT = "universal-neurons"
STORE_FILE = "mlruns.db"
ARTIFACTS_DIR = "mlartifacts"
CURVE_PREFIX = "curve"

_BAD_KEY_CHARS = re.compile(r"[^/\w.\- ]")
_EXPERIMENT_TEMP_DIR = f"{os.sep}.dvc{os.sep}tmp{os.sep}exps{os.sep}"


class TrackingError(UserError):
    """A run that could not be logged (store unreachable, unreadable input)."""


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
    return default_tracking_uri(root or project_root())


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
        _check_store_path(uri, Path(uri.split(":///", 1)[-1]).expanduser().parent)
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


# ----------------------------------------------------------------------------- flattening


def metric_key(key: str) -> str:
    """``key`` with the characters MLflow refuses in names replaced by ``_``."""
    return _BAD_KEY_CHARS.sub("_", key)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def flatten_metrics(
    data: Any, prefix: str = ""
) -> tuple[dict[str, float], dict[str, list[tuple[int, float]]]]:
    """Numbers of a JSON document under dotted keys.

    Returns ``(scalars, series)``: ``scalars[key] = value``; ``series[key] = [(step, value)]``
    for every list of numbers (step = list index; ``null`` entries skipped). Booleans become
    1.0/0.0; ``null`` and strings are skipped; a list holding mappings or lists is flattened
    with the index as a key part.
    """
    scalars: dict[str, float] = {}
    series: dict[str, list[tuple[int, float]]] = {}

    def walk(value: Any, key: str) -> None:
        if isinstance(value, dict):
            for name, item in value.items():
                walk(item, f"{key}.{name}" if key else str(name))
        elif isinstance(value, list):
            if all(item is None or _is_number(item) or isinstance(item, bool) for item in value):
                points = [(i, float(item)) for i, item in enumerate(value) if item is not None]
                if points:
                    series[metric_key(key)] = points
            else:
                for i, item in enumerate(value):
                    walk(item, f"{key}.{i}")
        elif isinstance(value, bool) or _is_number(value):
            scalars[metric_key(key)] = float(value)

    walk(data, prefix)
    return scalars, series


def param_value(value: Any) -> str:
    """A parameter as MLflow stores it: strings verbatim, everything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def flatten_params(raw: Any, prefix: str = "") -> dict[str, str]:
    """Every leaf of a parameter mapping under its dotted key (lists are leaves)."""
    flat: dict[str, str] = {}
    if isinstance(raw, dict):
        for name, value in raw.items():
            key = f"{prefix}.{name}" if prefix else str(name)
            if isinstance(value, dict) and value:
                flat.update(flatten_params(value, key))
            else:
                flat[metric_key(key)] = param_value(value)
    elif prefix:
        flat[metric_key(prefix)] = param_value(raw)
    return flat


# ----------------------------------------------------------------------------- inputs


DETAIL_PREFIX = "detail"
"""MLflow key prefix of the whole results documents (``detail.stats.models.seed1.skew...``), so
that the headline metrics (``universality.mean_percent_universal``) stand apart."""


def read_metrics(
    metrics_dir: Path, prefix: str = ""
) -> tuple[dict[str, float], dict[str, list[tuple[int, float]]]]:
    """Flatten every ``<metrics_dir>/<name>.json`` under the key prefix ``[prefix.]<name>``
    (a missing folder gives nothing)."""
    scalars: dict[str, float] = {}
    series: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(Path(metrics_dir).glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise TrackingError(f"{path}: not valid JSON ({exc})") from None
        file_scalars, file_series = flatten_metrics(
            data, f"{prefix}.{path.stem}" if prefix else path.stem
        )
        scalars.update(file_scalars)
        series.update(file_series)
    return scalars, series


def read_emergence(path: Path) -> dict[str, list[tuple[int, float]]]:
    """``metrics/emergence.csv`` -> one series per column with ``step`` = training tokens:
    ``emergence.<column>`` (e.g. ``emergence.mean_percent_universal``); {} if absent."""
    path = Path(path)
    if not path.is_file():
        return {}
    series: dict[str, list[tuple[int, float]]] = {}
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            step = int(float(row["tokens"]))
            for column, cell in row.items():
                if column != "tokens" and (cell or "").strip():
                    series.setdefault(metric_key(f"emergence.{column}"), []).append(
                        (step, float(cell))
                    )
    return series


def read_curve(path: Path) -> dict[str, list[tuple[int, float]]]:
    """``curve.csv`` -> ``{"train_loss": [(step, value)], "heldout_loss": [...]}`` (empty cells skipped)."""
    columns: dict[str, list[tuple[int, float]]] = {"train_loss": [], "heldout_loss": []}
    with Path(path).open(newline="") as handle:
        for row in csv.DictReader(handle):
            step = int(row["step"])
            for column, points in columns.items():
                cell = (row.get(column) or "").strip()
                if cell:
                    points.append((step, float(cell)))
    return columns


def training_curves(curves: Mapping[str, Path]) -> dict[str, list[tuple[int, float]]]:
    """Loss curves of every model (``{name: curve.csv}``) whose file exists:
    ``curve.{name}.<column>``."""
    series: dict[str, list[tuple[int, float]]] = {}
    for name, path in curves.items():
        if Path(path).is_file():
            for column, points in read_curve(path).items():
                if points:
                    series[f"{CURVE_PREFIX}.{name}.{column}"] = points
    return series


def lock_hashes(lock_path: Path) -> dict[str, str]:
    """``{output path: hash}`` of every stage output recorded in ``dvc.lock``."""
    lock_path = Path(lock_path)
    if not lock_path.is_file():
        return {}
    lock = yaml.safe_load(lock_path.read_text(encoding="utf-8")) or {}
    hashes: dict[str, str] = {}
    for stage in (lock.get("stages") or {}).values():
        for out in stage.get("outs") or []:
            digest = out.get("md5") or out.get("etag") or out.get("checksum")
            if out.get("path") and digest:
                hashes[out["path"]] = str(digest)
    return hashes


def _git(root: Path, *args: str) -> str | None:
    try:
        result = subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, check=True, timeout=60
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip()


def run_tags(repository: Path, lock: dict[str, str], exclude: Iterable[str] = ()) -> dict[str, str]:
    """Tags of the run: git commit, DVC experiment, output hashes (minus ``exclude``)."""
    tags: dict[str, str] = {}
    commit = _git(repository, "rev-parse", "HEAD")
    if commit:
        tags["git.commit"] = commit
        tags["mlflow.source.git.commit"] = commit
        status = _git(repository, "status", "--porcelain", "--untracked-files=no")
        tags["git.dirty"] = "true" if status else "false"
    exp_name = os.environ.get("DVC_EXP_NAME")
    tags["dvc.run"] = "exp" if exp_name else "repro"
    if exp_name:
        tags["dvc.exp_name"] = exp_name
    baseline = os.environ.get("DVC_EXP_BASELINE_REV")
    if baseline:
        tags["dvc.exp_baseline_rev"] = baseline
    skipped = {str(Path(path)) for path in exclude}
    for path, digest in sorted(lock.items()):
        if str(Path(path)) not in skipped:
            tags[metric_key(f"dvc.out.{path}")] = digest
    return tags


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
    metrics = [Metric(key, value, now, 0) for key, value in sorted(scalars.items())]
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


def _create_run(client: Any, experiment: str, uri: str, run_name: str) -> tuple[str, str]:
    """``(experiment id, run id)`` of a new run of ``experiment`` in the store ``uri``."""
    try:
        experiment_id = _experiment_id(client, experiment, uri)
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
    """The ``mlflow server`` command line that serves the UI of store ``uri``."""
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri]
    command += ["--host", host, "--port", str(port), "--workers", "1"]
    if uri.startswith("sqlite:"):
        command += ["--artifacts-destination", str(Path(root) / ARTIFACTS_DIR)]
    return command


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
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise UserError(
                f"--port: cannot listen on {host}:{port} ({exc}); pick another port"
            ) from None
    address = tracking_ui.local_experiment_url(f"http://{host}:{port}", uri, experiment_name())
    echo(f"MLflow UI: {address}  (store: {uri}; Ctrl+C stops it)")
    process = subprocess.Popen(ui_command(host, port, uri, root), cwd=root)
    try:
        status = process.wait()
    except KeyboardInterrupt:
        process.terminate()
        return process.wait(timeout=30)
    if status != 0:
        raise TrackingError(f"mlflow server exited with status {status}")
    return status
