"""Streaming the analysis token set through models: per-neuron moments and within-layer covariance.

Neurons of a model are numbered ``layer * d_mlp + index`` (layer-major), so the
activations of one batch at the kept positions form a matrix ``[kept tokens, neurons]``.
Nothing but one batch of activations is ever held; statistics are merged exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from universal_neurons.errors import UserError
from universal_neurons.matching.activations import iter_batches, kept_mask
from universal_neurons.matching.correlation import SCRATCH, CrossMoments
from universal_neurons.matching.moments import StreamingMoments
from universal_neurons.models.loading import capture_mlp, model_shape


class NonFiniteActivationError(UserError):
    """A model produced NaN or infinite activations; the message names model, layer and batch."""


def check_finite(
    activations: torch.Tensor, model_name: str, batch: int, kind: str, first_layer: int = 0
) -> None:
    """Raise ``NonFiniteActivationError`` if ``activations [layers, ...]`` holds NaN/inf.

    ``first_layer``: the model's layer number of ``activations[0]`` (a capture of later
    layers only), so that the message names the model's own layer.
    """
    finite = torch.isfinite(activations)
    if bool(finite.all()):
        return
    bad_layers = [
        first_layer + layer
        for layer in range(activations.shape[0])
        if not bool(finite[layer].all())
    ]
    raise NonFiniteActivationError(
        f"model {model_name}: non-finite {kind}-activations in layer {bad_layers[0]} "
        f"(layers {bad_layers}) at analysis batch {batch}; the model or its weights are broken"
    )


class NonFiniteStatisticsError(UserError):
    """Statistics that overflowed although the activations were finite (e.g. float32 products
    of huge activations); the message names the models, layers and batch."""


def check_finite_statistics(
    stats: CrossMoments, x: str, y: str, d_mlp: int, batch: int, layer: int | None = None
) -> None:
    """Raise ``NonFiniteStatisticsError`` if the cross-product sums ``stats.cxy [n_x, n_y]``
    of models ``x`` and ``y`` hold NaN/inf after analysis batch ``batch``.

    Neurons are numbered ``layer * d_mlp + index`` over all layers, or are those of
    ``layer`` alone when it is given (within-layer statistics). Dead neurons are not an
    error: their sums are finite zeros and their correlation is NaN by definition later.
    """
    if bool(torch.isfinite(stats.cxy.sum())):  # one pass: any NaN/inf makes the sum non-finite
        return
    bad = ~torch.isfinite(stats.cxy)
    if not bool(bad.any()):  # finite sums whose total overflowed: nothing to report
        return
    rows, cols = torch.nonzero(bad, as_tuple=True)
    row, col = int(rows[0]), int(cols[0])
    if layer is not None:
        where = f"model {x} layer {layer}"
    else:
        where = f"models {x} (layer {row // d_mlp}) and {y} (layer {col // d_mlp})"
    raise NonFiniteStatisticsError(
        f"{where}: correlation statistics became non-finite at analysis batch {batch} "
        f"(neurons {row % d_mlp} x {col % d_mlp}); the activations are too large for the "
        "per-batch products (correlate.products: float64 has more range)"
    )


def kept_neuron_matrix(activations: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[layers, batch, pos, d_mlp]`` at the kept positions ``mask [batch, pos]`` -> ``[kept, layers*d_mlp]``."""
    layers, _, _, d_mlp = activations.shape
    kept = activations[:, mask.to(activations.device)]  # [layers, kept, d_mlp]
    return kept.permute(1, 0, 2).reshape(-1, layers * d_mlp)


def kept_activations(
    model,
    model_name: str,
    batch: torch.Tensor,
    mask: torch.Tensor,
    number: int,
    kinds: tuple[str, ...] = ("post",),
    layers: range | None = None,
    device: str = "cpu",
) -> dict[str, torch.Tensor]:
    """``{kind: [kept tokens, len(layers) * d_mlp]}`` of one analysis batch ``[batch, pos]``.

    The activations of ``layers`` (default all) are checked to be finite at every position
    (naming analysis batch ``number``) before the positions outside ``mask`` are dropped.
    """
    captured = capture_mlp(model, batch.to(device), kinds, layers)
    first_layer = 0 if layers is None else layers.start
    out = {}
    for kind in kinds:
        check_finite(captured[kind], model_name, number, kind, first_layer)
        out[kind] = kept_neuron_matrix(captured[kind], mask)
    return out


