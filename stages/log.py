"""log: the pipeline state -> one MLflow run; ``tracking/run.json`` says where it is."""

from pathlib import Path

import yaml

from universal_neurons.config import load_params
from universal_neurons.io import write_json
from universal_neurons.tracking import log_run, record_dict

RUN_RECORD = Path("tracking/run.json")


def run(params_path: Path, workdir: Path = Path("."), write_record: bool = True) -> dict:
    """Log params, metrics, curves, tags and artifacts of ``workdir`` as one MLflow run."""
    params = load_params(params_path)  # validates; the run logs the file's own keys
    raw = yaml.safe_load(Path(params_path).read_text(encoding="utf-8"))
    record = record_dict(
        log_run(workdir, raw, params.train.seeds, exclude_outputs=[str(RUN_RECORD)])
    )
    if write_record:
        write_json(Path(workdir) / RUN_RECORD, record)
    return record


def ensure(params_path: Path, workdir: Path = Path(".")) -> dict:
    """Make sure the current store holds a run of this state; log one if it does not.

    A fresh clone restores ``tracking/run.json`` from git, so ``dvc repro`` finds the ``log``
    stage up to date although this machine's MLflow store has never seen that run. This logs
    the state into the local store, tagged ``log.stands_for_run`` = the recorded run id,
    without rewriting ``tracking/run.json`` (which would make ``dvc status`` report a change).
    Calling it again finds that run and logs nothing. Returns the record and ``logged``.
    """
    from universal_neurons.io import read_json
    from universal_neurons.tracking import find_run, set_run_tag, tracking_uri

    record_path = Path(workdir) / RUN_RECORD
    recorded = read_json(record_path)["run_id"] if record_path.is_file() else None
    if recorded is not None:
        existing = find_run(tracking_uri(), recorded)
        if existing is not None:
            return {**existing, "logged": False}
    record = run(params_path, workdir, write_record=recorded is None)
    if recorded is not None:
        set_run_tag(record["tracking_uri"], record["run_id"], "log.stands_for_run", recorded)
    return {**record, "logged": True}
