"""Per-neuron summaries of a pair, block by block: what correlate keeps at scale.

A pair's full statistics hold ``[N, N]`` float64 (10.9 GB per GPT2-small pair). At scale
correlate keeps instead, per block of model ``a``'s neurons (rows ``r0:r1``, whole layers)
against all of model ``b``, what the later stages read:

- forward: per ``a`` neuron of the block, the max correlation over all ``b`` neurons + argmax;
- backward: per ``b`` neuron, the max over the block's ``a`` neurons + argmax (the blocks of a
  pair combine by taking the larger, the earlier block on ties: the argmax is the first
  maximum, as a row maximum of the whole matrix gives);
- the rotation baseline of both directions for every draw (``BaselineDraws``): forward over
  every rotated layer of ``b``, backward over the rotated layers of the block (whole layers,
  so each rotation sees its whole layer), combined across blocks by the larger value.

The formulas are those of ``correlation.max_correlations`` and ``baseline.pair_baselines``
applied to the block's rows, so the numbers equal those of the full pair statistics.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from universal_neurons.errors import UserError
from universal_neurons.matching.baseline import (
    baseline_frame,
    mixed_layer_maxima,
    mixed_variance,
    mixing_matrix,
)
from universal_neurons.matching.correlation import CrossMoments, MaxCorrelation, row_maxima


@dataclass(frozen=True)
class BaselineDraws:
    """What the baseline draws of a block need, as plain values (it crosses processes).

    ``kind, samples, seed``: ``params.baseline``; ``partner_ids``: per model the integer
    that seeds its matrices (its training seed); ``within``: per model the path of collect's
    ``within_layer_cov.npy`` (``[layers, d_mlp, d_mlp]`` float64, read one layer at a time);
    ``cache_dir``: where drawn matrices are kept for the next block ("" = draw every time).
    """

    kind: str
    samples: int
    seed: int
    partner_ids: dict[str, int]
    within: dict[str, str]
    cache_dir: str = ""

    def within_layer(self, model: str, layer: int) -> np.ndarray:
        """``[d_mlp, d_mlp]`` float64 within-layer covariance of ``model``'s ``layer``."""
        return np.load(self.within[model], mmap_mode="r")[layer]

    def matrix(self, model: str, sample: int, layer: int, d_mlp: int) -> np.ndarray:
        """``[d_mlp, d_mlp]`` float64 mixing matrix of ``model`` (as the partner), draw
        ``sample``, ``layer`` (``baseline.mixing_matrix``), kept in ``cache_dir``."""
        partner = self.partner_ids[model]
        if not self.cache_dir:
            return mixing_matrix(self.kind, d_mlp, self.seed, partner, sample, layer)
        name = f"{self.kind}-d{d_mlp}-{self.seed}-{partner}-{sample}-{layer}.npy"
        path = Path(self.cache_dir) / name
        if path.is_file():
            return np.load(path, mmap_mode="r")
        matrix = mixing_matrix(self.kind, d_mlp, self.seed, partner, sample, layer)
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with temp.open("wb") as handle:  # (np.save would append .npy to the name)
            np.save(handle, matrix)
        os.replace(temp, path)
        return matrix

    def mixed_variance(
        self, model: str, sample: int, layer: int, d_mlp: int, device
    ) -> torch.Tensor:
        """``[d_mlp]`` float64 ``baseline.mixed_variance`` of ``model``'s ``layer`` (as the
        partner) in draw ``sample``, on ``device``. It depends on the partner layer only, not
        on the block, so a process computes it once (``_MIXED_VARIANCES``) for all the units
        it runs: before, every unit repeated one ``d_mlp³`` product per partner layer."""
        within = Path(self.within[model])
        version = within.stat()
        key = (self.kind, self.seed, self.partner_ids[model], sample, layer, d_mlp)
        key += (str(within), version.st_mtime_ns, version.st_size, str(device))
        if key not in _MIXED_VARIANCES:
            if len(_MIXED_VARIANCES) >= MIXED_VARIANCES_KEPT:
                _MIXED_VARIANCES.clear()
            matrix = self.matrix(model, sample, layer, d_mlp)
            _MIXED_VARIANCES[key] = mixed_variance(matrix, self.within_layer(model, layer), device)
        return _MIXED_VARIANCES[key]


MIXED_VARIANCES_KEPT = 4096
"""How many partner layers' mixed variances a process keeps (``[d_mlp]`` float64 each: 100 MB
at GPT-2 width)."""

_MIXED_VARIANCES: dict[tuple, torch.Tensor] = {}
"""``BaselineDraws.mixed_variance``'s results in this process, keyed by the draw, the partner
layer and the path, modification time and size of its within-layer covariance file (a
rewritten file is read again)."""


