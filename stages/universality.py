"""Stage universality: neuron tables and the percentage of universal neurons.

Correlate's maxima + baseline -> the neuron table per model and the headline metric.

Writes ``data/universality/seed{s}.parquet`` (columns ``universality.TABLE_COLUMNS``),
``results/universality.json`` (per model: counts, percentages per layer), its headline
``metrics/universality.json`` and ``metrics/universality_per_layer.csv``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from universal_neurons.io import atomic_outputs, read_parquet
from universal_neurons.matching.universality import (
    headline_metrics,
    model_summary,
    per_layer_rows,
    universality_metrics,
    universality_table,
)
from universal_neurons.pipeline.command import Out, Stage
from universal_neurons.pipeline.inputs import (
    check_same_inputs,
    correlate_summary,
    summary_of,
    write_summary,
)
from universal_neurons.pipeline.layout import SUMMARY_FILE, Layout, model_name
from universal_neurons.pipeline.runner import stage_main

if TYPE_CHECKING:
    import pandas as pd

    from universal_neurons.config import Params
    from universal_neurons.pipeline.inputs import CorrelateSummary


def universality_tables(
    params: Params, layout: Layout, threshold: float
) -> tuple[CorrelateSummary, dict[str, pd.DataFrame]]:
    """Correlate's summary (checked to describe the baseline's token set) and every model's
    universality table with ``is_universal`` = excess above ``threshold``."""
    summary = correlate_summary(params, layout)
    baseline_path = layout.summary("baseline")
    correlate_path = layout.summary("correlate")
    check_same_inputs(
        {correlate_path: summary.provenance, baseline_path: summary_of(baseline_path)}
    )
    maxima = read_parquet(layout.stage_dir("correlate") / "max_corr.parquet", "correlate")
    baseline = read_parquet(layout.stage_dir("baseline") / "baseline.parquet", "baseline")
    names = [model_name(seed) for seed in params.train.seeds]
    return summary, {name: universality_table(maxima, baseline, name, threshold) for name in names}


def run(params: Params, layout: Layout) -> dict:
    """Build every model's neuron table and the universality metrics; return the metrics."""
    threshold = params.universality.threshold
    summary, tables = universality_tables(params, layout, threshold)
    summaries = {name: model_summary(table, summary.n_layers) for name, table in tables.items()}
    metrics = universality_metrics(summaries, threshold, summary.kept_positions)
    with atomic_outputs() as outputs:  # the four outputs change together or not at all
        temp = outputs.path(layout.stage_dir("universality"))
        temp.mkdir()
        for name, table in tables.items():
            table.to_parquet(temp / f"{name}.parquet", index=False)
        write_summary(temp / SUMMARY_FILE, summary.provenance.as_dict())
        outputs.write_json(layout.result("universality.json"), metrics)
        outputs.write_json(layout.metric("universality.json"), headline_metrics(summaries, tables))
        per_layer = outputs.path(layout.metric("universality_per_layer.csv"))
        per_layer_rows(summaries).to_csv(per_layer, index=False)
    return metrics


COMMAND = Stage(
    name="universality",
    params=("train.seeds", "universality"),
    inputs=lambda layout: [layout.stage_dir("baseline"), layout.stage_dir("correlate")],
    outputs=lambda layout: [
        Out(layout.stage_dir("universality")),
        Out(layout.result("universality.json"), cache=False),
        Out(layout.metric("universality.json"), kind="metrics", cache=False),
        Out(layout.metric("universality_per_layer.csv"), kind="plots", cache=False),
    ],
    run=run,
)

if __name__ == "__main__":
    stage_main(COMMAND, __doc__)
