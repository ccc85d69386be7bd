"""A model group's pairs: the one-pass correlation statistics of every pair, and the maxima.

For every unordered pair ``(a, b)`` (``a`` before ``b`` in the group's order) one
``CrossMoments`` over all neurons of ``a`` (x) and of ``b`` (y). ``correlate_group`` computes
them in memory as one pass of work units (``units.correlate_pass``): every model sees each
batch once and only the current batch's activations are held. From a pair's statistics
both directions follow: for each neuron of ``a`` the maximum over all neurons of all
layers of ``b`` (row maxima) and vice versa (column maxima).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from universal_neurons.errors import UserError
from universal_neurons.matching.correlation import CrossMoments, max_correlations
from universal_neurons.matching.maxima import maxima_frame, sorted_maxima
from universal_neurons.matching.units import PassSettings, correlate_pass, plan_units
from universal_neurons.models.loading import model_shape


def resolve_products(products: str, device: str) -> str:
    """``auto`` -> ``bfloat16`` on CUDA, ``float32`` on CPU; anything else as given."""
    if products == "auto":
        return "bfloat16" if device.startswith("cuda") else "float32"
    return products


def pair_key(a: str, b: str) -> str:
    """File stem of the statistics of the pair ``(a, b)``."""
    return f"{a}__{b}"


@dataclass(frozen=True)
class GroupStatistics:
    """Result of one pass over a group: ``pairs[(a, b)]`` with ``a`` before ``b`` in ``names``."""

    names: list[str]
    n_layers: int
    d_mlp: int
    kept_positions: int
    batches: int
    pairs: dict[tuple[str, str], CrossMoments]


@torch.no_grad()
def correlate_group(
    models: dict[str, object],
    tokens: np.ndarray,
    excluded_ids: np.ndarray,
    batch_size: int,
    products: str = "float32",
    *,
    device: str = "cpu",
    progress: bool = True,
) -> GroupStatistics:
    """Stream ``tokens [sequences, pos]`` once through every model; every pair's statistics.

    ``models``: ``{name: loaded model}`` (same architecture); ``products``: the per-batch
    product precision (``float64``, ``float32`` or ``bfloat16``). The pass is the work-unit
    plan of the whole group without neuron blocks or token shards, run in memory.
    """
    names = list(models)
    if len(names) < 2:
        raise UserError(f"train.seeds: correlate needs at least 2 models, got {names}")
    shapes = {name: model_shape(model) for name, model in models.items()}
    if len(set(shapes.values())) != 1:
        raise UserError(f"models of a group must share (n_layers, d_mlp), got {shapes}")
    n_layers, d_mlp = shapes[names[0]]
    units = plan_units(names, n_layers * d_mlp, len(tokens), batch_size)
    settings = PassSettings(batch_size, products, device)
    stats, batches = correlate_pass(units, models, (tokens, excluded_ids), settings, progress)
    pairs = {(unit.a, unit.b): pair for unit, pair in stats.items()}
    kept = next(iter(pairs.values())).count
    return GroupStatistics(names, n_layers, d_mlp, kept, batches, pairs)


def pair_maxima(
    stats: GroupStatistics, dead_variance: float = 0.0
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Both directions of every pair as one table (see ``maxima_frame``), and dead counts per model."""
    frames, dead_counts = [], {}
    for (a, b), pair in stats.pairs.items():
        forward, backward = max_correlations(pair, dead_variance)
        dead_a = (pair.var_x() <= dead_variance).cpu().numpy()
        dead_b = (pair.var_y() <= dead_variance).cpu().numpy()
        dead_counts[a], dead_counts[b] = int(dead_a.sum()), int(dead_b.sum())
        frames.append(maxima_frame(a, b, forward, dead_a, stats.n_layers, stats.d_mlp))
        frames.append(maxima_frame(b, a, backward, dead_b, stats.n_layers, stats.d_mlp))
    return sorted_maxima(frames, stats.names), dead_counts
