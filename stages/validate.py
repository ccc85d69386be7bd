"""Stage validate: check the parameter file before any other stage runs; print the resolved parameters.

The first stage of the pipeline: every other stage depends on its output
(``data/params.valid``), so ``dvc repro`` runs it first whenever ``params.yaml`` changed, and
a bad parameter stops the run before DVC has removed any other stage's outputs. The output
holds the same line for every valid parameter file (and DVC keeps it between runs:
``persist``), so it never makes a stage rerun by itself.
"""

from __future__ import annotations

from universal_neurons.config import Params
from universal_neurons.io import atomic_path
from universal_neurons.pipeline.command import ALL_PARAMS, Out, Stage
from universal_neurons.pipeline.layout import Layout
from universal_neurons.pipeline.runner import stage_main

VALID = "the parameters are valid\n"
"""What ``data/params.valid`` holds: the same for every valid parameter file."""


def run(params: Params, layout: Layout) -> dict:
    """Every parameter, defaults included (the command line has validated them with
    ``config.load_params``, which this stage's code deps name); writes ``data/params.valid``
    unless it already says so."""
    if not isinstance(params, Params):
        raise TypeError(f"expected validated Params, got {type(params).__name__}")
    path = layout.params_check
    if not (path.is_file() and path.read_text() == VALID):
        with atomic_path(path) as temp:
            temp.write_text(VALID)
    return params.model_dump()


COMMAND = Stage(
    name="validate",
    params=(ALL_PARAMS,),
    outputs=lambda layout: [Out(layout.params_check, cache=False, persist=True)],
    run=run,
    validated=False,
)

if __name__ == "__main__":
    stage_main(COMMAND, __doc__)
