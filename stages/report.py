"""Stage report: metrics, tables and curves -> report/index.html + figures + neuron pages.

Results, tables and training curves -> ``report/index.html`` + figures, and
``results/training.json`` (the training summary of every model; its headline, the mean
final held-out loss: ``metrics/training.json``). With the analysis outputs present (token
set, correlate's maxima, baseline, neuron tables) the report also holds a page per universal
neuron, ``report/neurons/<model>/<layer>.<index>.html`` (``outputs.neuron_page``), linked
from its universal neuron table.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from universal_neurons.description.page_store import pages_file
from universal_neurons.io import atomic_outputs, read_json
from universal_neurons.outputs.neuron_page import NEURONS_DIR, write_group_pages
from universal_neurons.outputs.report import (
    ReportSources,
    build_report,
    threshold_of,
    training_headline,
    training_summary,
)
from universal_neurons.pipeline.command import Out, Stage, as_json
from universal_neurons.pipeline.layout import Layout, model_name
from universal_neurons.pipeline.runner import stage_main

if TYPE_CHECKING:
    from pathlib import Path

    from universal_neurons.config import Params


def report_sources(layout: Layout, seeds: list[int], alpha: float = 0.05) -> ReportSources:
    """The files the report of the group of ``seeds`` reads (``alpha``: ``stats.alpha``)."""
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
        stats_tables={name: layout.table("stats", name) for name in names},
        effects_tables={name: layout.table("effects", name) for name in names},
        effects_results=layout.result("effects.json"),
        uncertainty_results=layout.result("uncertainty.json"),
        one_to_one_results=layout.result("one_to_one.json"),
        null_results=layout.result("null_control.json"),
        alpha=alpha,
    )


def extra_inputs(layout: Layout) -> list[Path]:
    """The newer stages' outputs the report shows: effects, uncertainty, one-to-one, null."""
    stages = ("effects", "uncertainty")
    names = ("effects.json", "uncertainty.json", "one_to_one.json", "null_control.json")
    return [layout.stage_dir(s) for s in stages] + [layout.result(name) for name in names]


def page_inputs(layout: Layout) -> list[Path]:
    """What the neuron pages read besides the report's inputs: the token set, correlate's
    maxima, the baseline and the candidates' activations (classify_candidates)."""
    return [
        layout.tokens,
        layout.stage_dir("correlate"),
        layout.stage_dir("baseline"),
        layout.stage_dir("classify_candidates"),
    ]


def write_neuron_pages(params: Params, layout: Layout, sources: ReportSources, out: Path) -> int:
    """The pages of the universal neurons of the pipeline state into ``out``; the number of
    universal neurons (0, nothing written, when an input is missing or none is universal)."""
    max_corr = layout.stage_dir("correlate") / "max_corr.parquet"
    baseline = layout.stage_dir("baseline") / "baseline.parquet"
    tokenizer = layout.tokens / "tokenizer.json"
    needed = [*sources.stats_tables.values(), max_corr, baseline, tokenizer]
    if not all(path.is_file() for path in needed):
        return 0
    stats = {name: pd.read_parquet(path) for name, path in sources.stats_tables.items()}
    if not any(table["is_universal"].any() for table in stats.values()):
        return 0
    families = {
        name: pd.read_parquet(path)
        for name, path in sources.family_tables.items()
        if path.is_file()
    }
    tables = (stats, families, pd.read_parquet(max_corr), pd.read_parquet(baseline))
    threshold = threshold_of(sources.universality_metrics)
    extras = page_extras(layout, list(stats))
    stored = {name: layout.stage_dir("classify_candidates") / pages_file(name) for name in stats}
    rows = write_group_pages(
        out, sources.model_dirs, layout.tokens, params.analysis, *tables, threshold, extras, stored
    )
    return len(rows)


def _rows_by_neuron(path: Path, **match) -> dict[tuple[int, int], dict]:
    """``{(layer, index): row}`` of a table's rows whose columns equal ``match`` ({} if absent)."""
    if not path.is_file():
        return {}
    table = pd.read_parquet(path)
    for column, value in match.items():
        table = table[table[column] == value]
    return {(int(r["layer"]), int(r["index"])): r for r in table.to_dict("records")}


def page_extras(layout: Layout, names: list[str]) -> dict:
    """Per model, per neuron: its effects row (universal) and uncertainty row, or None."""
    extras = {}
    for name in names:
        effects = _rows_by_neuron(layout.table("effects", name), kind="universal")
        sure = _rows_by_neuron(layout.table("uncertainty", name))
        keys = set(effects) | set(sure)
        extras[name] = {key: (effects.get(key), sure.get(key)) for key in keys}
    return extras


def check_documents(sources: ReportSources) -> None:
    """Read the results documents the report quotes before anything else: a broken one stops
    the stage at once, not after minutes of neuron pages (a missing one is left out later)."""
    for path in (sources.universality_metrics, sources.stats_metrics, sources.families_metrics):
        if path.exists():
            read_json(path)


def run(params: Params, layout: Layout) -> dict:
    """Render the report (with the neuron pages) and write the training summary metrics."""
    sources = report_sources(layout, params.train.seeds, params.stats.alpha)
    check_documents(sources)
    with atomic_outputs() as outputs:  # the three outputs change together or not at all
        summary = training_summary(sources.model_dirs)
        outputs.write_json(layout.result("training.json"), summary)
        outputs.write_json(layout.metric("training.json"), training_headline(summary))
        temp = outputs.path(layout.report)
        temp.mkdir()
        pages = write_neuron_pages(params, layout, sources, temp / NEURONS_DIR)
        result = build_report(sources, temp)
    return {
        "sections": result.sections,
        "figures": result.figures,
        "neuron_pages": pages,
        "training": summary,
    }


COMMAND = Stage(
    name="report",
    params=("analysis", "stats.alpha", "train.seeds"),
    inputs=lambda layout: [
        layout.models,
        *page_inputs(layout),
        layout.metric("emergence.csv"),
        *layout.analysis_results(),
        *extra_inputs(layout),
    ],
    outputs=lambda layout: [
        Out(layout.report),
        Out(layout.result("training.json"), cache=False),
        Out(layout.metric("training.json"), kind="metrics", cache=False),
    ],
    run=run,
    render=lambda result: as_json(
        {key: result[key] for key in ("sections", "figures", "neuron_pages")}
    ),
)

if __name__ == "__main__":
    stage_main(COMMAND, __doc__)
