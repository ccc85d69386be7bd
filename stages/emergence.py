"""emergence: universality at every training checkpoint of the seed group, and of the final models.

For each point (``train.checkpoint_tokens`` and the end of training) the group is the
models of every seed at that point; the universality test runs on it in memory
(``emergence.group_universality``: the collect, correlate, baseline and universality
functions) over the first ``emergence.max_sequences`` sequences of the analysis split.
Writes ``data/emergence/`` (``neurons.parquet``: one row per point and neuron;
``points.json``) and ``metrics/emergence.csv`` (the DVC plot, tokens on x).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from stages.paths import METRICS_DIR, MODELS_DIR, TOKENS_DIR, model_name
from universal_neurons.collect import load_analysis_set
from universal_neurons.config import Params
from universal_neurons.emergence import GroupUniversality, group_universality
from universal_neurons.io import atomic_path, read_json
from universal_neurons.models import check_device, check_fits_tokens, check_group, load_model
from universal_neurons.pairs import resolve_products
from universal_neurons.tokens import load_tokens, tokenizer_vocab

EMERGENCE_DIR = Path("data/emergence")
EMERGENCE_CSV = METRICS_DIR / "emergence.csv"
NEURON_COLUMNS = ["dead", "mean_corr", "mean_baseline", "excess_corr", "is_universal"]


def checkpoint_points(params: Params, models_dir: Path) -> list[tuple[int, str]]:
    """``(training tokens seen, directory below models/seed{s})`` of every point, in order:
    each ``train.checkpoint_tokens`` checkpoint (its ``checkpoint.json`` says the tokens it
    has seen: whole steps), then the end of training (the model directory itself, "")."""
    first = models_dir / model_name(params.train.seeds[0])
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


def _load_group(params: Params, models_dir: Path, below: str, tokens, tokens_dir: Path) -> dict:
    """The models of every seed at one point (``below`` the seed's model directory)."""
    models = {}
    for seed in params.train.seeds:
        name = model_name(seed)
        models[name] = load_model(str(models_dir / name / below), device=params.analysis.device)
        check_fits_tokens(models[name], name, tokens, *tokenizer_vocab(tokens_dir))
    check_group(models)
    return models


def heldout_losses(params: Params, models_dir: Path, below: str, tokens_dir: Path) -> dict:
    """Held-out loss (nats/token, the train stage's definition) of every seed's model at a point."""
    from transformers import GPT2LMHeadModel

    from universal_neurons.train import heldout_loss

    heldout = load_tokens(tokens_dir, "heldout")[: params.train.heldout_sequences]
    device = params.analysis.device
    losses = {}
    for seed in params.train.seeds:
        model = GPT2LMHeadModel.from_pretrained(models_dir / model_name(seed) / below).to(device)
        losses[model_name(seed)] = heldout_loss(model, heldout, device)
    return losses


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


def run(
    params: Params,
    tokens_dir: Path = TOKENS_DIR,
    models_dir: Path = MODELS_DIR,
    output_dir: Path = EMERGENCE_DIR,
    curve_path: Path = EMERGENCE_CSV,
    progress: bool = True,
) -> list[dict]:
    """Measure universality at every point; write the outputs; return the points."""
    measured = analysis_params(params)
    cfg = measured.analysis
    check_device(cfg.device)
    tokens, excluded, _ = load_analysis_set(tokens_dir, cfg)
    products = resolve_products(params.correlate.products, cfg.device)
    partner_ids = {model_name(seed): seed for seed in params.train.seeds}
    rows, frames = [], []
    for seen, below in tqdm(
        checkpoint_points(params, models_dir), desc="emergence", disable=not progress
    ):
        models = _load_group(measured, models_dir, below, tokens, tokens_dir)
        result = group_universality(
            models,
            partner_ids,
            tokens,
            excluded,
            cfg.batch_size,
            products,
            cfg.device,
            params.baseline,
            params.correlate.dead_variance,
            params.universality.threshold,
        )
        del models
        rows.append(point_row(seen, result, heldout_losses(params, models_dir, below, tokens_dir)))
        frames.append(neuron_rows(seen, result))
    with atomic_path(output_dir) as temp:
        temp.mkdir()
        pd.concat(frames, ignore_index=True).to_parquet(temp / "neurons.parquet", index=False)
        summary = {
            "sequences": int(len(tokens)),
            "threshold": params.universality.threshold,
            "points": rows,
        }
        (temp / "points.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    with atomic_path(curve_path) as temp:
        curve_table(rows).to_csv(temp, index=False)
    return rows
