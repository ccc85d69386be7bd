"""report: metrics, neuron tables and training curves -> ``report/`` + ``metrics/training.json``."""

from pathlib import Path

from stages.paths import METRICS_DIR, MODELS_DIR
from universal_neurons.config import Params
from universal_neurons.io import atomic_path, write_json
from universal_neurons.report import build_report, training_summary

REPORT_DIR = Path("report")
TRAINING_METRICS = METRICS_DIR / "training.json"


def run(params: Params, workdir: Path = Path("."), output_dir: Path | None = None) -> dict:
    """Render the report of ``workdir`` and write the training summary metrics."""
    workdir = Path(workdir)
    output_dir = output_dir or workdir / REPORT_DIR
    seeds = params.train.seeds
    with atomic_path(output_dir) as temp:
        result = build_report(workdir, temp, seeds)
    summary = training_summary(workdir / MODELS_DIR, seeds)
    write_json(workdir / TRAINING_METRICS, summary)
    return {"sections": result.sections, "figures": result.figures, "training": summary}
