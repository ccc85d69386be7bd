"""How the MLflow UI (3.17) presents the project's runs: the page it opens, the columns, the names.

What decides the page (MLflow 3.17.2's UI bundle, ``mlflow/server/js``; see docs/tracking.md):

- The experiment page without a tab (``#/experiments/<id>``) redirects by the browser's
  *workflow type*, not by the experiment: ``genai`` (the default of a fresh browser, kept in
  ``localStorage['mlflow.workflowType_v1']``) goes to the GenAI "Overview", ``machine_learning``
  to the runs table. A ``workflowType`` URL parameter overrides the stored one; the UI's own
  links (its Compare button) carry none, so ``ui`` serves a page that stores classic ML in a
  fresh browser (``outputs.mlflow_app``). The experiment tag
  ``mlflow.experimentKind`` only feeds that choice when workflow navigation is switched off,
  which 3.17 never does; it is still set (``custom_model_development``), so that the UI does
  not infer and write it, and for tools that read it.
- The runs table shows only attribute columns unless columns are chosen. A chosen set can be
  stored in the experiment as a *shared view*: the tag ``mlflow.sharedViewState.<key>`` holds
  the view (JSON: ``selectedColumns`` = ``metrics.`<key>``` ..., ``columnOrder``,
  ``columnWidths``), and the URL parameter
  ``viewStateShareKey=<key>`` applies it (the UI's own "Share" button works this way).

So :func:`publish_view` tags the experiment with the headline columns and
:func:`runs_table_url` is the address that opens the runs table with them:
``<server>/#/experiments/<id>/runs?workflowType=machine_learning&viewStateShareKey=headline``.
:func:`compare_runs_url` is the UI's side-by-side comparison of runs, and :func:`run_name`
names a run after what it is.
"""

from __future__ import annotations

import json
import re
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MACHINE_LEARNING_KIND = "custom_model_development"
VIEW_TAG_PREFIX = "mlflow.sharedViewState."
VIEW_KEY = "headline"
WORKFLOW = "machine_learning"
MAX_COLUMNS = 32

HEADLINE_METRICS = (
    "mean.percent_universal",
    "*.percent_universal",
    "universality.median_corr",
    "universality.median_baseline",
    "training.mean_heldout_loss",
    "families.*",
    "findings.*",
)
"""The headline metrics (issue 16): the runs table's columns, in this order; the keys of the
``metrics:`` files (``metrics/<stem>.json`` -> ``<stem>.<flattened key>``; the % universal
named model first, ``run_contents.headline_name``). A ``*`` stands for
one key part (no dot), so ``families.*`` is ``families.unigram`` but never a detail logged
deeper (``families.models.seed1.counts.unigram``); details belong under other prefixes. Keys a
run lacks are skipped; at most MAX_COLUMNS are shown."""


# ----------------------------------------------------------------------------- columns


def _natural(key: str) -> list[Any]:
    """Sort key that orders ``seed2`` before ``seed10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", key)]


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """A headline pattern as a regular expression: ``*`` is one key part (no dot), the rest
    literal and case-exact."""
    parts = (re.escape(part) for part in pattern.split("*"))
    return re.compile("[^.]+".join(parts))


def headline_metrics(keys: Iterable[str], patterns: Iterable[str] = HEADLINE_METRICS) -> list[str]:
    """The metric keys among ``keys`` that are headline columns: in pattern order, within a
    pattern in natural order (``seed2`` before ``seed10``), at most MAX_COLUMNS."""
    available = sorted(set(keys), key=_natural)
    chosen: list[str] = []
    for pattern in patterns:
        regex = pattern_regex(pattern)
        chosen += [k for k in available if regex.fullmatch(k) and k not in chosen]
    return chosen[:MAX_COLUMNS]


def logging_order(keys: Iterable[str]) -> list[str]:
    """``keys`` in the order to log them: the headline metrics first (:func:`headline_metrics`),
    then the rest sorted. The UI keeps it: the compare page's parallel-coordinates plot shows
    the first metric the runs share (``sharedMetricKeys.slice(0, 1)`` in MLflow 3.17's bundle),
    which sorted would be a ``detail.`` one."""
    keys = set(keys)
    first = headline_metrics(keys, HEADLINE_METRICS)
    return first + sorted(keys - set(first))


def column_id(kind: str, key: str) -> str:
    """The runs table's id of a column: ``metrics.`key``` / ``params.`key```."""
    return f"{kind}.`{key}`"


def view_state(metric_keys: Iterable[str]) -> dict[str, Any]:
    """The shared view that shows the headline metrics of ``metric_keys`` as columns."""
    keys = headline_metrics(metric_keys)
    columns = [column_id("metrics", key) for key in keys]
    widths = {column: column_width(key) for column, key in zip(columns, keys, strict=True)}
    return {"selectedColumns": columns, "columnOrder": columns, "columnWidths": widths}


def column_width(key: str) -> int:
    """Pixels for a column: its header at about 7 per character plus the sort and menu icons,
    at most 240, which shows every headline name whole (the longest,
    ``universality.median_baseline``, 28 characters; the UI's default of about 90 cuts it)."""
    return min(40 + 7 * len(key), 240)


def publish_view(client: Any, experiment_id: str, metric_keys: Iterable[str]) -> dict[str, Any]:
    """Tag the experiment as classic ML and store the headline view; return the view."""
    view = view_state(metric_keys)
    client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, MACHINE_LEARNING_KIND)
    client.set_experiment_tag(experiment_id, VIEW_TAG_PREFIX + VIEW_KEY, json.dumps(view))
    return view


