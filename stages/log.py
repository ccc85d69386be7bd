"""Stage log: the pipeline state -> one MLflow run (MLFLOW_TRACKING_URI or ./mlruns.db).

The last stage; ``tracking/run.json`` says which run holds this state. The work is the
``universal-neurons log`` tool's (``pipeline/tools/log.py``), which a fresh clone calls as
``universal-neurons log --if-missing``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from universal_neurons.pipeline.command import ALL_PARAMS, Out, Stage
from universal_neurons.pipeline.runner import stage_main
from universal_neurons.pipeline.tools import log as log_tool


def _other_stages() -> list[Stage]:
    """Every other stage file's declaration (the files beside this one; imported only when the
    inputs are asked for, by the wiring check and the tests, never when the stage runs)."""
    found = []
    for path in sorted(Path(__file__).resolve().parent.glob("*.py")):
        name = f"stages.{path.stem}"
        if path.stem in ("__init__", "log"):
            continue
        if name not in sys.modules:
            spec = importlib.util.spec_from_file_location(name, path)
            sys.modules[name] = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(sys.modules[name])
        found.append(sys.modules[name].COMMAND)
    return found


def _inputs(layout) -> list[Path]:
    """What the run keeps of every other stage's outputs (``log_tool.logged_outputs``)."""
    declared = [out.path for stage in _other_stages() for out in stage.declared_outputs(layout)]
    return log_tool.logged_outputs(layout, declared)


COMMAND = Stage(
    name="log",
    params=(ALL_PARAMS,),
    inputs=_inputs,
    outputs=lambda layout: [Out(layout.run_record, cache=False, persist=True)],
    run=log_tool.run,
    options=log_tool.COMMAND.options,
)

if __name__ == "__main__":
    stage_main(COMMAND, __doc__)
