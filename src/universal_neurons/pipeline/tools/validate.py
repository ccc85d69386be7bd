"""Check the parameter file and print the resolved parameters."""

from __future__ import annotations

from typing import TYPE_CHECKING

from universal_neurons.pipeline.command import Command
from universal_neurons.pipeline.layout import Layout

if TYPE_CHECKING:
    from universal_neurons.config import Params


def run(params: Params, layout: Layout) -> dict:
    """Every parameter, defaults included (the command line has validated them)."""
    return params.model_dump()


COMMAND = Command(
    name="validate",
    run=run,
)