def model_batches(
    model,
    model_name: str,
    tokens: np.ndarray,
    excluded_ids: np.ndarray,
    batch_size: int,
    kinds: tuple[str, ...] = ("post",),
    device: str = "cpu",
) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
    """``(batch number, {kind: [kept tokens, neurons]})`` for each batch of ``tokens [sequences, pos]``
    (see ``kept_activations``)."""
    for number, batch in iter_batches(tokens, batch_size):
        mask = kept_mask(batch, excluded_ids)
        yield number, kept_activations(model, model_name, batch, mask, number, kinds, None, device)


@dataclass(frozen=True)
class CollectResult:
    """What one pass over the token set gives for one model.

    ``moments``: per kind, ``StreamingMoments`` over ``[n_layers * d_mlp]`` neurons;
    ``within``: per layer, ``CrossMoments`` of the layer's post-activations with themselves
    (``cxy`` is the within-layer covariance sum ``[d_mlp, d_mlp]``).
    """

    n_layers: int
    d_mlp: int
    kept_positions: int
    batches: int
    moments: dict[str, StreamingMoments]
    within: list[CrossMoments]

    def within_layer_covariance(self) -> np.ndarray:
        """Population covariance of post-activations within each layer ``[layers, d_mlp, d_mlp]`` float64."""
        return np.stack([w.covariance().cpu().numpy() for w in self.within])


@torch.no_grad()
def collect_model(
    model,
    model_name: str,
    tokens: np.ndarray,
    excluded_ids: np.ndarray,
    batch_size: int,
    *,
    device: str = "cpu",
    progress: bool = True,
) -> CollectResult:
    """One streaming pass of ``tokens [sequences, pos]`` through ``model``.

    Moments of pre- and post-activations over the kept positions, and the
    within-layer covariance of post-activations (what the analytic baseline needs).
    """
    n_layers, d_mlp = model_shape(model)
    moments = {kind: StreamingMoments.empty(n_layers * d_mlp) for kind in ("pre", "post")}
    within = [CrossMoments.empty(d_mlp, d_mlp, device) for _ in range(n_layers)]
    batches = 0
    stream = model_batches(
        model, model_name, tokens, excluded_ids, batch_size, ("pre", "post"), device
    )
    total = (len(tokens) + batch_size - 1) // batch_size
    for number, acts in tqdm(
        stream, total=total, desc=f"collect {model_name}", disable=not progress
    ):
        batches += 1
        for kind in ("pre", "post"):
            moments[kind] = moments[kind].update(acts[kind])
        post = acts["post"]
        for layer in range(n_layers):
            block = post[:, layer * d_mlp : (layer + 1) * d_mlp]
            within[layer] = within[layer].update(block, block, "float32")
            check_finite_statistics(within[layer], model_name, model_name, d_mlp, number, layer)
    SCRATCH.clear()  # the update's work buffers
    kept = moments["post"].count
    return CollectResult(n_layers, d_mlp, kept, batches, moments, within)


def moments_table(result: CollectResult) -> pd.DataFrame:
    """One row per neuron: ``layer, index, count`` and ``{pre,post}_{mean,var,skew,kurt,sparsity}``."""
    n = result.n_layers * result.d_mlp
    table = {
        "layer": np.repeat(np.arange(result.n_layers, dtype=np.int64), result.d_mlp),
        "index": np.tile(np.arange(result.d_mlp, dtype=np.int64), result.n_layers),
        "count": np.full(n, result.kept_positions, dtype=np.int64),
    }
    for kind in ("pre", "post"):
        m = result.moments[kind]
        table[f"{kind}_mean"] = m.mean
        table[f"{kind}_var"] = m.var
        table[f"{kind}_skew"] = m.skew
        table[f"{kind}_kurt"] = m.kurt
        table[f"{kind}_sparsity"] = m.sparsity
    return pd.DataFrame(table)
