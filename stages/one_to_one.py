"""Stage one_to_one: one-to-one matching, a stricter notion than max correlation.

Correlate's matching of every pair (the maximum-weight assignment of the correlation matrix
and the mutual best matches, taken while it held the full pair statistics:
``matching.pair_reductions``) + the universality tables -> per neuron
its assigned partner and correlation per partner, the mean assigned correlation minus the
universality baseline (``one_to_one_excess``), ``is_one_to_one_universal`` (above
``universality.threshold``) and ``mutual_partners``.

Writes ``data/one_to_one/seed{s}.parquet`` and ``summary.json``, ``results/one_to_one.json``
(per model: % universal by max correlation and by one-to-one matching, % mutual with every
partner, overlap counts; per pair: mean assigned correlation, fraction of mutual matches)
and its headline
``metrics/one_to_one.json``. Above ``correlate.full_pairs_max_neurons`` correlate never holds
a pair's full statistics: the stage then writes that the matching is not available at this
size.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from universal_neurons.io import atomic_outputs, read_parquet
from universal_neurons.matching.one_to_one import (
    NOT_AVAILABLE,
    headline,
    model_comparison,
    one_to_one_table,
)
from universal_neurons.matching.pair_reductions import load_matches
from universal_neurons.pipeline.command import Out, Stage, as_json
from universal_neurons.pipeline.inputs import (
    check_same_inputs,
    correlate_summary,
    summary_of,
    write_summary,
)
from universal_neurons.pipeline.layout import SUMMARY_FILE, Layout, model_name
from universal_neurons.pipeline.runner import stage_main

if TYPE_CHECKING:
    from universal_neurons.config import Params


def run(params: Params, layout: Layout) -> dict:
    """Match every pair one-to-one (or record why not); return the results document."""
    summary = correlate_summary(params, layout)
    correlate_path, universality_path = layout.summary("correlate"), layout.summary("universality")
    check_same_inputs(
        {correlate_path: summary.provenance, universality_path: summary_of(universality_path)}
    )
    threshold = params.universality.threshold
    results: dict = {"threshold": threshold, "available": summary.outputs == "full_pairs"}
    tables = {}
    if results["available"]:
        n = summary.n_layers * summary.d_mlp
        folder = layout.stage_dir("correlate")
        matches, results["pairs"] = load_matches(folder, summary.pairs, n)
        for seed in params.train.seeds:
            name = model_name(seed)
            universality = read_parquet(layout.table("universality", name), "universality")
            tables[name] = one_to_one_table(universality, matches[name], threshold)
        results["models"] = {name: model_comparison(table) for name, table in tables.items()}
    else:
        results["reason"] = NOT_AVAILABLE
    with atomic_outputs() as outputs:  # the three outputs change together or not at all
        temp = outputs.path(layout.stage_dir("one_to_one"))
        temp.mkdir()
        for name, table in tables.items():
            table.to_parquet(temp / f"{name}.parquet", index=False)
        write_summary(temp / SUMMARY_FILE, summary.provenance.as_dict())
        outputs.write_json(layout.result("one_to_one.json"), results)
        outputs.write_json(layout.metric("one_to_one.json"), headline(results))
    return results


COMMAND = Stage(
    name="one_to_one",
    params=("train.seeds", "universality"),
    inputs=lambda layout: [layout.stage_dir("correlate"), layout.stage_dir("universality")],
    outputs=lambda layout: [
        Out(layout.stage_dir("one_to_one")),
        Out(layout.result("one_to_one.json"), cache=False),
        Out(layout.metric("one_to_one.json"), kind="metrics", cache=False),
    ],
    run=run,
    render=lambda results: as_json(results.get("models", results)),
)

if __name__ == "__main__":
    stage_main(COMMAND, __doc__)
