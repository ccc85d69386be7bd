"""Stage null_control: each finding against what the selection of universal neurons alone gives.

With ``uncertainty.null_group: untrained`` the null group is the group's models at
initialisation (``models.gpt2.init_model`` with each seed, exactly the train stage's step 0),
measured on the first ``uncertainty.null_max_sequences`` analysis sequences by the same
in-memory universality test as the emergence stage and the same neuron statistics as the
stats stage. Per null model the ``K`` live neurons of highest excess correlation are selected,
``K`` = the real model's number of universal neurons; the paper's findings are tested on that
selection, per model and pooled, and each real pooled finding (``results/stats.json``) is
judged against it: ``explained by selection`` or ``beyond selection`` (docs/statistics.md).

Writes ``data/null_control/`` (``seed{s}.parquet``: the null neuron tables with
``is_selected``; ``summary.json``) and ``results/null_control.json``. With ``null_group:
none``, or for a pretrained group (no train-stage initialisation), both say ``"run": false``.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from universal_neurons.description.findings import pooled_findings
from universal_neurons.description.null_control import (
    SELECTED_COLUMN,
    against_null,
    null_model_summary,
    with_selection,
)
from universal_neurons.description.statistics import (
    activation_statistics,
    neuron_table,
    weight_statistics,
)
from universal_neurons.errors import UserError
from universal_neurons.io import atomic_outputs, read_json, read_parquet
from universal_neurons.matching.activations import load_analysis_set
from universal_neurons.matching.emergence import GroupUniversality, group_universality
from universal_neurons.matching.pairs import resolve_products
from universal_neurons.models.gpt2 import gpt2_config, init_model, save_model
from universal_neurons.models.loading import check_device, load_model, processed_weights
from universal_neurons.pipeline.command import Out, Stage
from universal_neurons.pipeline.layout import Layout, model_name
from universal_neurons.pipeline.runner import stage_main
from universal_neurons.text.tokens import end_of_text_id, load_tokenizer

if TYPE_CHECKING:
    from universal_neurons.config import Params


def null_params(params: Params) -> Params:
    """``params`` with ``analysis.max_sequences`` set to the null group's analysis set size."""
    size = params.uncertainty.null_max_sequences or params.analysis.max_sequences
    return params.model_copy(
        update={"analysis": params.analysis.model_copy(update={"max_sequences": size})}
    )


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


def real_counts(params: Params, layout: Layout) -> dict[str, int]:
    """``{model: live universal neurons}`` of the real group (the universality stage's tables)."""
    counts = {}
    for seed in params.train.seeds:
        table = read_parquet(layout.table("universality", model_name(seed)), "universality")
        counts[model_name(seed)] = int((table["is_universal"] & ~table["dead"]).sum())
    return counts


def measure_null(params: Params, layout: Layout, models: dict) -> GroupUniversality:
    """The universality test of the null group over its analysis sequences, in memory."""
    cfg = null_params(params).analysis
    tokens, excluded, _ = load_analysis_set(layout.tokens, cfg)
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
        progress=True,
    )


def null_tables(params: Params, layout: Layout, counts: dict[str, int]) -> tuple[dict, int]:
    """``({model: null neuron table with is_selected}, kept positions)``."""
    check_device(params.analysis.device)
    with tempfile.TemporaryDirectory(prefix="null_control") as scratch:
        models = untrained_models(params, layout, Path(scratch))
        result = measure_null(params, layout, models)
        tables = {}
        for name, model in models.items():
            weights = weight_statistics(processed_weights(model), params.stats.neuron_chunk)
            moments = activation_statistics(result.moments[name], "pre")
            table = neuron_table(result.tables[name], weights, moments, None)
            tables[name] = with_selection(table, counts[name])
    return tables, result.kept_positions


def real_pooled(layout: Layout) -> dict:
    """The stats stage's pooled findings (``results/stats.json``, key ``pooled``)."""
    path = layout.result("stats.json")
    pooled = read_json(path).get("pooled") if path.is_file() else None
    if not isinstance(pooled, dict):
        raise UserError(f"{path}: no pooled findings; run the stats stage first")
    return pooled


def not_run_reason(params: Params) -> str | None:
    """Why the null control is not run (None: it is)."""
    if params.uncertainty.null_group == "none":
        return "uncertainty.null_group is none"
    if params.group.preset != "trained":
        return f"group.preset {params.group.preset}: the untrained null group needs the train stage"
    return None


def null_result(params: Params, layout: Layout, tables: dict, kept: int) -> dict:
    """``results/null_control.json`` of a run: settings, per-model selection and comparison,
    the pooled null findings and each finding against the null."""
    counts = {name: int(table[SELECTED_COLUMN].sum()) for name, table in tables.items()}
    u = params.uncertainty
    pooled = pooled_findings(tables, selected=SELECTED_COLUMN)  # as the stats stage pools
    return {
        "run": True,
        "null_group": u.null_group,
        "sequences": null_params(params).analysis.max_sequences,
        "kept_positions": int(kept),
        "threshold": params.universality.threshold,
        "models": {name: null_model_summary(table, counts[name]) for name, table in tables.items()},
        "pooled": pooled,
        "against_null": against_null(real_pooled(layout), pooled, params.stats.alpha),
    }


def run(params: Params, layout: Layout) -> dict:
    """Measure the null group (unless not run), write the outputs, return the result."""
    reason = not_run_reason(params)
    tables: dict[str, pd.DataFrame] = {}
    if reason is None:
        real_pooled(layout)  # a missing input stops the stage before the measurement
        tables, kept = null_tables(params, layout, real_counts(params, layout))
        result = null_result(params, layout, tables, kept)
    else:
        result = {"run": False, "reason": reason}
    with atomic_outputs() as outputs:  # the two outputs change together or not at all
        temp = outputs.path(layout.stage_dir("null_control"))
        temp.mkdir()
        for name, table in tables.items():
            table.to_parquet(temp / f"{name}.parquet", index=False)
        summary = {key: value for key, value in result.items() if key != "models"}
        (temp / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
        outputs.write_json(layout.result("null_control.json"), result)
    return result


def _lines(result: dict) -> str:
    if not result["run"]:
        return f"null control not run: {result['reason']}"
    rows = [
        f"{entry['finding']}: real {entry['real']} (r = {_signed(entry['real_effect'])}), "
        f"selection alone {entry['null']} (r = {_signed(entry['null_effect'])}): "
        f"{entry['verdict']}"
        for entry in result["against_null"].values()
    ]
    return "\n".join(rows)


def _signed(value: float | None) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:+.2f}"


COMMAND = Stage(
    name="null_control",
    params=(
        "analysis",
        "baseline",
        "correlate.products",
        "correlate.dead_variance",
        "model",
        "tokens.context",
        "train.seeds",
        "universality",
        "stats",
        "uncertainty.null_group",
        "uncertainty.null_max_sequences",
    ),
    inputs=lambda layout: [
        layout.tokens,
        layout.stage_dir("universality"),
        layout.result("stats.json"),
    ],
    outputs=lambda layout: [
        Out(layout.stage_dir("null_control")),
        Out(layout.result("null_control.json"), cache=False),
    ],
    run=run,
    render=_lines,
)

if __name__ == "__main__":
    stage_main(COMMAND, __doc__)
