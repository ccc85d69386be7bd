"""Stage report: metrics, tables and curves -> report/index.html + figures.

Results, tables and training curves -> ``report/index.html`` + figures, and
``results/training.json`` (the training summary of every model; its headline, the mean
final held-out loss: ``metrics/training.json``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from universal_neurons.io import atomic_path, write_json
from universal_neurons.outputs.report import (
    ReportSources,
    build_report,
    training_headline,
    training_summary,
)
from universal_neurons.pipeline.command import Out, Stage, as_json
from universal_neurons.pipeline.layout import Layout, model_name

if TYPE_CHECKING:
    from universal_neurons.config import Params


def report_sources(layout: Layout, seeds: list[int]) -> ReportSources:
    """The files the report of the group of ``seeds`` reads."""
    names = tuple(model_name(seed) for seed in seeds)
    return ReportSources(
        models=names,
        universality_metrics=layout.result("universality.json"),
        stats_metrics=layout.result("stats.json"),
        families_metrics=layout.result("families.json"),
        universality_tables={name: layout.table("universality", name) for name in names},
        family_tables={name: layout.table("families", name) for name in names},
        model_dirs={model_name(seed): layout.model(seed) for seed in seeds},
        emergence_curve=layout.metric("emergence.csv"),
    )


def run(params: Params, layout: Layout) -> dict:
    """Render the report and write the training summary metrics."""
    sources = report_sources(layout, params.train.seeds)
    with atomic_path(layout.report) as temp:
        result = build_report(sources, temp)
    summary = training_summary(sources.model_dirs)
    write_json(layout.result("training.json"), summary)
    write_json(layout.metric("training.json"), training_headline(summary))
    return {"sections": result.sections, "figures": result.figures, "training": summary}


COMMAND = Stage(
    name="report",
    params=("train.seeds",),
    inputs=lambda layout: [
        layout.models,
        layout.metric("emergence.csv"),
        *layout.analysis_results(),
    ],
    outputs=lambda layout: [
        Out(layout.report),
        Out(layout.result("training.json"), cache=False),
        Out(layout.metric("training.json"), kind="metrics", cache=False),
    ],
    run=run,
    render=lambda result: as_json({"sections": result["sections"], "figures": result["figures"]}),
)
