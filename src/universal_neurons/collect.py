"""Streaming the analysis token set through models: per-neuron moments and within-layer covariance.

Neurons of a model are numbered ``layer * d_mlp + index`` (layer-major), so the
activations of one batch at the kept positions form a matrix ``[kept tokens, neurons]``.
Nothing but one batch of activations is ever held; statistics are merged exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from universal_neurons.activations import iter_batches, kept_mask
from universal_neurons.correlation import CrossMoments
from universal_neurons.models import capture_mlp, model_shape
from universal_neurons.moments import StreamingMoments


class NonFiniteActivationError(RuntimeError):
    """A model produced NaN or infinite activations; the message names model, layer and batch."""


def check_finite(activations: torch.Tensor, model_name: str, batch: int, kind: str) -> None:
    """Raise ``NonFiniteActivationError`` if ``activations [layers, ...]`` holds NaN/inf."""
    finite = torch.isfinite(activations)
    if bool(finite.all()):
        return
    bad_layers = [layer for layer in range(activations.shape[0]) if not bool(finite[layer].all())]
    raise NonFiniteActivationError(
        f"model {model_name}: non-finite {kind}-activations in layer {bad_layers[0]} "
        f"(layers {bad_layers}) at analysis batch {batch}; the model or its weights are broken"
    )


class NonFiniteStatisticsError(RuntimeError):
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
    bad = ~torch.isfinite(stats.cxy)
    if not bool(bad.any()):
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


def model_batches(
    model,
    model_name: str,
    tokens: np.ndarray,
    excluded_ids: np.ndarray,
    batch_size: int,
    kinds: tuple[str, ...] = ("post",),
    device: str = "cpu",
) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
    """``(batch number, {kind: [kept tokens, neurons]})`` for each batch of ``tokens [sequences, pos]``.

    Activations are checked to be finite (all positions) before the excluded
    positions are dropped.
    """
    for number, batch in iter_batches(tokens, batch_size):
        mask = kept_mask(batch, excluded_ids)
        captured = capture_mlp(model, batch.to(device), kinds)
        out = {}
        for kind in kinds:
            check_finite(captured[kind], model_name, number, kind)
            out[kind] = kept_neuron_matrix(captured[kind], mask)
        yield number, out


@dataclass
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
    device: str = "cpu",
    products: str = "float32",
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
            within[layer] = within[layer].update(block, block, products)  # type: ignore[arg-type]
            check_finite_statistics(within[layer], model_name, model_name, d_mlp, number, layer)
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


def load_analysis_set(tokens_dir, config) -> tuple[np.ndarray, np.ndarray, int]:
    """The analysis token set of ``params.analysis``: ``(tokens [sequences, pos], excluded ids, kept positions)``.

    Raises ``NoKeptPositionsError`` when every position is excluded.
    """
    from universal_neurons.activations import analysis_tokens, count_kept, excluded_token_ids
    from universal_neurons.tokens import check_token_ids, load_tokenizer, load_tokens

    tokenizer = load_tokenizer(tokens_dir)
    tokens = analysis_tokens(load_tokens(tokens_dir, config.split), config)
    check_token_ids(
        tokens, tokenizer.get_vocab_size(), str(Path(tokens_dir) / f"{config.split}_tokens.npy")
    )
    excluded = excluded_token_ids(tokenizer, config)
    return tokens, excluded, count_kept(tokens, excluded)
