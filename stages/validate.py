"""Stage validate: check the parameter file before any other stage runs; print the resolved parameters.

The first stage of the pipeline: every other stage depends on its output
(``data/params.valid``), so ``dvc repro`` runs it first whenever ``params.yaml`` changed, and
a bad parameter stops the run before DVC has removed any other stage's outputs. The output
holds the same line for every valid parameter file (and DVC keeps it between runs:
``persist``), so it never makes a stage rerun by itself.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from universal_neurons.config import ConfigError, Params
from universal_neurons.io import atomic_path
from universal_neurons.pipeline.command import ALL_PARAMS, Out, Stage
from universal_neurons.pipeline.layout import Layout
from universal_neurons.pipeline.runner import stage_main
from universal_neurons.pipeline.wiring import missing_params

VALID = "the parameters are valid\n"
"""What ``data/params.valid`` holds: the same for every valid parameter file."""


def check_listed_params(layout: Layout) -> None:
    """Every parameter that a stage of this pipeline (``dvc.yaml`` beside the parameter file)
    lists is in the file itself: DVC reads the file, not the defaults ``config`` fills in, and
    would stop at that stage after the stages before it ran."""
    dvc_yaml = layout.dvc_files[0]
    if not dvc_yaml.is_file():
        return
    raw = yaml.safe_load(Path(layout.params).read_text(encoding="utf-8")) or {}
    missing = missing_params(dvc_yaml, raw)
    if missing:
        stage, key = missing[0]
        section = key.split(".")[0]
        raise ConfigError(
            f"{layout.params}: {key} is missing, but stage {stage!r} of {dvc_yaml} lists it "
            f"(DVC reads the file, not the defaults): add it, e.g. a {section}: section as in "
            "the default params.yaml"
        )


def run(params: Params, layout: Layout) -> dict:
    """Every parameter, defaults included (the command line has validated them with
    ``config.load_params``, which this stage's code deps name), each one a stage lists present
    in the file (``check_listed_params``); writes ``data/params.valid`` unless it already says
    so."""
    if not isinstance(params, Params):
        raise TypeError(f"expected validated Params, got {type(params).__name__}")
    check_listed_params(layout)
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
