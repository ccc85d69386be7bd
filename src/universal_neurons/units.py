"""correlate in work units: (model pair x block of neurons x token shard), merged exactly.

A *unit* computes the ``CrossMoments`` of one ordered pair ``(a, b)`` (``a`` before ``b`` in
the group) between a block of model ``a``'s neurons (``rows``, layer-major numbering
``layer * d_mlp + index``) and **all** neurons of model ``b``, over one contiguous range of
sequences of the analysis token set (a *shard*, starting and ending on batch boundaries, so
every unit sees exactly the batches the one-pass ``pairs.correlate_group`` sees). Its
statistics go to ``{units_dir}/{unit.name}.safetensors`` (``CrossMoments.save``; metadata
``a, b, rows, sequences, batches``).

``merge_units`` reads them back: the shards of a block are merged with Chan's exact
merge (float64), then the blocks of a pair are stacked along model ``a``'s neurons. The
result equals the one-pass statistics up to float64 rounding of the merge order.

Memory of one unit: ``[block, n_b]`` float64 accumulator + the same in the product's
precision + one batch of activations (see docs/scale.md for GPT2-medium on one 80 GB GPU).

Executors (``correlate.executor``): ``inline`` runs the units in this process; ``local``
and ``slurm`` hand them to submitit (``AutoExecutor(cluster="local" | "slurm")``), which
runs ``run_units`` in worker processes or as one Slurm job array. submitit stores each
job's call in its ``folder`` (``correlate.log_dir``) together with the job's stdout/stderr.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass
from itertools import combinations, pairwise
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from universal_neurons.correlation import CrossMoments


class UnitError(RuntimeError):
    """Unit files that do not add up to whole pairs, or a unit job that failed."""


@dataclass(frozen=True)
class Unit:
    """One piece of correlate's work.

    ``rows``: neurons ``[start, stop)`` of model ``a``; ``sequences``: sequences
    ``[start, stop)`` of the analysis token set.
    """

    a: str
    b: str
    rows: tuple[int, int]
    sequences: tuple[int, int]

    @property
    def name(self) -> str:
        """File stem: ``{a}__{b}__n{start}-{stop}__s{start}-{stop}``."""
        (r0, r1), (s0, s1) = self.rows, self.sequences
        return f"{self.a}__{self.b}__n{r0}-{r1}__s{s0}-{s1}"


def plan_units(
    names: list[str],
    n_neurons: int,
    n_sequences: int,
    batch_size: int,
    neuron_block: int = 0,
    token_shards: int = 1,
) -> list[Unit]:
    """Every pair (``a`` before ``b`` in ``names``) x neuron block of ``a`` x token shard.

    ``neuron_block``: neurons of ``a`` per unit (0 = all ``n_neurons``); ``token_shards``:
    number of contiguous sequence ranges, as equal as possible in whole batches of
    ``batch_size`` sequences.
    """
    n_batches = -(-n_sequences // batch_size)
    if not 1 <= token_shards <= n_batches:
        raise ValueError(
            f"correlate.token_shards: expected 1 to {n_batches} (the analysis set has "
            f"{n_batches} batches of {batch_size} sequences), got {token_shards}"
        )
    bounds = [round(i * n_batches / token_shards) for i in range(token_shards + 1)]
    shards = [(b0 * batch_size, min(b1 * batch_size, n_sequences)) for b0, b1 in pairwise(bounds)]
    block = neuron_block or n_neurons
    blocks = [(start, min(start + block, n_neurons)) for start in range(0, n_neurons, block)]
    return [
        Unit(a, b, rows, shard)
        for a, b in combinations(names, 2)
        for rows in blocks
        for shard in shards
    ]


@dataclass(frozen=True)
class UnitContext:
    """What a worker needs to run units: plain values only (it crosses process boundaries).

    ``models``: ``{name: local model directory or hub id}`` (absolute paths for workers on
    other machines); ``analysis``: ``AnalysisConfig`` as a dict; ``products``: the resolved
    per-batch product precision; ``units_dir``: where the unit files go.
    """

    models: dict[str, str]
    tokens_dir: str
    analysis: dict
    products: str
    device: str
    units_dir: str
    dtype: str = "float32"


def unit_path(units_dir: str | Path, unit: Unit) -> Path:
    """The statistics file of ``unit``."""
    return Path(units_dir) / f"{unit.name}.safetensors"


@torch.no_grad()
def correlate_unit(
    unit: Unit,
    model_a,
    model_b,
    tokens: np.ndarray,
    excluded_ids: np.ndarray,
    batch_size: int,
    products: str = "float32",
    device: str = "cpu",
) -> tuple[CrossMoments, int]:
    """Statistics of ``unit`` over ``tokens [sequences, pos]`` (the whole analysis set).

    Returns ``(CrossMoments [rows, all neurons of b], batches)``. Model ``a`` is run only
    up to the last layer holding one of the unit's neurons.
    """
    from universal_neurons.activations import iter_batches, kept_mask
    from universal_neurons.collect import (
        check_finite,
        check_finite_statistics,
        kept_neuron_matrix,
    )
    from universal_neurons.models import capture_mlp, model_shape

    n_layers, d_mlp = model_shape(model_a)
    r0, r1 = unit.rows
    s0, s1 = unit.sequences
    layers_a = range(r0 // d_mlp, (r1 - 1) // d_mlp + 1)
    offset = layers_a.start * d_mlp
    stats = CrossMoments.empty(r1 - r0, n_layers * d_mlp, device)
    first = s0 // batch_size  # analysis batch number of the shard's first batch
    batches = 0
    for number, batch in iter_batches(tokens[s0:s1], batch_size):
        mask = kept_mask(batch, excluded_ids)
        batch = batch.to(device)
        acts_a = capture_mlp(model_a, batch, ("post",), layers_a)["post"]
        check_finite(acts_a, unit.a, first + number, "post")
        acts_b = capture_mlp(model_b, batch, ("post",))["post"]
        check_finite(acts_b, unit.b, first + number, "post")
        x = kept_neuron_matrix(acts_a, mask)[:, r0 - offset : r1 - offset]
        stats = stats.update(x, kept_neuron_matrix(acts_b, mask), products)  # type: ignore[arg-type]
        check_finite_statistics(stats, unit.a, unit.b, d_mlp, first + number)
        batches += 1
    return stats, batches


def run_units(units: list[Unit], context: UnitContext, progress: bool = False) -> list[str]:
    """Run ``units`` one after the other in this process; write each unit's file.

    This is the function the executors call (in process, in a local worker, or in a Slurm
    task). Models are loaded once and kept while consecutive units use them. Returns the
    written paths.
    """
    from universal_neurons.collect import load_analysis_set
    from universal_neurons.config import AnalysisConfig
    from universal_neurons.models import load_model

    config = AnalysisConfig(**context.analysis)
    tokens, excluded, _ = load_analysis_set(context.tokens_dir, config)
    dtype = getattr(torch, context.dtype)
    loaded: dict[str, object] = {}
    written = []
    Path(context.units_dir).mkdir(parents=True, exist_ok=True)
    for unit in tqdm(units, desc="correlate units", disable=not progress):
        for name in list(loaded):
            if name not in (unit.a, unit.b):
                del loaded[name]
        for name in (unit.a, unit.b):
            if name not in loaded:
                loaded[name] = load_model(context.models[name], context.device, dtype)
        stats, batches = correlate_unit(
            unit,
            loaded[unit.a],
            loaded[unit.b],
            tokens,
            excluded,
            config.batch_size,
            context.products,
            context.device,
        )
        path = unit_path(context.units_dir, unit)
        temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        info = {
            "a": unit.a,
            "b": unit.b,
            "rows": list(unit.rows),
            "sequences": list(unit.sequences),
            "batches": batches,
        }
        stats.save(temp, info)
        os.replace(temp, path)
        written.append(str(path))
    return written


def execute(
    units: list[Unit],
    context: UnitContext,
    executor: str = "inline",
    workers: int = 2,
    log_dir: str | Path = "logs/submitit",
    slurm: dict | None = None,
    progress: bool = True,
) -> None:
    """Run every unit with ``executor``: ``inline`` | ``local`` | ``slurm``.

    ``local``: ``workers`` processes through submitit's local executor, each running a
    share of the units. ``slurm``: one Slurm array task per unit; ``slurm`` holds
    ``partition, gpus_per_node, cpus_per_task, mem_gb, timeout_min, array_parallelism,
    additional`` (see ``config.SlurmConfig``). Waits for all jobs; a failed job stops
    with its id and its log files.
    """
    if executor == "inline":
        run_units(units, context, progress)
        return
    if executor not in ("local", "slurm"):
        raise ValueError(f"correlate.executor: expected inline, local or slurm, got {executor!r}")
    import submitit

    slurm = slurm or {}
    engine = submitit.AutoExecutor(folder=str(log_dir), cluster=executor)
    if executor == "local":
        chunks = [units[i :: max(1, workers)] for i in range(min(workers, len(units)))]
        engine.update_parameters(timeout_min=int(slurm.get("timeout_min", 240)))
    else:
        chunks = [[unit] for unit in units]
        options = {
            "timeout_min": int(slurm.get("timeout_min", 240)),
            "gpus_per_node": int(slurm.get("gpus_per_node", 1)),
            "cpus_per_task": int(slurm.get("cpus_per_task", 8)),
            "mem_gb": int(slurm.get("mem_gb", 64)),
            "slurm_array_parallelism": int(slurm.get("array_parallelism", 32)),
            "name": "universal-neurons-correlate",
        }
        if slurm.get("partition"):
            options["slurm_partition"] = slurm["partition"]
        if slurm.get("additional"):
            options["slurm_additional_parameters"] = dict(slurm["additional"])
        engine.update_parameters(**options)
    jobs = engine.map_array(run_units, chunks, [context] * len(chunks))
    for job in tqdm(jobs, desc=f"correlate jobs ({executor})", disable=not progress):
        try:
            job.result()
        except Exception as exc:
            raise UnitError(
                f"correlate unit job {job.job_id} ({executor}) failed: {exc}; "
                f"logs: {job.paths.stdout} and {job.paths.stderr}"
            ) from exc


def _stack_blocks(blocks: list[CrossMoments], pair: tuple[str, str]) -> CrossMoments:
    """Blocks of model ``a``'s neurons (same tokens, all of ``b``) -> one ``CrossMoments``."""
    first = blocks[0]
    for block in blocks[1:]:
        if block.count != first.count or not torch.allclose(
            block.mean_y, first.mean_y, rtol=1e-12, atol=0.0
        ):
            raise UnitError(
                f"pair {pair[0]}__{pair[1]}: neuron blocks were computed over different tokens"
            )
    return CrossMoments(
        count=first.count,
        mean_x=torch.cat([block.mean_x for block in blocks]),
        mean_y=first.mean_y,
        m2_x=torch.cat([block.m2_x for block in blocks]),
        m2_y=first.m2_y,
        cxy=torch.cat([block.cxy for block in blocks]),
    )


