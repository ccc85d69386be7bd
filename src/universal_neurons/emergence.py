"""Universality across training: the universality test of a group, run in memory on any
set of models (the training checkpoints of the seed group, or its final models).

``group_universality`` calls exactly the functions the collect, correlate, baseline and
universality stages call, in the same order, without files in between: given the final
models and the stages' analysis set it gives the universality stage's numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from universal_neurons.baseline import pair_baselines
from universal_neurons.collect import collect_model
from universal_neurons.config import BaselineConfig
from universal_neurons.pairs import correlate_group, pair_maxima
from universal_neurons.universality import model_summary, universality_table


@dataclass(frozen=True)
class GroupUniversality:
    """The universality test of one group of models.

    ``tables``: per model, the neuron table (``universality.TABLE_COLUMNS``, one row per
    neuron); ``summaries``: per model, ``universality.model_summary``; ``kept_positions``:
    token positions the statistics are taken over.
    """

    tables: dict[str, pd.DataFrame]
    summaries: dict[str, dict]
    kept_positions: int

    def mean_percent_universal(self) -> float:
        """Mean over the models of the percentage of (live) neurons that are universal."""
        return float(np.mean([s["percent_universal"] for s in self.summaries.values()]))

    def median(self, column: str) -> float:
        """Median of ``column`` (e.g. ``mean_corr``, ``mean_baseline``) over every live neuron
        of every model."""
        values = np.concatenate(
            [t.loc[~t["dead"], column].to_numpy(np.float64) for t in self.tables.values()]
        )
        values = values[np.isfinite(values)]
        return float(np.median(values)) if len(values) else float("nan")


@torch.no_grad()
def group_universality(
    models: dict[str, object],
    partner_ids: dict[str, int],
    tokens: np.ndarray,
    excluded_ids: np.ndarray,
    batch_size: int,
    products: str,
    device: str,
    baseline: BaselineConfig,
    dead_variance: float,
    threshold: float,
    progress: bool = False,
) -> GroupUniversality:
    """collect + correlate + baseline + universality of ``models`` over ``tokens [sequences, pos]``.

    ``models``: ``{name: loaded model}`` in the group's order; ``partner_ids``: the integer
    that seeds each model's baseline matrices (its training seed), as in the baseline stage.
    """
    within = {
        name: collect_model(
            model, name, tokens, excluded_ids, batch_size, device, progress=progress
        ).within_layer_covariance()
        for name, model in models.items()
    }
    stats = correlate_group(models, tokens, excluded_ids, batch_size, products, device, progress)
    maxima, _ = pair_maxima(stats, dead_variance)
    frames = [
        pair_baselines(
            pair,
            (a, b),
            (partner_ids[a], partner_ids[b]),
            (within[a], within[b]),
            baseline.kind,
            baseline.samples,
            baseline.seed,
            dead_variance,
        )
        for (a, b), pair in stats.pairs.items()
    ]
    baselines = pd.concat(frames, ignore_index=True)
    tables = {name: universality_table(maxima, baselines, name, threshold) for name in models}
    summaries = {name: model_summary(table, stats.n_layers) for name, table in tables.items()}
    return GroupUniversality(tables, summaries, stats.kept_positions)


def first_universal_tokens(neurons: pd.DataFrame) -> pd.DataFrame:
    """Per neuron, the first training-token count at which it was universal.

    ``neurons``: rows ``model, tokens, layer, index, is_universal`` (one per checkpoint and
    neuron). Returns ``model, layer, index, first_universal_tokens`` (float, NaN where the
    neuron was never universal), sorted by model, layer and index.
    """
    passed = neurons[neurons["is_universal"].to_numpy(bool)]
    first = passed.groupby(["model", "layer", "index"], sort=True)["tokens"].min()
    keys = neurons[["model", "layer", "index"]].drop_duplicates()
    out = keys.merge(
        first.rename("first_universal_tokens").reset_index(), how="left", on=keys.columns.tolist()
    )
    out["first_universal_tokens"] = out["first_universal_tokens"].astype(np.float64)
    return out.sort_values(["model", "layer", "index"], kind="stable").reset_index(drop=True)
