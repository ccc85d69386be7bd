"""Inputs that several stages read, checked to belong to the group of ``train.seeds``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from universal_neurons.errors import UserError
from universal_neurons.io import read_json
from universal_neurons.pipeline.layout import Layout, model_name

if TYPE_CHECKING:
    from universal_neurons.config import Params


def correlate_summary(params: Params, layout: Layout) -> dict:
    """correlate's ``summary.json``, checked to be about the models of ``train.seeds``."""
    path = layout.stage_dir("correlate") / "summary.json"
    summary = read_json(path)
    if summary["models"] != [model_name(seed) for seed in params.train.seeds]:
        raise UserError(
            f"{path}: models {summary['models']} do not match "
            f"train.seeds {params.train.seeds}; rerun correlate"
        )
    return summary
