"""Stage stats: the neuron table of every model and universal vs other neurons.

Universality table + activation moments + weight statistics (the weight_stats stage) -> the
neuron table per model,
the universal-vs-other comparison (``results/stats.json``: per model, and ``pooled``: each of
the paper's findings over the whole group, a stratified test and an effect-size interval,
``description.findings``; headline: in how many models each finding holds,
``metrics/findings.json``) and its figures.

Writes ``data/stats/``: ``seed{s}.parquet`` (the neuron tables), ``per_layer.csv`` (medians per
layer and group) and ``plots/*.png``; ``results/stats.json``, ``metrics/findings.json`` and
``metrics/stats_percentiles.csv``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
from tqdm import tqdm

from universal_neurons.description.findings import pooled_findings
from universal_neurons.description.statistics import (
    METRICS,
    activation_statistics,
    compare_universal,
    findings_holding,
    first_universal_tokens,
    neuron_table,
    per_layer_medians,
    universal_percentile_summary,
    universal_percentiles,
)
from universal_neurons.io import StageOutputs, atomic_outputs, read_parquet
from universal_neurons.outputs.plots import plot_per_layer, plot_percentile_boxen
from universal_neurons.pipeline.command import Out, Stage
from universal_neurons.pipeline.inputs import (
    Provenance,
    check_same_inputs,
    collect_summaries,
    group_names,
    summary_of,
    write_summary,
)
from universal_neurons.pipeline.layout import SUMMARY_FILE, Layout, model_name
from universal_neurons.pipeline.runner import stage_main

# ``python -P`` (as DVC runs a stage) leaves this folder off the import path: the folder above
# it goes on the end of it, for the universality stage's tables (``candidate_tables``).
sys.path.append(str(Path(__file__).resolve().parents[1]))
from stages.universality import universality_tables  # noqa: E402

if TYPE_CHECKING:
    from universal_neurons.config import Params


def first_universal(params: Params, layout: Layout) -> pd.DataFrame | None:
    """The emergence stage's ``first_universal_tokens`` of every model of the trained group;
    None for a pretrained group (it has no training checkpoints)."""
    if params.group.preset != "trained":
        return None
    path = layout.stage_dir("emergence") / "neurons.parquet"
    return first_universal_tokens(read_parquet(path, "emergence"))


def model_table(params: Params, layout: Layout, seed: int) -> pd.DataFrame:
    """The neuron table of the model of ``seed``. The universality table is read first: a
    missing input names the stage to run in the order a user meets them."""
    name = model_name(seed)
    universality = read_parquet(layout.table("universality", name), "universality")
    first = first_universal(params, layout)
    emergence = None if first is None else first[first["model"] == name]
    return neuron_statistics(layout, seed, universality, emergence)


def neuron_statistics(
    layout: Layout,
    seed: int,
    universality: pd.DataFrame,
    emergence: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """``statistics.neuron_table`` of the model of ``seed``: its ``universality`` table
    joined with its weight statistics (the weight_stats stage's table) and the activation
    statistics of its collect moments (``emergence``: its first-universal rows, or None)."""
    moments = read_parquet(layout.model_dir("collect", seed) / "moments.parquet", "collect")
    weights = read_parquet(layout.table("weight_stats", model_name(seed)), "weight_stats")
    return neuron_table(universality, weights, activation_statistics(moments, "pre"), emergence)


def candidate_tables(params: Params, layout: Layout) -> dict[str, pd.DataFrame]:
    """Every model's neuron table with ``is_universal`` at ``universality.candidate_threshold``
    (the candidates) instead of τ, and no emergence column values: what the stages that do
    not depend on τ describe. Made from correlate and baseline, not from the universality
    stage (whose tables change with τ)."""
    _, tables = universality_tables(params, layout, params.universality.candidate_threshold)
    return {
        name: neuron_statistics(layout, seed, tables[name])
        for seed, name in zip(params.train.seeds, tables, strict=True)
    }


def _write_tables(
    outputs: StageOutputs, tables: dict[str, pd.DataFrame], layout: Layout, inputs: Provenance
) -> None:
    """The neuron tables, the per-layer medians, the two figures and ``summary.json`` (the
    token set and group, ``inputs``) in one atomic step, and the pooled percentiles of the
    universal neurons."""
    temp = outputs.path(layout.stage_dir("stats"))
    (temp / "plots").mkdir(parents=True)
    write_summary(temp / SUMMARY_FILE, inputs.as_dict())
    for model, table in tables.items():
        table.to_parquet(temp / f"{model}.parquet", index=False)
    medians = {model: per_layer_medians(table) for model, table in tables.items()}
    per_layer = pd.concat(
        [table.assign(model=model) for model, table in medians.items()], ignore_index=True
    )
    per_layer.insert(0, "model", per_layer.pop("model"))
    per_layer.to_csv(temp / "per_layer.csv", index=False)
    plot_percentile_boxen(
        universal_percentiles(tables), len(tables), temp / "plots" / "universal_percentiles.png"
    )
    plot_per_layer(medians, METRICS, temp / "plots" / "per_layer.png")
    percentiles = outputs.path(layout.metric("stats_percentiles.csv"))
    universal_percentile_summary(tables).to_csv(percentiles, index=False)


def checked_inputs(params: Params, layout: Layout) -> Provenance:
    """The universality stage's summary, checked to describe the token set and group that
    collect's outputs describe; it is what the neuron tables are made from."""
    path = layout.summary("universality")
    if not path.is_file():  # the tables come first: a missing stage is named by them
        read_parquet(
            layout.table("universality", model_name(params.train.seeds[0])), "universality"
        )
    summary = summary_of(path)
    check_same_inputs({path: summary, **collect_summaries(params, layout)}, group_names(params))
    return Provenance(summary.token_set, group=group_names(params))


def run(params: Params, layout: Layout) -> dict:
    """Write every model's neuron table and figures; return ``{"models": {name: comparison},
    "pooled": {metric: pooled comparison}}``."""
    inputs = checked_inputs(params, layout)
    tables = {
        model_name(seed): model_table(params, layout, seed)
        for seed in tqdm(params.train.seeds, desc="stats", unit="model")
    }
    comparison = {
        "models": {model: compare_universal(table) for model, table in tables.items()},
        "pooled": pooled_findings(tables),
    }
    with atomic_outputs() as outputs:  # the stage's outputs change together or not at all
        _write_tables(outputs, tables, layout, inputs)
        outputs.write_json(layout.result("stats.json"), comparison)
        findings = findings_holding(comparison, params.stats.alpha)
        outputs.write_json(layout.metric("findings.json"), findings)
    return comparison


def _wrote(comparison: dict) -> str:
    layout = Layout()
    return (
        f"wrote {layout.stage_dir('stats')}, {layout.result('stats.json')} and "
        f"{layout.metric('findings.json')} "
        f"({len(comparison['models'])} models)"
    )


COMMAND = Stage(
    name="stats",
    params=("train.seeds", "stats"),
    inputs=lambda layout: [
        layout.stage_dir("weight_stats"),
        layout.stage_dir("collect"),
        layout.stage_dir("universality"),
    ],
    trained_inputs=lambda layout: [layout.stage_dir("emergence")],
    outputs=lambda layout: [
        Out(layout.stage_dir("stats")),
        Out(layout.result("stats.json"), cache=False),
        Out(layout.metric("findings.json"), kind="metrics", cache=False),
        Out(layout.metric("stats_percentiles.csv"), kind="plots", cache=False),
    ],
    run=run,
    render=_wrote,
)

if __name__ == "__main__":
    stage_main(COMMAND, __doc__)