@dataclass(frozen=True)
class BlockMaxima:
    """The per-neuron summaries of rows ``rows`` of model ``a`` against all of ``b``.

    ``var_x [B]``, ``var_y [N]``: population variances; ``forward_max [B]`` float64 /
    ``forward_arg [B]`` int64 (index into ``b``'s neurons, -1 if none); ``backward_max [N]`` /
    ``backward_arg [N]`` (index into ``a``'s neurons); ``forward_baseline [S, B]``,
    ``backward_baseline [S, N]`` float64 per draw. NaN: no live partner / dead neuron.
    """

    a: str
    b: str
    rows: tuple[int, int]
    count: int
    tensors: dict[str, torch.Tensor] = field(repr=False)

    def save(self, path: str | Path, info: dict) -> None:
        """Write to ``path`` (safetensors; ``info`` + identity in one JSON metadata string)."""
        from safetensors.torch import save_file

        meta = {"a": self.a, "b": self.b, "rows": list(self.rows), "count": self.count}
        header = {"maxima": json.dumps(meta | {"info": info}, sort_keys=True)}
        save_file({k: v.contiguous() for k, v in self.tensors.items()}, str(path), header)

    @classmethod
    def load(cls, path: str | Path) -> tuple[BlockMaxima, dict]:
        """Read a file written by ``save``: ``(block, info)``."""
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
        if "maxima" not in meta:
            raise UserError(f"{path}: not a block maxima file (no maxima in metadata)")
        head = json.loads(meta["maxima"])
        block = cls(head["a"], head["b"], tuple(head["rows"]), int(head["count"]), tensors)
        return block, head["info"]


