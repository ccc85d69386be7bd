"""Stage log: the pipeline state -> one MLflow run (MLFLOW_TRACKING_URI or ./mlruns.db).

The last stage; ``tracking/run.json`` says which run holds this state. The work is the
``universal-neurons log`` tool's (``pipeline/tools/log.py``), which a fresh clone calls as
``universal-neurons log --if-missing``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from universal_neurons.pipeline.command import ALL_PARAMS, Out, Stage
from universal_neurons.pipeline.runner import stage_main
from universal_neurons.pipeline.tools import log as log_tool

if TYPE_CHECKING:
    from pathlib import Path

    from universal_neurons.pipeline.layout import Layout


def _inputs(layout: Layout) -> list[Path]:
    """What the run keeps of every other stage's outputs (``log_tool.logged_outputs``). Asked
    for by the wiring check, the preset generator and the tests, which import ``stages``; never
    when the stage runs (``python -P`` puts no ``stages`` on the import path)."""
    from stages import all_stages

    others = [stage for stage in all_stages() if stage.name != "log"]
    declared = [out.path for stage in others for out in stage.declared_outputs(layout)]
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