# ----------------------------------------------------------------------------- addresses


def runs_table_url(base: str, experiment_id: str) -> str:
    """The address of the experiment's runs table with the headline columns."""
    query = urllib.parse.urlencode({"workflowType": WORKFLOW, "viewStateShareKey": VIEW_KEY})
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?{query}"


def compare_runs_url(base: str, experiment_id: str, run_ids: Iterable[str]) -> str:
    """The address of the UI's side-by-side comparison of ``run_ids`` (parameters, metrics)."""
    compact = {"separators": (",", ":")}
    query = urllib.parse.urlencode(
        {
            "runs": json.dumps(list(run_ids), **compact),
            "experiments": json.dumps([str(experiment_id)], **compact),
            "workflowType": WORKFLOW,
        }
    )
    return f"{base.rstrip('/')}/#/compare-runs?{query}"


def local_experiment_url(base: str, uri: str, name: str) -> str:
    """The runs table of experiment ``name`` in the local store ``uri``, served at ``base``.

    Refreshes the headline view from the newest run first (so a store logged before the view
    existed gets it too). ``base`` alone when the store or the experiment does not exist yet.
    """
    from mlflow.tracking import MlflowClient

    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        return base
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None or experiment.lifecycle_stage == "deleted":
        return base
    newest = client.search_runs(
        [experiment.experiment_id], max_results=1, order_by=["attributes.start_time DESC"]
    )
    if newest:
        publish_view(client, experiment.experiment_id, newest[0].data.metrics)
    return runs_table_url(base, experiment.experiment_id)


def server_experiment_url(base: str, name: str, timeout_s: float = 30.0) -> str:
    """The runs table of experiment ``name`` on the MLflow server ``base`` (REST, read only);
    ``base`` alone when the server does not answer or has no such experiment."""
    query = urllib.parse.urlencode({"experiment_name": name})
    address = f"{base.rstrip('/')}/api/2.0/mlflow/experiments/get-by-name?{query}"
    try:
        with urllib.request.urlopen(address, timeout=timeout_s) as response:
            experiment_id = json.loads(response.read())["experiment"]["experiment_id"]
    except (OSError, ValueError, KeyError):
        return base
    return runs_table_url(base, experiment_id)


# ----------------------------------------------------------------------------- run names


def changed_inputs(workdir: Path, outputs: Iterable[str]) -> list[str]:
    """Tracked files that differ from the commit, other than the pipeline's own outputs.

    ``outputs``: paths the pipeline writes (``dvc.lock``'s outputs); they, ``dvc.lock`` and
    the ``.gitignore`` files DVC adds its outputs to change in a ``dvc repro`` and do not make
    the state differ from its commit. Empty when ``workdir`` is not in a git repository.
    """
    try:
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--no-renames"],
            cwd=workdir,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    produced = [str(Path(path)) for path in (*outputs, "dvc.lock")]
    changed = [line[3:].strip().strip('"') for line in status.splitlines() if len(line) > 3]
    return [
        path
        for path in changed
        if Path(path).name != ".gitignore"
        and not any(path == out or path.startswith(out + "/") for out in produced)
    ]


def run_name(exp_name: str | None, commit: str | None, dirty: bool) -> str:
    """``dvc exp run``'s experiment name; else ``repro-<short commit>``, with ``-dirty`` when
    code or parameters differ from that commit; ``repro`` outside git."""
    if exp_name:
        return exp_name
    if not commit:
        return "repro"
    return f"repro-{commit[:7]}" + ("-dirty" if dirty else "")
