"""Stage baseline: the random-rotation baseline of every neuron and draw.

Correlate takes the draws while it holds the pairs' statistics (``baseline_draws.parquet``:
analytic from the full statistics and collect's within-layer covariances, or in its units
above ``correlate.full_pairs_max_neurons``; ``matching.pair_reductions``); this stage checks
that they are those of ``params.baseline`` and summarises their spread.

Writes ``data/baseline/``: ``baseline.parquet`` (rows ``model, partner, sample, layer, index,
baseline``) and ``summary.json``; and ``results/baseline.json`` (mean baseline per model and
its spread across the draws).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from universal_neurons.errors import UserError
from universal_neurons.io import atomic_outputs, read_parquet
from universal_neurons.matching.baseline import baseline_spread
from universal_neurons.matching.pair_reductions import BASELINE_DRAWS
from universal_neurons.pipeline.command import Out, Stage, as_json
from universal_neurons.pipeline.inputs import CorrelateSummary, correlate_summary, write_summary
from universal_neurons.pipeline.layout import SUMMARY_FILE, Layout
from universal_neurons.pipeline.runner import stage_main

if TYPE_CHECKING:
    from universal_neurons.config import Params


def _draws(params: Params, layout: Layout, summary: CorrelateSummary):
    """The draws correlate took, checked to be those of ``params.baseline``."""
    taken, wanted = summary.baseline, params.baseline.model_dump()
    if taken != wanted:
        raise UserError(
            f"baseline: correlate took the draws {taken} in its pass, but params.baseline is "
            f"{wanted}; rerun correlate (dvc repro: baseline is among correlate's params)"
        )
    return read_parquet(layout.stage_dir("correlate") / BASELINE_DRAWS, "correlate")


def run(params: Params, layout: Layout) -> dict:
    """Compute the baseline of every ordered pair; return the metrics."""
    cfg = params.baseline
    summary = correlate_summary(params, layout)
    table = _draws(params, layout, summary)
    metrics = {
        "kind": cfg.kind,
        "samples": cfg.samples,
        "seed": cfg.seed,
        "models": baseline_spread(table),
    }
    with atomic_outputs() as outputs:  # the two outputs change together or not at all
        temp = outputs.path(layout.stage_dir("baseline"))
        temp.mkdir()
        table.to_parquet(temp / "baseline.parquet", index=False)
        inputs = replace(summary.provenance, extra=metrics)
        write_summary(temp / SUMMARY_FILE, inputs.as_dict())
        outputs.write_json(layout.result("baseline.json"), metrics)
    return metrics


COMMAND = Stage(
    name="baseline",
    params=("baseline", "train.seeds"),
    inputs=lambda layout: [layout.stage_dir("correlate")],
    outputs=lambda layout: [
        Out(layout.stage_dir("baseline")),
        Out(layout.result("baseline.json"), cache=False),
    ],
    run=run,
    render=lambda metrics: as_json(metrics["models"]),
)

if __name__ == "__main__":
    stage_main(COMMAND, __doc__)
