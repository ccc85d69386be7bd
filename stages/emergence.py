"""Stage emergence: the percentage of universal neurons at every training checkpoint.

Universality at every training checkpoint of the seed group, and of the final models. For
each point (``train.checkpoint_tokens`` and the end of training) the group is the models of
every seed at that point; the universality test runs on it in memory
(``analysis.emergence.group_universality``: the collect, correlate, baseline and
universality functions) over the first ``emergence.max_sequences`` sequences of the analysis
split. Writes ``data/emergence/`` (``neurons.parquet``: one row per point and neuron;
``points.json``) and ``metrics/emergence.csv`` (the DVC plot, tokens on x).
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
    GroupUniversality,
    group_universality,
    heldout_losses,
)
from universal_neurons.matching.pairs import resolve_products
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

NEURON_COLUMNS = ["dead", "mean_corr", "mean_baseline", "excess_corr", "is_universal"]


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


def point_row(tokens: int, result: GroupUniversality, losses: dict[str, float]) -> dict:
    """One point of the curve: percentages, medians and losses (JSON-ready)."""
    return {
        "tokens": tokens,
        "mean_percent_universal": result.mean_percent_universal(),
        "median_corr": result.median("mean_corr"),
        "median_baseline": result.median("mean_baseline"),
        "mean_heldout_loss": float(np.mean(list(losses.values()))),
        "models": {
            name: {
                "percent_universal": summary["percent_universal"],
                "n_universal": summary["n_universal"],
                "percent_universal_per_layer": summary["percent_universal_per_layer"],
                "heldout_loss": losses[name],
            }
            for name, summary in result.summaries.items()
        },
        "kept_positions": result.kept_positions,
    }


def neuron_rows(tokens: int, result: GroupUniversality) -> pd.DataFrame:
    """``model, tokens, layer, index`` + ``NEURON_COLUMNS`` of every neuron at one point."""
    frames = [
        table[["layer", "index", *NEURON_COLUMNS]].assign(model=name, tokens=tokens)
        for name, table in result.tables.items()
    ]
    table = pd.concat(frames, ignore_index=True)
    return table[["model", "tokens", "layer", "index", *NEURON_COLUMNS]]


def curve_table(rows: list[dict]) -> pd.DataFrame:
    """The DVC plot table: one row per point, ``tokens`` first, then the group's summary and
    every model's percentage (``{model}_percent_universal``)."""
    records = []
    for row in rows:
        record = {key: row[key] for key in ("tokens", "mean_percent_universal", "median_corr")}
        record |= {
            "median_baseline": row["median_baseline"],
            "mean_heldout_loss": row["mean_heldout_loss"],
        }
        record |= {
            f"{m}_percent_universal": v["percent_universal"] for m, v in row["models"].items()
        }
        records.append(record)
    return pd.DataFrame(records)


def measure_point(params: Params, layout: Layout, below: str, analysis_set) -> GroupUniversality:
    """The universality test of the group at one point, on ``(tokens, excluded ids)``."""
    measured = analysis_params(params)
    cfg = measured.analysis
    tokens, excluded = analysis_set
    models = _load_group(measured, layout, below, tokens)
    return group_universality(
        models,
        {model_name(seed): seed for seed in params.train.seeds},
        tokens,
        excluded,
        cfg.batch_size,
        resolve_products(params.correlate.products, cfg.device),
        cfg.device,
        params.baseline,
        params.correlate.dead_variance,
        params.universality.threshold,
    )


def point_losses(params: Params, layout: Layout, below: str) -> dict[str, float]:
    """Held-out loss of every seed's model at one point."""
    heldout = load_tokens(layout.tokens, "heldout")[: params.train.heldout_sequences]
    dirs = {model_name(seed): layout.model(seed) / below for seed in params.train.seeds}
    return heldout_losses(dirs, heldout, params.analysis.device)


def _write(layout: Layout, rows: list[dict], frames: list[pd.DataFrame], summary: dict) -> None:
    """``data/emergence`` (neurons.parquet, points.json) and ``metrics/emergence.csv``."""
    with atomic_outputs() as outputs:  # the two outputs change together or not at all
        temp = outputs.path(layout.stage_dir("emergence"))
        temp.mkdir()
        pd.concat(frames, ignore_index=True).to_parquet(temp / "neurons.parquet", index=False)
        (temp / "points.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
        curve_table(rows).to_csv(outputs.path(layout.metric("emergence.csv")), index=False)


def run(params: Params, layout: Layout, progress: bool = True) -> list[dict]:
    """Measure universality at every point; write the outputs; return the points."""
    cfg = analysis_params(params).analysis
    check_device(cfg.device)
    tokens, excluded, _ = load_analysis_set(layout.tokens, cfg)
    rows, frames = [], []
    points = checkpoint_points(params, layout)
    for seen, below in tqdm(points, desc="emergence", disable=not progress):
        result = measure_point(params, layout, below, (tokens, excluded))
        rows.append(point_row(seen, result, point_losses(params, layout, below)))
        frames.append(neuron_rows(seen, result))
    threshold = params.universality.threshold
    summary = {"sequences": int(len(tokens)), "threshold": threshold, "points": rows}
    _write(layout, rows, frames, summary)
    return rows


def _lines(rows: list[dict]) -> str:
    return "\n".join(
        f"{row['tokens']:>12,} tokens: {row['mean_percent_universal']:6.2f} % universal, "
        f"median corr {row['median_corr']:.3f}, median baseline {row['median_baseline']:.3f}, "
        f"held-out loss {row['mean_heldout_loss']:.3f}"
        for row in rows
    )


COMMAND = Stage(
    name="emergence",
    params=(
        "analysis",
        "baseline",
        "correlate.products",
        "correlate.dead_variance",
        "emergence",
        "train.seeds",
        "train.checkpoint_tokens",
        "train.heldout_sequences",
        "universality",
    ),
    inputs=lambda layout: [layout.tokens, layout.models],
    outputs=lambda layout: [
        Out(layout.stage_dir("emergence")),
        Out(layout.metric("emergence.csv"), kind="plots", cache=False),
    ],
    run=run,
    render=_lines,
)

if __name__ == "__main__":
    stage_main(COMMAND, __doc__)
