"""The stored pass of the report's neuron pages: what the classify_candidates stage keeps of
its candidates so that the report makes no pass over the token set, loads no model and draws
no histogram for them.

A ``NeuronActivations`` (top contexts with the activation of every token, activation
histograms, vocabulary extremes) is written as ``seed{s}.pages.safetensors``
(``save_activations``, no pickle) and each histogram drawn as
``seed{s}.histograms/<layer>.<index>.png``, for the candidates that can get a page
(``pageable_neurons``: the ``PAGES_PER_MODEL`` of largest excess). The report pages the
``PAGES_PER_MODEL`` most universal neurons of each model (``paged_neurons``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from universal_neurons.description.histogram import StreamingHistogram
from universal_neurons.description.variance import TopActivations

PAGES_PER_MODEL = 200
"""Pages written per model: its most universal neurons (largest excess correlation). At the
paper's sizes (~2,000 universal neurons per GPT-2 small) a page each took ~27 min and ~200 MB;
``neurons/index.html`` still lists every universal neuron with its numbers and says which have
a page (the others: ``universal-neurons neuron``)."""


@dataclass
class NeuronActivations:
    """What one pass over the analysis token set gives for ``neurons`` (``(layer, index)``):
    their top contexts (one per sequence, with the whole sequence's activations) and
    their histograms over the kept positions."""

    neurons: list[tuple[int, int]]
    top: TopActivations
    histogram: StreamingHistogram
    vocab: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None
    """``vocab_extremes`` of the neurons' output weights (``with_vocab``), or None."""


def pages_file(model: str) -> str:
    """The name of a model's stored page activations: ``seed1.pages.safetensors``."""
    return f"{model}.pages.safetensors"


def histograms_dir(model: str) -> str:
    """The folder of a model's stored page histograms beside its ``pages_file``:
    ``seed1.histograms`` (``<layer>.<index>.png``, as the report's pages show them)."""
    return f"{model}.histograms"


def histogram_file(layer: int, index: int) -> str:
    """A neuron's histogram picture, in ``histograms_dir`` and beside its report page:
    ``1.17.png``."""
    return f"{layer}.{index}.png"


PAGE_ARRAYS = ("layer", "index", "values", "sequence", "position", "rows", "width", "low", "counts")
"""The arrays of a stored ``NeuronActivations`` (``save_activations``), ``[n, ...]`` each."""
VOCAB_ARRAYS = ("top_ids", "top_values", "bottom_ids", "bottom_values")
"""Its ``vocab`` arrays, ``[n, VOCAB_TOKENS]`` each, when it has them."""


def save_activations(found: NeuronActivations, path: Path) -> None:
    """Write ``found`` to ``path`` (safetensors: no pickle; equal inputs give equal bytes)."""
    from safetensors.numpy import save_file

    layers, indices = zip(*found.neurons, strict=True) if found.neurons else ((), ())
    top, histogram = found.top, found.histogram
    assert top.rows is not None and top.per_sequence, "a page pass keeps rows, one per sequence"
    arrays = (
        np.asarray(layers, np.int64),
        np.asarray(indices, np.int64),
        top.values.numpy(),
        top.sequence.numpy(),
        top.position.numpy(),
        top.rows.numpy(),
        histogram.width,
        histogram.low,
        histogram.counts,
    )
    named = dict(zip(PAGE_ARRAYS, arrays, strict=True))
    if found.vocab is not None:
        named |= dict(zip(VOCAB_ARRAYS, found.vocab, strict=True))
    save_file({n: np.ascontiguousarray(a) for n, a in named.items()}, path)


def load_activations(path: Path) -> NeuronActivations:
    """The ``NeuronActivations`` that ``save_activations`` wrote to ``path``."""
    from safetensors.numpy import load_file

    a = load_file(path)
    top = TopActivations(
        *(torch.from_numpy(a[n]) for n in ("values", "sequence", "position", "rows")),
        per_sequence=True,
    )
    neurons = [(int(layer), int(i)) for layer, i in zip(a["layer"], a["index"], strict=True)]
    vocab = tuple(a[n] for n in VOCAB_ARRAYS) if all(n in a for n in VOCAB_ARRAYS) else None
    histogram = StreamingHistogram(a["width"], a["low"], a["counts"])
    return NeuronActivations(neurons, top, histogram, vocab)  # type: ignore[arg-type]


def select_activations(
    found: NeuronActivations, neurons: Sequence[tuple[int, int]]
) -> NeuronActivations | None:
    """The part of ``found`` for ``neurons``, in their order; None if one of them is missing."""
    row = {neuron: n for n, neuron in enumerate(found.neurons)}
    if any(neuron not in row for neuron in neurons):
        return None
    rows = [row[neuron] for neuron in neurons]
    top, histogram = found.top, found.histogram
    assert top.rows is not None
    picked = TopActivations(
        top.values[rows], top.sequence[rows], top.position[rows], top.rows[rows], per_sequence=True
    )
    counts = StreamingHistogram(histogram.width[rows], histogram.low[rows], histogram.counts[rows])
    vocab = None if found.vocab is None else tuple(part[rows] for part in found.vocab)
    return NeuronActivations(list(neurons), picked, counts, vocab)  # type: ignore[arg-type]


def paged_neurons(rows: pd.DataFrame) -> dict[str, set]:
    """Per model the neurons that get a page: the first ``PAGES_PER_MODEL`` of its
    ``universal_rows`` (the most universal)."""
    first = rows.groupby("model", sort=False).head(PAGES_PER_MODEL)
    paged: dict[str, set] = {model: set() for model in rows["model"].unique()}
    for r in first.itertuples(index=False):
        paged[r.model].add((int(r.layer), int(r.index)))
    return paged


def pageable_neurons(stats: pd.DataFrame) -> list[tuple[int, int]]:
    """The neurons of ``stats`` (a neuron table, ``is_universal`` at some threshold) that can get
    a page at that threshold or any higher one: its ``PAGES_PER_MODEL`` universal neurons of
    largest excess correlation (ties in table order, as ``paged_neurons`` breaks them), in
    ``(layer, index)`` order. A higher threshold keeps a prefix of that order, so its paged
    neurons are among these."""
    universal = stats[stats["is_universal"].astype(bool)]
    first = universal.sort_values("excess_corr", ascending=False, kind="stable")
    keys = first.head(PAGES_PER_MODEL)[["layer", "index"]].astype(int).itertuples(index=False)
    return sorted((int(layer), int(index)) for layer, index in keys)
