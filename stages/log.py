"""Stage log: the pipeline state -> one MLflow run (MLFLOW_TRACKING_URI or ./mlruns.db).

The last stage; ``tracking/run.json`` says which run holds this state. The work is the
``universal-neurons log`` tool's (``pipeline/tools/log.py``), which a fresh clone calls as
``universal-neurons log --if-missing``.
"""

from __future__ import annotations

from universal_neurons.pipeline.command import ALL_PARAMS, Out, Stage
from universal_neurons.pipeline.runner import stage_main
from universal_neurons.pipeline.tools import log as log_tool

COMMAND = Stage(
    name="log",
    params=(ALL_PARAMS,),
    inputs=lambda layout: [
        layout.models,
        layout.metric("emergence.csv"),
        layout.report,
        layout.metric("training.json"),
        layout.result("training.json"),
        *layout.headline_metrics(),
        *layout.analysis_results(),
    ],
    outputs=lambda layout: [Out(layout.run_record, cache=False, persist=True)],
    run=log_tool.run,
    options=log_tool.COMMAND.options,
)

if __name__ == "__main__":
    stage_main(COMMAND, __doc__)