def merge_units(
    units: list[Unit], units_dir: str | Path, n_neurons: int
) -> tuple[dict[tuple[str, str], CrossMoments], int]:
    """Merge the files of ``units`` into one ``CrossMoments [n_neurons, n_neurons]`` per pair.

    Shards of one block are merged in sequence order (Chan, float64); blocks are stacked
    in neuron order. Checks that shards and blocks cover each pair without gaps. Returns
    ``({(a, b): statistics}, batches per pair)``.
    """
    by_block: dict[tuple[str, str, tuple[int, int]], list[Unit]] = defaultdict(list)
    for unit in units:
        by_block[(unit.a, unit.b, unit.rows)].append(unit)
    blocks: dict[tuple[str, str], list[tuple[int, int, CrossMoments]]] = defaultdict(list)
    batches_of_pair: dict[tuple[str, str], int] = {}
    for (a, b, rows), shards in by_block.items():
        shards.sort(key=lambda unit: unit.sequences)
        merged, batches, end = None, 0, 0
        for unit in shards:
            if unit.sequences[0] != end:
                raise UnitError(
                    f"{unit.name}: sequences start at {unit.sequences[0]}, expected {end}"
                )
            stats, info = CrossMoments.load(unit_path(units_dir, unit))
            if (info.get("a"), info.get("b"), info.get("rows")) != (a, b, list(rows)):
                raise UnitError(f"{unit_path(units_dir, unit)}: holds another unit ({info})")
            merged = stats if merged is None else merged.merge(stats, inplace=True)
            batches += int(info["batches"])
            end = unit.sequences[1]
        blocks[(a, b)].append((rows[0], rows[1], merged))
        batches_of_pair[(a, b)] = batches
    pairs = {}
    for pair, parts in blocks.items():
        parts.sort(key=lambda part: part[0])
        stops = [0] + [stop for _, stop, _ in parts]
        starts = [start for start, _, _ in parts]
        if starts != stops[:-1] or stops[-1] != n_neurons:
            raise UnitError(
                f"pair {pair[0]}__{pair[1]}: neuron blocks {[(s, e) for s, e, _ in parts]} "
                f"do not cover 0..{n_neurons}"
            )
        pairs[pair] = _stack_blocks([stats for _, _, stats in parts], pair)
    counts = set(batches_of_pair.values())
    if len(counts) > 1:
        raise UnitError(f"pairs were computed over different numbers of batches: {batches_of_pair}")
    return pairs, counts.pop() if counts else 0


def units_summary(units: list[Unit]) -> dict[str, int]:
    """How the work was split: numbers of units, pairs, neuron blocks and token shards."""
    return {
        "units": len(units),
        "pairs": len({(u.a, u.b) for u in units}),
        "neuron_blocks": len({u.rows for u in units}),
        "token_shards": len({u.sequences for u in units}),
    }
