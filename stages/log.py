"""log: the pipeline state -> one MLflow run; ``tracking/run.json`` says where it is."""

from pathlib import Path

import yaml

from universal_neurons.config import load_params
from universal_neurons.io import write_json
from universal_neurons.tracking import log_run, record_dict

RUN_RECORD = Path("tracking/run.json")


def run(params_path: Path, workdir: Path = Path(".")) -> dict:
    """Log params, metrics, curves, tags and artifacts of ``workdir`` as one MLflow run."""
    params = load_params(params_path)  # validates; the run logs the file's own keys
    raw = yaml.safe_load(Path(params_path).read_text(encoding="utf-8"))
    record = record_dict(
        log_run(workdir, raw, params.train.seeds, exclude_outputs=[str(RUN_RECORD)])
    )
    write_json(Path(workdir) / RUN_RECORD, record)
    return record
