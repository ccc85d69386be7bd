"""Stage emergence_points: the τ-independent part of universality at every training checkpoint.

For each point (every ``train.checkpoint_tokens`` checkpoint and the end of training) the
group is the models of every seed at that point; collect, correlate and baseline run on it in
memory (``matching.emergence.group_measures``) over the first ``emergence.max_sequences``
sequences of the analysis split. Writes ``data/emergence_points/``: ``tokens_{T}.parquet``
per point (``model`` + ``matching.emergence.MEASURE_COLUMNS``: every neuron's mean
correlation, mean baseline and excess) and ``points.json`` (tokens seen, kept positions,
held-out losses). The emergence stage applies the threshold τ to it: changing
``universality.threshold`` reruns only that cheap stage, not this one.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from tqdm import tqdm

from universal_neurons.io import atomic_outputs, read_json
from universal_neurons.matching.activations import load_analysis_set
from universal_neurons.matching.emergence import (
    MEASURE_COLUMNS,
    GroupMeasures,
    configured_group_measures,
    heldout_losses,
)
from universal_neurons.models.loading import (
    check_device,
    check_fits_tokens,
    check_group,
    load_model,
    model_spec,
)
from universal_neurons.pipeline.command import Out, Stage
from universal_neurons.pipeline.layout import Layout, model_name
from universal_neurons.pipeline.runner import stage_main
from universal_neurons.text.tokens import load_tokens, tokenizer_vocab

if TYPE_CHECKING:
    from universal_neurons.config import Params

POINTS_FILE = "points.json"


def point_file(tokens: int) -> str:
    """The neuron table's file name of the point at ``tokens`` training tokens."""
    return f"tokens_{tokens}.parquet"


def checkpoint_points(params: Params, layout: Layout) -> list[tuple[int, str]]:
    """``(training tokens seen, directory below models/seed{s})`` of every point, in order:
    each ``train.checkpoint_tokens`` checkpoint (its ``checkpoint.json`` says the tokens it
    has seen: whole steps), then the end of training (the model directory itself, "")."""
    first = layout.model(params.train.seeds[0])
    points = []
    for requested in params.train.checkpoint_tokens:
        below = f"checkpoints/tokens_{requested}"
        points.append((int(read_json(first / below / "checkpoint.json")["tokens"]), below))
    return [*points, (int(read_json(first / "training.json")["tokens"]), "")]


def analysis_params(params: Params) -> Params:
    """``params`` with ``analysis.max_sequences`` set to the emergence analysis set's size."""
    size = params.emergence.max_sequences or params.analysis.max_sequences
    return params.model_copy(
        update={"analysis": params.analysis.model_copy(update={"max_sequences": size})}
    )


def _load_group(params: Params, layout: Layout, below: str, tokens: np.ndarray) -> dict:
    """The models of every seed at one point (``below`` the seed's model directory)."""
    models = {}
    for seed in params.train.seeds:
        name = model_name(seed)
        models[name] = load_model(str(layout.model(seed) / below), device=params.analysis.device)
        check_fits_tokens(model_spec(models[name]), name, tokens, *tokenizer_vocab(layout.tokens))
    check_group({name: model_spec(model) for name, model in models.items()})
    return models


def measure_point(params: Params, layout: Layout, below: str, analysis_set) -> GroupMeasures:
    """Correlations and baselines of the group at one point, on ``(tokens, excluded ids)``."""
    measured = analysis_params(params)
    models = _load_group(measured, layout, below, analysis_set[0])
    partner_ids = {model_name(seed): seed for seed in params.train.seeds}
    return configured_group_measures(
        models, partner_ids, analysis_set, measured.analysis, params.correlate, params.baseline
    )


def point_losses(params: Params, layout: Layout, below: str) -> dict[str, float]:
    """Held-out loss of every seed's model at one point."""
    heldout = load_tokens(layout.tokens, "heldout")[: params.train.heldout_sequences]
    dirs = {model_name(seed): layout.model(seed) / below for seed in params.train.seeds}
    return heldout_losses(dirs, heldout, params.analysis.device)


def measures_table(measures: GroupMeasures) -> pd.DataFrame:
    """``model`` + ``MEASURE_COLUMNS``: every model's neurons, in the group's order."""
    frames = [table.assign(model=name) for name, table in measures.tables.items()]
    return pd.concat(frames, ignore_index=True)[["model", *MEASURE_COLUMNS]]


def run(params: Params, layout: Layout, progress: bool = True) -> dict:
    """Measure every point; write the per-point tables and ``points.json``; return the latter."""
    cfg = analysis_params(params).analysis
    check_device(cfg.device)
    tokens, excluded, _ = load_analysis_set(layout.tokens, cfg)
    records, tables = [], {}
    for seen, below in tqdm(
        checkpoint_points(params, layout), desc="emergence", disable=not progress
    ):
        measures = measure_point(params, layout, below, (tokens, excluded))
        tables[point_file(seen)] = measures_table(measures)
        records.append(
            {
                "tokens": seen,
                "checkpoint": below,
                "file": point_file(seen),
                "n_layers": measures.n_layers,
                "kept_positions": measures.kept_positions,
                "heldout_loss": point_losses(params, layout, below),
            }
        )
    summary = {"sequences": int(len(tokens)), "points": records}
    with atomic_outputs() as outputs:
        temp = outputs.path(layout.stage_dir("emergence_points"))
        temp.mkdir()
        for name, table in tables.items():
            table.to_parquet(temp / name, index=False)
        (temp / POINTS_FILE).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary


def _lines(summary: dict) -> str:
    return "\n".join(
        f"{point['tokens']:>12,} tokens: measured ({point['kept_positions']:,} positions)"
        for point in summary["points"]
    )


COMMAND = Stage(
    name="emergence_points",
    params=(
        "analysis",
        "baseline",
        "correlate.products",
        "correlate.dead_variance",
        "emergence",
        "train.seeds",
        "train.checkpoint_tokens",
        "train.heldout_sequences",
    ),
    inputs=lambda layout: [layout.tokens, layout.models],
    outputs=lambda layout: [Out(layout.stage_dir("emergence_points"))],
    run=run,
    render=_lines,
)

if __name__ == "__main__":
    stage_main(COMMAND, __doc__)
