"""Stage effects_candidates: what the candidate neurons do when ablated (SPEC "What a neuron
does"), independent of τ.

The candidates are the neurons whose excess correlation is above
``universality.candidate_threshold`` (at most τ). Every candidate of every model,
``effects.controls`` matched control neurons per candidate (not candidates themselves) and its
best partner in every other model are ablated (``effects.ablation``) on the first
``effects.max_sequences`` held-out sequences; their weight-based roles (entropy, attention
(de)activation, prediction, suppression) are set beside the effects. The effects stage then
keeps the rows of the universal neurons: a new τ at or above the candidate threshold reruns
no ablation. The candidates' weight statistics come from the weight_stats stage.

Writes ``data/effects_candidates/seed{s}.parquet``: one row per measured neuron, the columns
of ``data/effects`` (``description/effects.py``) with ``kind`` = candidate | control | partner.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from tqdm import tqdm

from universal_neurons.description.effects import (
    ModelInputs,
    add_group_columns,
    as_candidates,
    measure_model,
    measured_neurons,
)
from universal_neurons.io import atomic_outputs, read_parquet
from universal_neurons.matching.activations import excluded_token_ids
from universal_neurons.models.loading import check_device
from universal_neurons.pipeline.command import Out, Stage
from universal_neurons.pipeline.layout import Layout, model_name
from universal_neurons.pipeline.runner import stage_main
from universal_neurons.text.tokens import load_tokenizer, load_tokens

# ``python -P`` (as DVC runs a stage) leaves this folder off the import path: the folder above
# it goes on the end of it, for the candidates' neuron tables (``stats.candidate_tables``).
sys.path.append(str(Path(__file__).resolve().parents[1]))
from stages.stats import candidate_tables  # noqa: E402

if TYPE_CHECKING:
    from universal_neurons.config import Params


def model_inputs(params: Params, layout: Layout, seed: int, stats: pd.DataFrame) -> ModelInputs:
    """What the measurement of the model of ``seed`` reads (the held-out token set);
    ``stats``: its neuron table with the candidates as ``is_universal``."""
    config = params.effects
    tokens = load_tokens(layout.tokens, "heldout")
    tokens = tokens if config.max_sequences == 0 else tokens[: config.max_sequences]
    excluded = excluded_token_ids(load_tokenizer(layout.tokens), params.analysis)
    return ModelInputs(
        directory=str(layout.model(seed)),
        stats=stats,
        moments=read_parquet(layout.model_dir("collect", seed) / "moments.parquet", "collect"),
        tokens=np.asarray(tokens, dtype=np.int64),
        excluded=excluded,
    )


def run(params: Params, layout: Layout, progress: bool = True) -> dict:
    """Measure every model's candidates, their controls and partners; write their tables and
    return the number of rows per model and kind."""
    check_device(params.effects.device, "effects.device")
    stats = candidate_tables(params, layout)
    inputs = {
        model_name(seed): model_inputs(params, layout, seed, stats[model_name(seed)])
        for seed in params.train.seeds
    }
    max_corr = read_parquet(layout.stage_dir("correlate") / "max_corr.parquet", "correlate")
    targets = measured_neurons(stats, max_corr, params.effects)
    tables, per_token = {}, {}
    for name in tqdm(inputs, desc="effects_candidates", unit="model", disable=not progress):
        tables[name], found = measure_model(
            inputs[name], targets[name], params.effects, params.families, progress
        )
        per_token.update({(name, *key): values for key, values in found.items()})
    tables = {name: as_candidates(t) for name, t in add_group_columns(tables, per_token).items()}
    with atomic_outputs() as outputs:  # the tables change together or not at all
        temp = outputs.path(layout.stage_dir("effects_candidates"))
        temp.mkdir()
        for name, table in tables.items():
            table.to_parquet(temp / f"{name}.parquet", index=False)
    counts = {name: t.get("kind", pd.Series()).value_counts() for name, t in tables.items()}
    return {name: {k: int(n) for k, n in kinds.items()} for name, kinds in counts.items()}


COMMAND = Stage(
    name="effects_candidates",
    params=(
        "train.seeds",
        "analysis",
        "families",
        "effects",
        "universality.candidate_threshold",
    ),
    inputs=lambda layout: [
        layout.tokens,
        layout.models,
        layout.stage_dir("weight_stats"),
        layout.stage_dir("collect"),
        layout.stage_dir("correlate"),
        layout.stage_dir("baseline"),
    ],
    outputs=lambda layout: [Out(layout.stage_dir("effects_candidates"))],
    run=run,
)

if __name__ == "__main__":
    stage_main(COMMAND, __doc__)
