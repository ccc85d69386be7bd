"""What one MLflow run holds, read from the files the stages left: metrics, params, curves, tags.

``outputs.tracking.log_run`` writes them to the store:

- params: every leaf of ``params.yaml`` under its dotted key (``train.learning_rate``); strings
  verbatim, everything else as JSON (``0.003``, ``[1, 2, 3]``, ``true``).
- metrics: every number of ``metrics/<name>.json`` under ``<name>.<dotted.key>`` with the same
  value, but for the % universal (``headline_scalars``): ``mean.percent_universal`` and
  ``<model>.percent_universal``, to 3 significant digits (exact under ``detail.``); a list of numbers becomes a step series with step = list index (per-layer values:
  step = layer); ``null`` is skipped; booleans are 1/0.
- training curves: ``curve.seed{s}.train_loss`` / ``curve.seed{s}.heldout_loss``, step = the
  training step of ``curve.csv`` (held-out loss only at evaluation steps).
- tags: ``git.commit`` (also MLflow's ``mlflow.source.git.commit``), ``git.dirty``,
  ``dvc.exp_name`` / ``dvc.exp_baseline_rev`` inside ``dvc exp run``, and ``dvc.out.<path>`` =
  the hash ``dvc.lock`` records for every stage output.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from universal_neurons.errors import UserError

CURVE_PREFIX = "curve"

_BAD_KEY_CHARS = re.compile(r"[^/\w.\- ]")


class TrackingError(UserError):
    """A run that could not be logged (store unreachable, unreadable input)."""


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


HEADLINE_NAMES = (
    (re.compile(r"universality\.mean_percent_universal"), "mean.percent_universal"),
    (re.compile(r"universality\.percent_universal\.([^.]+)"), r"\1.percent_universal"),
)
"""MLflow names of the headline metrics whose distinguishing part would sit at the end of a long
key, past what a runs-table column shows (``universality.percent_universal.seed1``): which
model first (``seed1.percent_universal``, ``mean.percent_universal``)."""

PERCENT_DIGITS = 3
"""Significant digits of a headline % universal: ``0.293`` reads as a percentage, not as the
fraction ``0.29296875`` might."""


def headline_name(key: str) -> str:
    """The MLflow name of the headline metric ``key`` (``HEADLINE_NAMES``; else ``key``)."""
    for pattern, name in HEADLINE_NAMES:
        if pattern.fullmatch(key):
            return pattern.sub(name, key)
    return key


def headline_scalars(scalars: Mapping[str, float]) -> dict[str, float]:
    """``read_metrics``' headline numbers under their MLflow names (``headline_name``), each
    ``*.percent_universal`` to ``PERCENT_DIGITS`` significant digits."""
    named = {headline_name(key): value for key, value in scalars.items()}
    return {
        key: float(f"{value:.{PERCENT_DIGITS}g}") if key.endswith(".percent_universal") else value
        for key, value in named.items()
    }


DETAIL_PREFIX = "detail"
"""MLflow key prefix of the whole results documents (``detail.stats.models.seed1.skew...``), so
that the headline metrics (``mean.percent_universal``) stand apart."""


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
