"""Per-category sums of neuron activations over the features of the analysis token set.

Variance reduction of a binary feature F (a category c of a variable against the rest)
over the kept positions, with activation a:

    VR(F) = (Var(a) - [p Var(a | F) + (1 - p) Var(a | not F)]) / Var(a)
          = n_c n_rest / n * (mean_c - mean_rest)^2 / SS        (law of total variance)

and for a whole categorical variable the correlation ratio
eta^2 = sum_c n_c (mean_c - mean)^2 / SS, where SS = sum (a - mean)^2. Both need only
per-category counts and sums plus the total sum of squares, accumulated in one pass
over the batches in float64 (``FeatureSums``); no activation is stored. The same pass
can keep each neuron's top-k activations and where they occurred (``TopActivations``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from universal_neurons.description.features import FeatureSet, Variable
from universal_neurons.errors import UserError
from universal_neurons.matching.activations import iter_batches, kept_mask
from universal_neurons.matching.collect import NonFiniteActivationError
from universal_neurons.matching.moments import StreamingMoments
from universal_neurons.models.loading import capture_mlp


class FeatureSumsError(UserError):
    """Activations or codes whose shapes do not fit the sums."""


class FeatureSums:
    """Per-category sufficient statistics of ``n_neurons`` activations, for every variable.

    ``count[name]``: float64 ``[K]`` positions per category; ``total[name]``: float64
    ``[K, n_neurons]`` sums of (a - shift) per category; ``moments``: exact streaming
    moments of a over all positions (its ``m2`` is SS). ``shift`` (the first batch's
    mean) keeps the sums well conditioned.
    """

    def __init__(self, variables: Sequence[Variable], n_neurons: int):
        self.variables = list(variables)
        self.n_neurons = n_neurons
        self.count = {v.name: torch.zeros(v.size, dtype=torch.float64) for v in self.variables}
        self.total = {
            v.name: torch.zeros(v.size, n_neurons, dtype=torch.float64) for v in self.variables
        }
        self.moments = StreamingMoments.empty(n_neurons)
        self.shift: torch.Tensor | None = None

    def update(self, activations: torch.Tensor, codes: dict[str, torch.Tensor]) -> None:
        """Add a batch: ``activations`` ``[positions, n_neurons]``, ``codes[name]`` int ``[positions]``."""
        acts = torch.as_tensor(activations).to(torch.float64).cpu()
        if acts.ndim != 2 or acts.shape[1] != self.n_neurons:
            raise FeatureSumsError(
                f"activations: expected [positions, {self.n_neurons}], got {tuple(acts.shape)}"
            )
        if acts.shape[0] == 0:
            return
        if self.shift is None:
            self.shift = acts.mean(dim=0)
        self.moments = self.moments.update(acts)
        shifted = acts - self.shift
        for var in self.variables:
            c = torch.as_tensor(codes[var.name], dtype=torch.int64).cpu()
            if c.shape != (acts.shape[0],):
                raise FeatureSumsError(
                    f"codes[{var.name!r}]: expected shape ({acts.shape[0]},), got {tuple(c.shape)}"
                )
            self.count[var.name] += torch.bincount(c, minlength=var.size).to(torch.float64)
            self.total[var.name].index_add_(0, c, shifted)

    @property
    def ss(self) -> np.ndarray:
        """Total sum of squares about the mean, ``[n_neurons]``."""
        return self.moments.m2

    def variance_reduction(self, name: str) -> np.ndarray:
        """VR of every binary feature ``name == c``: float64 ``[K, n_neurons]`` (NaN where SS = 0)."""
        n_c = self.count[name].numpy()[:, None]
        s_c = self.total[name].numpy()
        n = float(self.moments.count)
        s = s_c.sum(axis=0, keepdims=True)
        n_r = n - n_c
        with np.errstate(divide="ignore", invalid="ignore"):
            diff = np.where(n_c > 0, s_c / n_c, 0.0) - np.where(n_r > 0, (s - s_c) / n_r, 0.0)
            between = np.where((n_c > 0) & (n_r > 0), n_c * n_r / n * diff * diff, 0.0)
            return np.where(self.ss > 0, between / self.ss, np.nan)

    def eta_squared(self, name: str) -> np.ndarray:
        """Correlation ratio of the whole variable: float64 ``[n_neurons]`` (NaN where SS = 0)."""
        n_c = self.count[name].numpy()[:, None]
        s_c = self.total[name].numpy()
        n = float(self.moments.count)
        mean = s_c.sum(axis=0, keepdims=True) / n
        with np.errstate(divide="ignore", invalid="ignore"):
            dev = np.where(n_c > 0, s_c / n_c - mean, 0.0)
            between = (n_c * dev * dev).sum(axis=0)
            return np.where(self.ss > 0, between / self.ss, np.nan)

    def eligible(self, name: str, min_count: int) -> np.ndarray:
        """bool ``[K]``: categories usable as binary features: not a placeholder, with
        >= ``min_count`` positions inside and outside."""
        n_c = self.count[name].numpy()
        ok = (n_c >= min_count) & (self.moments.count - n_c >= min_count)
        variable = next(v for v in self.variables if v.name == name)
        ok[list(variable.placeholders)] = False
        return ok


@dataclass
class TopActivations:
    """The ``k`` highest activations per neuron and where they are: ``[n_neurons, k]`` each.

    An accumulator: ``update`` replaces the arrays batch after batch. ``rows`` (kept when
    ``empty(..., context=...)``): the neuron's activations over the whole sequence of each
    entry, ``[n_neurons, k, context]`` float32, so that a context can be shown with the
    activation of every token. ``per_sequence``: at most one entry per sequence (its highest
    kept position), so that the contexts are distinct texts.
    """

    values: torch.Tensor
    sequence: torch.Tensor
    position: torch.Tensor
    rows: torch.Tensor | None = None
    per_sequence: bool = False

    @classmethod
    def empty(
        cls, n_neurons: int, k: int, context: int | None = None, per_sequence: bool = False
    ) -> TopActivations:
        """No activation seen yet: values -inf, places -1 (``rows`` zero when kept)."""
        rows = None if context is None else torch.zeros(n_neurons, k, context, dtype=torch.float32)
        return cls(
            torch.full((n_neurons, k), -torch.inf, dtype=torch.float64),
            torch.full((n_neurons, k), -1, dtype=torch.int64),
            torch.full((n_neurons, k), -1, dtype=torch.int64),
            rows,
            per_sequence,
        )

    @classmethod
    def stacked(cls, parts: Sequence[TopActivations]) -> TopActivations:
        """The accumulators of consecutive neuron chunks as one, neurons in order."""
        rows = None if parts[0].rows is None else torch.cat([p.rows for p in parts])
        return cls(
            torch.cat([p.values for p in parts]),
            torch.cat([p.sequence for p in parts]),
            torch.cat([p.position for p in parts]),
            rows,
            parts[0].per_sequence,
        )

    def _candidates(self, masked: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's best ``(values, flat batch*pos places)`` per neuron ``[n, k']`` of
        ``masked [batch, pos, n]``: the top k places, or each sequence's best place."""
        batch, pos, n = masked.shape
        k = self.values.shape[1]
        if not self.per_sequence:
            return masked.reshape(-1, n).T.topk(min(k, batch * pos), dim=1)
        best, best_pos = masked.max(dim=1)  # [batch, n]
        vals, seq = best.T.topk(min(k, batch), dim=1)
        return vals, seq * pos + best_pos.T.gather(1, seq)

    def update(self, acts: torch.Tensor, kept: torch.Tensor, first_sequence: int) -> None:
        """``acts``: ``[batch, pos, n_neurons]``; ``kept``: bool ``[batch, pos]``."""
        batch, pos, n = acts.shape
        k = self.values.shape[1]
        masked = acts.to(torch.float64).masked_fill(~kept[..., None], -torch.inf)
        vals, where = self._candidates(masked)
        values = torch.cat([self.values, vals], dim=1)
        seqs = torch.cat([self.sequence, where // pos + first_sequence], dim=1)
        poss = torch.cat([self.position, where % pos], dim=1)
        order = values.topk(k, dim=1).indices
        self.values = values.gather(1, order)
        self.sequence = seqs.gather(1, order)
        self.position = poss.gather(1, order)
        if self.rows is not None:
            neuron = torch.arange(n)[:, None]
            new_rows = acts.to(torch.float32).permute(2, 0, 1)[neuron, where // pos]  # [n, k', pos]
            rows = torch.cat([self.rows, new_rows], dim=1)
            self.rows = rows.gather(1, order[..., None].expand(-1, -1, rows.shape[2]))


def _check_finite(
    acts: torch.Tensor, neurons: Sequence[tuple[int, int]], desc: str, number: int
) -> None:
    """Stop on NaN/inf in ``acts [batch, pos, neurons]``, naming the first such neuron."""
    finite = torch.isfinite(acts).flatten(0, 1).all(0)  # [N]
    if not bool(finite.all()):
        layer, neuron = neurons[int(torch.nonzero(~finite)[0])]
        raise NonFiniteActivationError(
            f"{desc}: non-finite activations in layer {layer} (neuron {layer}.{neuron}) at "
            f"analysis batch {number}; the model or its weights are broken"
        )


@torch.no_grad()
def iter_neuron_activations(
    model,
    tokens: np.ndarray,
    neurons: Sequence[tuple[int, int]],
    excluded_ids: np.ndarray,
    batch_size: int,
    device: str = "cpu",
    desc: str = "neurons",
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """One streaming pass of ``tokens [sequences, context]`` through ``model``, capturing only
    the MLP post activations of ``neurons`` (``(layer, index)`` pairs).

    Yields ``(first sequence of the batch, kept bool [b, pos], activations float64 [b, pos,
    len(neurons)])`` on the CPU per batch; stops with a message naming the neuron and batch
    on non-finite activations.
    """
    layers = torch.tensor([n[0] for n in neurons])
    index = torch.tensor([n[1] for n in neurons])
    n_batches = -(-len(tokens) // batch_size)
    for number, batch in tqdm(iter_batches(tokens, batch_size), total=n_batches, desc=desc):
        kept = kept_mask(batch, excluded_ids)
        post = capture_mlp(model, batch.to(device), ("post",))["post"]  # [L, b, p, D]
        acts = post[layers.to(post.device), :, :, index.to(post.device)]  # [N, b, p]
        acts = acts.permute(1, 2, 0).to(torch.float64).cpu()  # [b, p, N]
        _check_finite(acts, neurons, desc, number)
        yield number * batch_size, kept, acts


SUMS_BYTES = 2**30
"""Bytes the per-category sums of one pass may hold (``FeatureSums``: 8 bytes per category of
every variable and neuron): more neurons are classified in several passes (``neuron_chunks``).
With GPT-2's vocabulary (token, previous token, unigram, ... about 160,000 categories) a pass
takes about 800 neurons."""


def neuron_chunks(
    neurons: Sequence[tuple[int, int]], features: FeatureSet, limit: int = SUMS_BYTES
) -> list[Sequence[tuple[int, int]]]:
    """``neurons`` cut into consecutive chunks whose ``FeatureSums`` fit ``limit`` bytes (at
    least one neuron each; one chunk, the whole list, when it fits)."""
    per_neuron = 8 * sum(v.size for v in features.variables)
    size = max(1, limit // max(per_neuron, 1))
    return [neurons[i : i + size] for i in range(0, len(neurons), size)] or [neurons]


def collect_feature_sums(
    model,
    tokens: np.ndarray,
    features: FeatureSet,
    neurons: Sequence[tuple[int, int]],
    excluded_ids: np.ndarray,
    batch_size: int,
    device: str = "cpu",
    top_k: int = 0,
    desc: str = "families",
) -> tuple[FeatureSums, TopActivations | None]:
    """One streaming pass of the token set through ``model``: per-category sums of the
    chosen neurons' MLP post activations at kept positions (and their top-k activations).

    ``tokens``: ``[sequences, context]``; ``neurons``: ``(layer, index)`` pairs.
    """
    sums = FeatureSums(features.variables, len(neurons))
    top = TopActivations.empty(len(neurons), top_k) if top_k else None
    if not neurons:
        return sums, top
    stream = iter_neuron_activations(model, tokens, neurons, excluded_ids, batch_size, device, desc)
    for start, kept, acts in stream:
        sums.update(acts[kept], features.batch_codes(start, start + len(kept), kept))
        if top is not None:
            top.update(acts, kept, start)
    return sums, top
