"""Stage emergence_points: the τ-independent part of universality at every training checkpoint.

For each point (every ``train.checkpoint_tokens`` checkpoint and the end of training) the
group is the models of every seed at that point (trained, or fetched from a pretrained group's
checkpoints: ``models.checkpoints``); collect, correlate and baseline run on it over the first
``emergence.max_sequences`` sequences of the analysis split: in memory
(``matching.emergence.group_measures``) for a group of at most
``correlate.full_pairs_max_neurons`` neurons per model, and above it through the collect,
correlate, baseline and universality stages' own functions in a scratch workspace, whose
bounded-memory path writes nothing ``[N, N]`` (``staged_measures``). Writes ``data/emergence_points/``: ``tokens_{T}.parquet``
per point (``model`` + ``matching.emergence.MEASURE_COLUMNS``: every neuron's mean
correlation, mean baseline and excess) and ``points.json`` (tokens seen, kept positions,
held-out losses). The emergence stage applies the threshold τ to it: changing
``universality.threshold`` reruns only that cheap stage, not this one.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from tqdm import tqdm

from universal_neurons.io import atomic_outputs, read_json, read_parquet
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
    config_shape,
    load_model,
    model_spec,
)
from universal_neurons.pipeline.command import Out, Stage
from universal_neurons.pipeline.layout import Layout, model_name
from universal_neurons.pipeline.runner import stage_main
from universal_neurons.text.tokens import load_tokens, tokenizer_vocab

# The stage files this one runs are the ``stages`` package beside it; ``python -P`` (as DVC runs
# a stage) leaves its folder off the import path, so the folder above it goes on the end of it.
sys.path.append(str(Path(__file__).resolve().parents[1]))
from stages import baseline, collect, correlate, universality  # noqa: E402

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


def in_memory_measures(params: Params, layout: Layout, below: str, analysis_set) -> GroupMeasures:
    """Correlations and baselines of the group at one point, on ``(tokens, excluded ids)``,
    computed in memory (full pair statistics: groups up to ``correlate.full_pairs_max_neurons``)."""
    measured = analysis_params(params)
    models = _load_group(measured, layout, below, analysis_set[0])
    partner_ids = {model_name(seed): seed for seed in params.train.seeds}
    return configured_group_measures(
        models, partner_ids, analysis_set, measured.analysis, params.correlate, params.baseline
    )


def staged_measures(params: Params, layout: Layout, model_dirs: dict[int, Path]) -> GroupMeasures:
    """The numbers of ``in_memory_measures`` for a group above ``correlate.full_pairs_max_neurons``
    (also the null stages'): the collect, correlate, baseline and universality stages run on the
    models in ``model_dirs`` (``{seed: model folder}``) in a scratch workspace under ``data/``
    (``models/seed{s}`` linked to each folder; ``params.analysis`` the analysis set measured).
    Their universality tables (without ``is_universal``) give the tables, their collect outputs
    the moments."""
    with tempfile.TemporaryDirectory(prefix=".emergence_points-", dir=layout.data) as scratch:
        models = Path(scratch) / "models"
        models.mkdir()
        for seed, directory in model_dirs.items():
            (models / model_name(seed)).symlink_to(Path(directory).resolve())
        point = Layout.at(scratch, tokens=layout.tokens, models=models)
        for seed in params.train.seeds:
            collect.run(params, point, seed, progress=False)
        summary = correlate.run(params, point, progress=False)
        baseline.run(params, point)
        universality.run(params, point)
        tables, moments = {}, {}
        for seed in params.train.seeds:
            name = model_name(seed)
            table = read_parquet(point.table("universality", name), "universality")
            tables[name] = table.drop(columns="is_universal")
            moments[name] = read_parquet(
                point.model_dir("collect", seed) / "moments.parquet", "collect"
            )
    n_layers = config_shape(model_dirs[params.train.seeds[0]])[0]
    return GroupMeasures(tables, n_layers, int(summary["kept_positions"]), moments)


def measure_point(params: Params, layout: Layout, below: str, analysis_set) -> GroupMeasures:
    """Correlations and baselines of the group at one point (``below`` each model's folder),
    on ``(tokens, excluded ids)``: in memory, or staged above the full-pairs size."""
    n_layers, d_mlp = config_shape(layout.model(params.train.seeds[0]) / below)
    if params.correlate.full_pairs(n_layers * d_mlp):
        return in_memory_measures(params, layout, below, analysis_set)
    dirs = {seed: layout.model(seed) / below for seed in params.train.seeds}
    return staged_measures(analysis_params(params), layout, dirs)


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
    scale_params=("correlate",),
    inputs=lambda layout: [layout.tokens, layout.models],
    outputs=lambda layout: [Out(layout.stage_dir("emergence_points"))],
    run=run,
    render=_lines,
)

if __name__ == "__main__":
    stage_main(COMMAND, __doc__)