def reduce_block(
    stats: CrossMoments,
    pair: tuple[str, str],
    rows: tuple[int, int],
    d_mlp: int,
    draws: BaselineDraws,
    dead_variance: float = 0.0,
    chunk: int = 1024,
) -> BlockMaxima:
    """Summaries of one block's statistics ``stats [B, N]`` (rows ``rows`` of ``a``, whole
    layers, all of ``b``): maxima both ways and every baseline draw; ``chunk`` rows of
    correlations at a time, one layer of rotations for ``chunk`` rows at a time (memory
    ~ ``8·chunk·N`` and ``40·chunk·d_mlp + 24·d_mlp²``)."""
    (a, b), (r0, r1), count = pair, rows, stats.count
    var_x, var_y = stats.var_x(), stats.var_y()
    forward = row_maxima(stats.cxy, count, var_x, var_y, dead_variance, chunk)
    backward = row_maxima(stats.cxy.T, count, var_y, var_x, dead_variance, chunk)
    backward_arg = np.where(backward.argmax >= 0, backward.argmax + r0, -1)
    n_b = stats.shape[1] // d_mlp
    a_layers = range(r0 // d_mlp, r1 // d_mlp)

    device = stats.cxy.device

    def terms(model, sample, layer, cov):  # ``baseline.LayerTerms`` of one partner layer
        matrix = draws.matrix(model, sample, layer, d_mlp)
        return cov, matrix, draws.mixed_variance(model, sample, layer, d_mlp, device)

    def forward_layers(sample):
        for layer in range(n_b):
            yield terms(b, sample, layer, stats.cxy[:, layer * d_mlp : (layer + 1) * d_mlp])

    def backward_layers(sample):  # one of the block's layers against all of b: [N, d_mlp]
        for layer in a_layers:
            cov = stats.cxy[layer * d_mlp - r0 : (layer + 1) * d_mlp - r0].T
            yield terms(a, sample, layer, cov)

    def baselines(layers, var):  # [samples, n]: per draw, the max over the mixed directions
        # ``chunk`` rows of a layer at a time, the sums divided by ``count`` chunk by chunk: a
        # backward layer against all of b would be five [N, d_mlp] float64 temporaries (4.5 GB
        # for GPT2-small)
        per_draw = [
            mixed_layer_maxima(layers(s), var, dead_variance, chunk, count).max_corr
            for s in range(draws.samples)
        ]
        return torch.as_tensor(np.stack(per_draw))

    tensors = {
        "var_x": var_x.cpu(),
        "var_y": var_y.cpu(),
        "forward_max": torch.as_tensor(forward.max_corr),
        "forward_arg": torch.as_tensor(forward.argmax),
        "backward_max": torch.as_tensor(backward.max_corr),
        "backward_arg": torch.as_tensor(backward_arg),
        "forward_baseline": baselines(forward_layers, var_x),
        "backward_baseline": baselines(backward_layers, var_y),
    }
    return BlockMaxima(a, b, (r0, r1), count, tensors)


def check_whole_layers(neuron_block: int, d_mlp: int) -> None:
    """Blocks of whole layers (``neuron_block`` 0 = all, or a multiple of ``d_mlp``): each
    backward rotation needs its whole layer of the block's model."""
    if neuron_block % d_mlp:
        raise UserError(
            f"correlate.neuron_block: above correlate.full_pairs_max_neurons the blocks must "
            f"be whole layers (0 or a multiple of d_mlp = {d_mlp}), got {neuron_block}"
        )


@dataclass(frozen=True)
class PairMaxima:
    """A pair's summaries, every block combined: ``forward`` / ``backward`` maxima
    (``MaxCorrelation [N]``), ``var_x`` / ``var_y [N]``, baselines ``[S, N]`` both ways."""

    count: int
    forward: MaxCorrelation
    backward: MaxCorrelation
    var_x: np.ndarray
    var_y: np.ndarray
    forward_baseline: np.ndarray
    backward_baseline: np.ndarray


def _larger(best: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Where ``values`` beats ``best`` (NaN counts as -inf; ties keep ``best``)."""
    low = -np.inf
    return np.nan_to_num(values, nan=low) > np.nan_to_num(best, nan=low)


def combine_blocks(blocks: list[BlockMaxima], n_neurons: int) -> PairMaxima:
    """The blocks of one pair (any order) -> ``PairMaxima``; checks that they cover
    ``0..n_neurons`` without gaps and saw the same positions."""
    blocks = sorted(blocks, key=lambda block: block.rows)
    stops = [0] + [block.rows[1] for block in blocks]
    if [block.rows[0] for block in blocks] != stops[:-1] or stops[-1] != n_neurons:
        pair = f"{blocks[0].a}__{blocks[0].b}"
        raise UserError(
            f"pair {pair}: blocks {[b.rows for b in blocks]} do not cover 0..{n_neurons}"
        )
    if len({block.count for block in blocks}) != 1:
        raise UserError(f"pair {blocks[0].a}__{blocks[0].b}: blocks saw different positions")
    t = [{k: v.numpy() for k, v in block.tensors.items()} for block in blocks]
    back, arg = t[0]["backward_max"].copy(), t[0]["backward_arg"].copy()
    base = t[0]["backward_baseline"].copy()
    for part in t[1:]:
        better = _larger(back, part["backward_max"])
        back[better], arg[better] = part["backward_max"][better], part["backward_arg"][better]
        base = np.where(_larger(base, part["backward_baseline"]), part["backward_baseline"], base)
    return PairMaxima(
        count=blocks[0].count,
        forward=MaxCorrelation(
            np.concatenate([p["forward_max"] for p in t]),
            np.concatenate([p["forward_arg"] for p in t]),
        ),
        backward=MaxCorrelation(back, arg),
        var_x=np.concatenate([p["var_x"] for p in t]),
        var_y=t[0]["var_y"],
        forward_baseline=np.concatenate([p["forward_baseline"] for p in t], axis=1),
        backward_baseline=base,
    )


# --- tables ---------------------------------------------------------------------------------


def neuron_columns(n_layers: int, d_mlp: int) -> dict[str, np.ndarray]:
    """``layer`` and ``index`` columns ``[n_layers * d_mlp]`` int64, layer-major."""
    return {
        "layer": np.repeat(np.arange(n_layers, dtype=np.int64), d_mlp),
        "index": np.tile(np.arange(d_mlp, dtype=np.int64), n_layers),
    }


def maxima_frame(
    model: str, partner: str, result: MaxCorrelation, dead: np.ndarray, n_layers: int, d_mlp: int
) -> pd.DataFrame:
    """Rows ``model, partner, layer, index, dead, max_corr, argmax_layer, argmax_index``."""
    argmax = result.argmax
    valid = argmax >= 0
    return pd.DataFrame(
        {"model": model, "partner": partner}
        | neuron_columns(n_layers, d_mlp)
        | {
            "dead": dead,
            "max_corr": result.max_corr,
            "argmax_layer": np.where(valid, argmax // d_mlp, -1),
            "argmax_index": np.where(valid, argmax % d_mlp, -1),
        }
    )


def sorted_maxima(frames: list[pd.DataFrame], names: list[str]) -> pd.DataFrame:
    """The maxima frames as one table sorted by model and partner (group order), layer, index."""
    order = {name: i for i, name in enumerate(names)}
    return (
        pd.concat(frames, ignore_index=True)
        .sort_values(
            ["model", "partner", "layer", "index"],
            key=lambda col: col.map(order) if col.name in ("model", "partner") else col,
        )
        .reset_index(drop=True)
    )


def pair_tables(
    pairs: dict[tuple[str, str], PairMaxima],
    names: list[str],
    n_layers: int,
    d_mlp: int,
    dead_variance: float = 0.0,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, int]]:
    """``(max_corr table, baseline table, dead count per model)`` of every pair, in the
    formats of the correlate (``max_corr.parquet``) and baseline (``baseline.parquet``) stages."""
    maxima, baselines, dead_counts = [], [], {}
    for (a, b), pair in pairs.items():
        dead_a, dead_b = pair.var_x <= dead_variance, pair.var_y <= dead_variance
        dead_counts[a], dead_counts[b] = int(dead_a.sum()), int(dead_b.sum())
        maxima.append(maxima_frame(a, b, pair.forward, dead_a, n_layers, d_mlp))
        maxima.append(maxima_frame(b, a, pair.backward, dead_b, n_layers, d_mlp))
        for model, partner, draws in (
            (a, b, pair.forward_baseline),
            (b, a, pair.backward_baseline),
        ):
            baselines += [
                baseline_frame(model, partner, s, n_layers, d_mlp, draws[s])
                for s in range(len(draws))
            ]
    return sorted_maxima(maxima, names), pd.concat(baselines, ignore_index=True), dead_counts
