"""Stage baseline: the random-rotation baseline, analytic from correlate's statistics.

Correlate's pair statistics + collect's within-layer covariances -> baseline maxima.

Writes ``data/baseline/``: ``baseline.parquet`` (rows ``model, partner, sample, layer, index,
baseline``) and ``summary.json``; and ``results/baseline.json`` (mean baseline per model and
its spread across the draws).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from universal_neurons.errors import UserError
from universal_neurons.io import atomic_outputs, read_npy, read_parquet
from universal_neurons.matching.baseline import baseline_spread, group_baselines
from universal_neurons.matching.correlation import CrossMoments
from universal_neurons.pipeline.command import Out, Stage, as_json
from universal_neurons.pipeline.inputs import (
    CorrelateSummary,
    check_same_inputs,
    collect_summaries,
    correlate_summary,
    write_summary,
)
from universal_neurons.pipeline.layout import SUMMARY_FILE, Layout, model_name
from universal_neurons.pipeline.runner import stage_main

if TYPE_CHECKING:
    from universal_neurons.config import Params


def _within_covariances(params: Params, layout: Layout) -> dict[str, np.ndarray]:
    """Per model, collect's within-layer covariance ``[layers, d_mlp, d_mlp]``."""
    return {
        model_name(seed): read_npy(
            layout.model_dir("collect", seed) / "within_layer_cov.npy", "collect"
        )
        for seed in params.train.seeds
    }


def _from_pairs(params: Params, layout: Layout, summary: CorrelateSummary):
    """The baseline table, rotating correlate's full pair statistics (one pair at a time)."""
    within = _within_covariances(params, layout)
    seeds = {model_name(seed): seed for seed in params.train.seeds}
    pairs_dir = layout.stage_dir("correlate") / "pairs"
    pairs = (
        (tuple(key.split("__")), CrossMoments.load(pairs_dir / f"{key}.safetensors")[0])
        for key in summary.pairs
    )
    return group_baselines(pairs, seeds, within, params.baseline, params.correlate.dead_variance)


def _from_draws(params: Params, layout: Layout, summary: CorrelateSummary):
    """Above correlate.full_pairs_max_neurons: the draws correlate's units took, checked to be
    those of ``params.baseline``."""
    taken, wanted = summary.baseline, params.baseline.model_dump()
    if taken != wanted:
        raise UserError(
            f"baseline: correlate took the draws {taken} in its pass (above "
            f"correlate.full_pairs_max_neurons), but params.baseline is {wanted}; rerun "
            "correlate (a pipeline for such a group lists baseline under correlate's params)"
        )
    return read_parquet(layout.stage_dir("correlate") / "baseline_draws.parquet", "correlate")


def run(params: Params, layout: Layout) -> dict:
    """Compute the baseline of every ordered pair; return the metrics."""
    cfg = params.baseline
    summary = correlate_summary(params, layout)
    correlate_path = layout.summary("correlate")
    check_same_inputs({correlate_path: summary.provenance, **collect_summaries(params, layout)})
    full = summary.outputs == "full_pairs"
    table = (_from_pairs if full else _from_draws)(params, layout, summary)
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
    params=("baseline", "correlate.dead_variance", "train.seeds"),
    inputs=lambda layout: [layout.stage_dir("collect"), layout.stage_dir("correlate")],
    outputs=lambda layout: [
        Out(layout.stage_dir("baseline")),
        Out(layout.result("baseline.json"), cache=False),
    ],
    run=run,
    render=lambda metrics: as_json(metrics["models"]),
)

if __name__ == "__main__":
    stage_main(COMMAND, __doc__)
