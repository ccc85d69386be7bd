"""One streaming pass of a model group: every pair's cross-correlation statistics, then the maxima.

Every model sees each batch once; for every unordered pair ``(a, b)`` (``a`` before ``b``
in the group's order) one ``CrossMoments`` over all neurons of ``a`` (x) and of ``b`` (y)
is updated. Only the current batch's activations are held. From a pair's statistics
both directions follow: for each neuron of ``a`` the maximum over all neurons of all
layers of ``b`` (row maxima) and vice versa (column maxima).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from universal_neurons.collect import check_finite_statistics, model_batches
from universal_neurons.correlation import CrossMoments, MaxCorrelation, max_correlations
from universal_neurons.models import model_shape


def resolve_products(products: str, device: str) -> str:
    """``auto`` -> ``bfloat16`` on CUDA, ``float32`` on CPU; anything else as given."""
    if products == "auto":
        return "bfloat16" if device.startswith("cuda") else "float32"
    return products


def pair_key(a: str, b: str) -> str:
    """File stem of the statistics of the pair ``(a, b)``."""
    return f"{a}__{b}"


@dataclass
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
    device: str = "cpu",
    progress: bool = True,
) -> GroupStatistics:
    """Stream ``tokens [sequences, pos]`` once through every model; update every pair.

    ``models``: ``{name: loaded model}`` (same architecture); ``products``: the per-batch
    product precision (``float64``, ``float32`` or ``bfloat16``).
    """
    names = list(models)
    if len(names) < 2:
        raise ValueError(f"train.seeds: correlate needs at least 2 models, got {names}")
    shapes = {name: model_shape(model) for name, model in models.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"models of a group must share (n_layers, d_mlp), got {shapes}")
    n_layers, d_mlp = shapes[names[0]]
    n = n_layers * d_mlp
    pairs = {pair: CrossMoments.empty(n, n, device) for pair in combinations(names, 2)}
    streams = {
        name: model_batches(model, name, tokens, excluded_ids, batch_size, ("post",), device)
        for name, model in models.items()
    }
    total = (len(tokens) + batch_size - 1) // batch_size
    batches = 0
    for number in tqdm(range(total), desc="correlate", disable=not progress):
        acts = {name: next(stream)[1]["post"] for name, stream in streams.items()}
        for a, b in pairs:
            pairs[(a, b)] = pairs[(a, b)].update(acts[a], acts[b], products)  # type: ignore[arg-type]
            check_finite_statistics(pairs[(a, b)], a, b, d_mlp, number)
        batches += 1
        del acts
    kept = next(iter(pairs.values())).count
    return GroupStatistics(names, n_layers, d_mlp, kept, batches, pairs)


def maxima_frame(
    model: str, partner: str, result: MaxCorrelation, dead: np.ndarray, n_layers: int, d_mlp: int
) -> pd.DataFrame:
    """Rows ``model, partner, layer, index, dead, max_corr, argmax_layer, argmax_index``."""
    argmax = result.argmax
    valid = argmax >= 0
    return pd.DataFrame(
        {
            "model": model,
            "partner": partner,
            "layer": np.repeat(np.arange(n_layers, dtype=np.int64), d_mlp),
            "index": np.tile(np.arange(d_mlp, dtype=np.int64), n_layers),
            "dead": dead,
            "max_corr": result.max_corr,
            "argmax_layer": np.where(valid, argmax // d_mlp, -1),
            "argmax_index": np.where(valid, argmax % d_mlp, -1),
        }
    )


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
    table = pd.concat(frames, ignore_index=True)
    order = {name: i for i, name in enumerate(stats.names)}
    table = table.sort_values(
        ["model", "partner", "layer", "index"],
        key=lambda col: col.map(order) if col.name in ("model", "partner") else col,
    ).reset_index(drop=True)
    return table, dead_counts
