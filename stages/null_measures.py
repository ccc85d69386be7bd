"""Stage null_measures: the null group's neuron tables, measured once for every threshold.

With ``uncertainty.null_group: untrained`` the null group is the group's models at
initialisation: for the trained group ``models.gpt2.init_model`` with each seed, exactly the
train stage's step 0; for a fetched (pretrained) group each member's step-0 checkpoint, which
the fetch stage puts in ``models/seed{s}/checkpoints/tokens_0/`` (``models.checkpoints``). It is
measured on the first ``uncertainty.null_max_sequences`` analysis sequences by the same
in-memory collect, correlate and baseline functions as the emergence stages, with the same
neuron statistics as the stats stage. No threshold: the null_control stage selects from these
tables, so a new τ reruns only that cheap stage.

Writes ``data/null_measures/`` (``seed{s}.parquet``: the stats stage's neuron table of each
null model, ``is_universal`` left False; ``summary.json``: whether it ran, kept positions).
With ``null_group: none`` the summary says ``"run": false`` and why.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from universal_neurons.description.statistics import (
    activation_statistics,
    neuron_table,
    weight_statistics,
)
from universal_neurons.io import atomic_outputs
from universal_neurons.matching.activations import load_analysis_set
from universal_neurons.matching.emergence import GroupMeasures, configured_group_measures
from universal_neurons.models.checkpoints import INITIAL
from universal_neurons.models.gpt2 import gpt2_config, init_model, save_model
from universal_neurons.models.loading import (
    check_device,
    config_shape,
    load_model,
    processed_weights,
)
from universal_neurons.pipeline.command import Out, Stage
from universal_neurons.pipeline.layout import SUMMARY_FILE, Layout, model_name
from universal_neurons.pipeline.runner import stage_main
from universal_neurons.text.tokens import end_of_text_id, load_tokenizer

# The stage files this one runs are the ``stages`` package beside it; ``python -P`` (as DVC runs
# a stage) leaves its folder off the import path, so the folder above it goes on the end of it.
sys.path.append(str(Path(__file__).resolve().parents[1]))
from stages.emergence_points import staged_measures  # noqa: E402

if TYPE_CHECKING:
    from universal_neurons.config import Params


def null_params(params: Params) -> Params:
    """``params`` with ``analysis.max_sequences`` set to the null group's analysis set size."""
    size = params.uncertainty.null_max_sequences or params.analysis.max_sequences
    return params.model_copy(
        update={"analysis": params.analysis.model_copy(update={"max_sequences": size})}
    )


def not_run_reason(params: Params) -> str | None:
    """Why the null group is not measured (None: it is)."""
    if params.uncertainty.null_group == "none":
        return "uncertainty.null_group is none"
    return None


def untrained_models(params: Params, layout: Layout, scratch: Path) -> dict[str, object]:
    """``{model name: loaded model}``: each seed's model at initialisation, saved under
    ``scratch`` and loaded as every stage loads a model (LayerNorm folded, ...)."""
    tokenizer = load_tokenizer(layout.tokens)
    config = gpt2_config(
        params.model, tokenizer.get_vocab_size(), params.tokens.context, end_of_text_id(tokenizer)
    )
    models = {}
    for seed in params.train.seeds:
        directory = scratch / model_name(seed)
        save_model(init_model(config, seed), directory)
        models[model_name(seed)] = load_model(str(directory), device=params.analysis.device)
    return models


def fetched_initial_models(params: Params, layout: Layout) -> dict[str, object]:
    """``{model name: loaded model}``: each member of a fetched group at step 0, as the fetch
    stage wrote it (``models/seed{s}/checkpoints/tokens_0``)."""
    return {
        model_name(seed): load_model(
            str(layout.model(seed) / INITIAL), device=params.analysis.device
        )
        for seed in params.train.seeds
    }


def measure_null(params: Params, layout: Layout, models: dict) -> GroupMeasures:
    """Correlations, baselines and moments of the null group over its analysis sequences."""
    cfg = null_params(params).analysis
    tokens, excluded, _ = load_analysis_set(layout.tokens, cfg)
    partner_ids = {model_name(seed): seed for seed in params.train.seeds}
    return configured_group_measures(
        models, partner_ids, (tokens, excluded), cfg, params.correlate, params.baseline, True
    )


def measure_fetched_null(params: Params, layout: Layout) -> tuple[dict, GroupMeasures]:
    """A fetched group's null group (each member at step 0): ``(models, measures)``, in memory up
    to ``correlate.full_pairs_max_neurons`` neurons per model, above it by the stages' path
    (the models loaded after it, for their weight statistics)."""
    dirs = {seed: layout.model(seed) / INITIAL for seed in params.train.seeds}
    n_layers, d_mlp = config_shape(dirs[params.train.seeds[0]])
    if params.correlate.full_pairs(n_layers * d_mlp):
        models = fetched_initial_models(params, layout)
        return models, measure_null(params, layout, models)
    measures = staged_measures(null_params(params), layout, dirs)
    return fetched_initial_models(params, layout), measures


def null_tables(params: Params, layout: Layout) -> tuple[dict, int]:
    """``({model: null neuron table, is_universal False}, kept positions)``."""
    check_device(params.analysis.device)
    with tempfile.TemporaryDirectory(prefix="null_measures") as scratch:
        if params.group.preset == "trained":
            models = untrained_models(params, layout, Path(scratch))
            measures = measure_null(params, layout, models)
        else:
            models, measures = measure_fetched_null(params, layout)
        tables = {}
        for name, model in models.items():
            weights = weight_statistics(processed_weights(model), params.stats.neuron_chunk)
            moments = activation_statistics(measures.moments[name], "pre")
            universality = measures.tables[name].assign(is_universal=False)
            tables[name] = neuron_table(universality, weights, moments, None)
    return tables, measures.kept_positions


def run(params: Params, layout: Layout) -> dict:
    """Measure the null group (unless not run); write the tables and the summary."""
    reason = not_run_reason(params)
    tables: dict = {}
    summary: dict = {"run": False, "reason": reason}
    if reason is None:
        tables, kept = null_tables(params, layout)
        sequences = null_params(params).analysis.max_sequences
        summary = {"run": True, "kept_positions": int(kept), "sequences": sequences}
        summary["null_group"] = params.uncertainty.null_group
    with atomic_outputs() as outputs:
        temp = outputs.path(layout.stage_dir("null_measures"))
        temp.mkdir()
        for name, table in tables.items():
            table.to_parquet(temp / f"{name}.parquet", index=False)
        (temp / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary


def _lines(summary: dict) -> str:
    if not summary["run"]:
        return f"null group not measured: {summary['reason']}"
    return f"null group measured over {summary['kept_positions']:,} positions"


COMMAND = Stage(
    name="null_measures",
    params=(
        "analysis",
        "baseline",
        "correlate.products",
        "correlate.dead_variance",
        "group.preset",
        "model",
        "stats.neuron_chunk",
        "tokens.context",
        "train.seeds",
        "uncertainty.null_group",
        "uncertainty.null_max_sequences",
    ),
    scale_params=("correlate",),
    inputs=lambda layout: [layout.tokens],
    outputs=lambda layout: [Out(layout.stage_dir("null_measures"))],
    run=run,
    render=_lines,
)

if __name__ == "__main__":
    stage_main(COMMAND, __doc__)
