"""Stage weight_stats: the weight and vocabulary statistics of every neuron, independent of τ.

Each model of the group -> ``data/weight_stats/seed{s}.parquet``: one row per neuron,
``layer, index`` and ``statistics.WEIGHT_METRICS`` and ``VOCAB_METRICS`` (norms, input bias,
input-output cosine, the moments of its output weights' cosines with the unembedding), from
the processed weights (``models.loading.processed_weights``), in float64.

They depend on the weights alone, so they are computed once here: the stats stage (which
τ changes) and the candidate stages join them to their tables instead of loading every
model again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tqdm import tqdm

from universal_neurons.description.statistics import weight_statistics
from universal_neurons.io import atomic_outputs
from universal_neurons.models.loading import load_model, processed_weights
from universal_neurons.pipeline.command import Out, Stage
from universal_neurons.pipeline.layout import Layout, model_name
from universal_neurons.pipeline.runner import stage_main

if TYPE_CHECKING:
    import pandas as pd

    from universal_neurons.config import Params


def model_weight_statistics(params: Params, layout: Layout, seed: int) -> pd.DataFrame:
    """``statistics.weight_statistics`` of the model of ``seed`` (``[neurons]`` rows)."""
    model = load_model(str(layout.model(seed)))
    return weight_statistics(processed_weights(model), params.stats.neuron_chunk)


def run(params: Params, layout: Layout) -> dict:
    """Write every model's weight statistics in one atomic step; return the rows per model."""
    tables = {
        model_name(seed): model_weight_statistics(params, layout, seed)
        for seed in tqdm(params.train.seeds, desc="weight_stats", unit="model")
    }
    with atomic_outputs() as outputs:
        temp = outputs.path(layout.stage_dir("weight_stats"))
        temp.mkdir()
        for name, table in tables.items():
            table.to_parquet(temp / f"{name}.parquet", index=False)
    return {name: len(table) for name, table in tables.items()}


COMMAND = Stage(
    name="weight_stats",
    params=("train.seeds", "stats.neuron_chunk"),
    inputs=lambda layout: [layout.models],
    outputs=lambda layout: [Out(layout.stage_dir("weight_stats"))],
    run=run,
)

if __name__ == "__main__":
    stage_main(COMMAND, __doc__)
