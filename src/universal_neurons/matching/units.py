"""correlate in work units: (model pair x block of neurons x token shard), merged exactly.

A *unit* computes the ``CrossMoments`` of one ordered pair ``(a, b)`` (``a`` before ``b`` in
the group) between a block of model ``a``'s neurons (``rows``, layer-major numbering
``layer * d_mlp + index``) and **all** neurons of model ``b``, over one contiguous range of
sequences of the analysis token set (a *shard*, starting and ending on batch boundaries).
Its statistics go to ``{units_dir}/{unit.name}.safetensors`` (``CrossMoments.save``; metadata
``a, b, rows, sequences, batches``).

Units run in *passes* over the token set (``correlate_pass``), in which every model the
units of the pass need runs once per batch. The default plan (no neuron blocks, one shard,
in process) is one pass of all units: the one-pass correlate of the whole group, which holds
every pair's accumulator at once. A split plan runs each unit alone, so that its memory stays
bounded by the unit: ``[block, n_b]`` float64 accumulator + the same in the product's
precision + one batch of activations (docs/scale.md).

``merge_units`` reads the files back: the shards of a block are merged with Chan's exact
merge (float64), then the blocks of a pair are stacked along model ``a``'s neurons. The
result equals the one-pass statistics up to float64 rounding of the merge order.

Executors (``correlate.executor``): ``inline`` runs the units in this process; ``local``
and ``slurm`` hand them to submitit (``AutoExecutor(cluster="local" | "slurm")``), which
runs ``run_units`` in worker processes or as one Slurm job array. submitit stores each
job's call in its ``folder`` (``correlate.log_dir``) together with the job's stdout/stderr.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
from collections import defaultdict
from dataclasses import dataclass
from itertools import combinations, pairwise
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from universal_neurons.config import EXECUTORS, AnalysisConfig
from universal_neurons.errors import UserError
from universal_neurons.matching.activations import iter_batches, kept_mask, load_analysis_set
from universal_neurons.matching.collect import check_finite_statistics, kept_activations
from universal_neurons.matching.correlation import SCRATCH, CrossMoments
from universal_neurons.matching.maxima import (
    BaselineDraws,
    BlockMaxima,
    PairMaxima,
    combine_blocks,
    reduce_block,
)
from universal_neurons.models.loading import load_model, model_shape


class UnitError(UserError):
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


def check_token_shards(token_shards: int, n_sequences: int, batch_size: int) -> int:
    """The analysis set's batches; stop unless ``token_shards`` is 1 to that many (a shard
    holds whole batches). The one check of both ``correlate`` and ``plan``."""
    n_batches = -(-n_sequences // batch_size)
    if not 1 <= token_shards <= n_batches:
        raise UserError(
            f"correlate.token_shards: expected 1 to {n_batches} (the analysis set has "
            f"{n_batches} batches of {batch_size} sequences), got {token_shards}"
        )
    return n_batches


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
    n_batches = check_token_shards(token_shards, n_sequences, batch_size)
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


def passes(units: list[Unit], one_pass: bool) -> list[list[Unit]]:
    """``units`` in passes over the token set, in plan order: with ``one_pass`` the units of
    each token shard together (all of them, for the default plan), else each unit alone."""
    if not one_pass:
        return [[unit] for unit in units]
    grouped: dict[tuple[int, int], list[Unit]] = {}
    for unit in units:
        grouped.setdefault(unit.sequences, []).append(unit)
    return list(grouped.values())


def _capture_layers(units: list[Unit], n_layers: int, d_mlp: int) -> dict[str, range]:
    """Per model of the pass (in order of appearance), the layers to capture: all for a
    model ``b``, only those holding the block's neurons for a model that is only an ``a``."""
    r0, r1 = units[0].rows
    block_layers = range(r0 // d_mlp, (r1 - 1) // d_mlp + 1)
    layers: dict[str, range] = {}
    for unit in units:
        layers.setdefault(unit.a, block_layers)
        layers[unit.b] = range(n_layers)
    return layers


@dataclass(frozen=True)
class PassSettings:
    """How a pass runs: batches of ``batch_size`` sequences, per-batch products in
    ``products`` precision (``correlation.centred_product``), models on ``device``."""

    batch_size: int
    products: str = "float32"
    device: str = "cpu"


@torch.no_grad()
def correlate_pass(
    units: list[Unit],
    models: dict[str, object],
    analysis_set: tuple[np.ndarray, np.ndarray],
    settings: PassSettings,
    progress: bool = False,
) -> tuple[dict[Unit, CrossMoments], int]:
    """Statistics of ``units`` (one shard, one block of rows: see ``passes``) in one pass
    over the analysis set ``(tokens [sequences, pos], excluded token ids)``.

    ``models``: ``{name: loaded model}`` for every model the units name. Returns
    ``({unit: CrossMoments [rows, all neurons of b]}, batches)``.
    """
    tokens, excluded_ids = analysis_set
    batch_size, products, device = settings.batch_size, settings.products, settings.device
    n_layers, d_mlp = model_shape(models[units[0].a])
    (r0, r1), (s0, s1) = units[0].rows, units[0].sequences
    layers = _capture_layers(units, n_layers, d_mlp)
    stats = {unit: CrossMoments.empty(r1 - r0, n_layers * d_mlp, device) for unit in units}
    first = s0 // batch_size  # analysis batch number of the shard's first batch
    total = -(-(s1 - s0) // batch_size)
    batches = iter_batches(tokens[s0:s1], batch_size)
    for number, batch in tqdm(batches, total=total, desc="correlate", disable=not progress):
        mask = kept_mask(batch, excluded_ids)
        acts = {
            name: kept_activations(
                models[name], name, batch, mask, first + number, ("post",), span, device
            )["post"]
            for name, span in layers.items()
        }
        for unit in units:
            start = layers[unit.a].start * d_mlp
            x = acts[unit.a][:, r0 - start : r1 - start]
            stats[unit] = stats[unit].update(x, acts[unit.b], products)  # type: ignore[arg-type]
            check_finite_statistics(stats[unit], unit.a, unit.b, d_mlp, first + number)
    SCRATCH.clear()  # the update's work buffers: free before the block is reduced
    return stats, total


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
    """Statistics of one ``unit`` over ``tokens [sequences, pos]`` (the whole analysis set):
    ``(CrossMoments [rows, all neurons of b], batches)``. Model ``a`` is run only up to the
    last layer holding one of the unit's neurons."""
    models = {unit.a: model_a, unit.b: model_b}
    settings = PassSettings(batch_size, products, device)
    stats, batches = correlate_pass([unit], models, (tokens, excluded_ids), settings)
    return stats[unit], batches


@dataclass(frozen=True)
class UnitContext:
    """What a worker needs to run units: plain values only (it crosses process boundaries).

    ``models``: ``{name: local model directory or hub id}`` (absolute paths for workers on
    other machines); ``analysis``: ``AnalysisConfig`` as a dict; ``products``: the resolved
    per-batch product precision; ``units_dir``: where the unit files go; ``one_pass``: run
    the units of a token shard in one pass (see ``passes``); ``manifest``: the digest of the
    inputs (``unit_manifest``) written into every unit file, which marks it complete for them;
    ``draws``: set above ``correlate.full_pairs_max_neurons``, where a unit over the whole
    token set writes its block's maxima and baseline draws (``maxima.reduce_block``, with
    ``dead_variance``, ``d_mlp``) instead of its ``[rows, N]`` statistics.
    """

    models: dict[str, str]
    tokens_dir: str
    analysis: dict
    products: str
    device: str
    units_dir: str
    dtype: str = "float32"
    one_pass: bool = False
    manifest: str = ""
    draws: BaselineDraws | None = None
    dead_variance: float = 0.0
    d_mlp: int = 0


def unit_path(units_dir: str | Path, unit: Unit) -> Path:
    """The statistics file of ``unit``."""
    return Path(units_dir) / f"{unit.name}.safetensors"


def _save_unit(
    unit: Unit, stats: CrossMoments, batches: int, context: UnitContext, whole: bool
) -> Path:
    """Write ``unit``'s file atomically (a temporary name, then renamed into place): its
    statistics, or, with ``context.draws`` and a unit over the ``whole`` token set, its
    block's maxima. The metadata names the unit and the inputs' ``manifest``."""
    path = unit_path(context.units_dir, unit)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    info = {
        "a": unit.a,
        "b": unit.b,
        "rows": list(unit.rows),
        "sequences": list(unit.sequences),
        "batches": batches,
        "manifest": context.manifest,
    }
    if context.draws is not None and whole:
        block = reduce_block(
            stats, (unit.a, unit.b), unit.rows, context.d_mlp, context.draws, context.dead_variance
        )
        block.save(temp, info)
    else:
        stats.save(temp, info)
    os.replace(temp, path)
    return path


def unit_info(path: str | Path) -> dict | None:
    """The metadata ``info`` of a unit file (statistics or block maxima); None if the file is
    missing or unreadable (a write that never finished is never under its final name)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
    except Exception:  # noqa: BLE001 (a torn or foreign file is simply not complete)
        return None
    for key in ("statistics", "maxima"):
        if key in meta:
            return json.loads(meta[key]).get("info")
    return None


def pending_units(units: list[Unit], units_dir: str | Path, manifest: str) -> list[Unit]:
    """The units of ``units`` without a complete file in ``units_dir`` for ``manifest``.

    A file is complete when it has its final name (written under a temporary one, then
    renamed) and its metadata holds ``manifest`` and the unit's identity. Everything else in
    the folder (temporary files of a killed write, files of other inputs) is removed.
    """
    folder = Path(units_dir)
    folder.mkdir(parents=True, exist_ok=True)
    wanted = {unit_path(folder, unit): unit for unit in units}
    done = set()
    for path in folder.iterdir():
        info = unit_info(path) if path.suffix == ".safetensors" else None
        unit = wanted.get(path)
        if unit is not None and info is not None and _same_unit(info, unit, manifest):
            done.add(unit)
        elif path.is_file():
            path.unlink()
    return [unit for unit in units if unit not in done]


def _same_unit(info: dict, unit: Unit, manifest: str) -> bool:
    """Whether a file's ``info`` is that of ``unit`` over the inputs of ``manifest``."""
    identity = (info.get("a"), info.get("b"), info.get("rows"), info.get("sequences"))
    same = identity == (unit.a, unit.b, list(unit.rows), list(unit.sequences))
    return same and info.get("manifest") == manifest


def unit_manifest(models: dict[str, str], tokens: np.ndarray, settings: dict) -> str:
    """sha256 of what a unit's result depends on: every model's files (``config.json`` and
    weights; a hub id by name), the analysis token set ``tokens`` and ``settings`` (plain
    values: precision, device, baseline draws, ...)."""
    digest = hashlib.sha256()
    for name, source in sorted(models.items()):
        digest.update(f"model {name}\n".encode())
        directory = Path(source)
        files = sorted(directory.glob("*.json")) + sorted(directory.glob("*.safetensors"))
        for path in files if directory.is_dir() else []:
            digest.update(path.name.encode())
            with path.open("rb") as handle:
                while chunk := handle.read(1 << 24):
                    digest.update(chunk)
        if not directory.is_dir():
            digest.update(source.encode())
    digest.update(np.ascontiguousarray(tokens).tobytes())
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def _models_for(group: list[Unit], loaded: dict[str, object], context: UnitContext) -> dict:
    """The models ``group`` needs, loading the missing ones and dropping the others from
    ``loaded`` (models stay loaded while consecutive passes use them)."""
    needed = list(dict.fromkeys(name for unit in group for name in (unit.a, unit.b)))
    for name in [name for name in loaded if name not in needed]:
        del loaded[name]
    dtype = getattr(torch, context.dtype)
    for name in needed:
        if name not in loaded:
            loaded[name] = load_model(context.models[name], context.device, dtype)
    return {name: loaded[name] for name in needed}


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h)
LARGE_ALLOCATION = 2**20  # bytes: allocations from here up are memory maps of their own


def map_large_allocations(threshold: int = LARGE_ALLOCATION) -> bool:
    """Have glibc serve every allocation of ``threshold`` bytes or more by a memory map of its
    own, unmapped when freed (``mallopt(M_MMAP_THRESHOLD)``, for this whole process); returns
    False where there is no glibc (macOS, musl), which is left as it is.

    glibc's own threshold rises to 32 MB once such a block is freed, and above that the heap
    served a block reduction's per-layer float64 temporaries (``[1024, d_mlp]``, 25 MB for
    GPT2-small); the heap did not shrink when they were freed and grew, fragmented, layer after
    layer: 0.9 GiB over one GPT2-small-shaped unit while the live tensors stayed the same
    (measured in ``tests/test_scale_gpt2_small.py``, docs/scale.md). The large buffers that a
    pass reuses batch after batch (``correlation.SCRATCH``) are mapped once per pass.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, threshold))


def run_units(units: list[Unit], context: UnitContext, progress: bool = False) -> list[str]:
    """Run ``units`` in this process, pass after pass; write each unit's file.

    This is the function the executors call (in process, in a local worker, or in a Slurm
    task). Returns the written paths.
    """
    map_large_allocations()  # a unit's memory is its live tensors (docs/scale.md)
    config = AnalysisConfig(**context.analysis)
    tokens, excluded, _ = load_analysis_set(context.tokens_dir, config)
    Path(context.units_dir).mkdir(parents=True, exist_ok=True)
    loaded: dict[str, object] = {}
    written = []
    settings = PassSettings(config.batch_size, context.products, context.device)
    for group in passes(units, context.one_pass):
        models = _models_for(group, loaded, context)
        results, batches = correlate_pass(group, models, (tokens, excluded), settings, progress)
        for unit in list(results):
            whole = unit.sequences == (0, len(tokens))
            # popped, and no name kept: each unit's accumulator is freed once written, so
            # one reduction's memory at a time and none of it during the next pass
            written.append(str(_save_unit(unit, results.pop(unit), batches, context, whole)))
    return written


def _slurm_options(slurm: dict) -> dict:
    """submitit's parameters of one Slurm array task (``config.SlurmConfig`` as a dict)."""
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
    return options


def _chunks(units: list[Unit], executor: str, workers: int) -> list[list[Unit]]:
    """The units of each job: ``local`` shares them round-robin among ``workers`` jobs,
    ``slurm`` gives every unit a job of its own."""
    if executor == "local":
        return [units[i :: max(1, workers)] for i in range(min(workers, len(units)))]
    return [[unit] for unit in units]


def _submitit_engine(executor: str, log_dir: str | Path, slurm: dict):
    """submitit's executor for ``local`` worker processes or a ``slurm`` job array, its job
    files in ``log_dir``."""
    import submitit

    engine = submitit.AutoExecutor(folder=str(log_dir), cluster=executor)
    local = {"timeout_min": int(slurm.get("timeout_min", 240))}
    engine.update_parameters(**(local if executor == "local" else _slurm_options(slurm)))
    return engine


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
    if executor not in EXECUTORS:
        raise UserError(
            f"correlate.executor: expected one of {', '.join(EXECUTORS)}, got {executor!r}"
        )
    engine = _submitit_engine(executor, log_dir, slurm or {})
    chunks = _chunks(units, executor, workers)
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


def _merge_shards(shards: list[Unit], units_dir: str | Path) -> tuple[CrossMoments, int]:
    """The shards of one block (same pair and rows) merged in sequence order (Chan, float64);
    returns ``(statistics, batches)``. Checks that the shards follow each other without gaps."""
    merged, batches, end = None, 0, 0
    for unit in sorted(shards, key=lambda unit: unit.sequences):
        if unit.sequences[0] != end:
            raise UnitError(f"{unit.name}: sequences start at {unit.sequences[0]}, expected {end}")
        stats, info = CrossMoments.load(unit_path(units_dir, unit))
        if (info.get("a"), info.get("b"), info.get("rows")) != (unit.a, unit.b, list(unit.rows)):
            raise UnitError(f"{unit_path(units_dir, unit)}: holds another unit ({info})")
        merged = stats if merged is None else merged.merge(stats, inplace=True)
        del stats  # merged: freed before the next shard is loaded (two [rows, N] at a time)
        batches += int(info["batches"])
        end = unit.sequences[1]
    assert merged is not None
    return merged, batches


def _stack_pair(
    parts: list[tuple[tuple[int, int], CrossMoments]], pair: tuple[str, str], n_neurons: int
) -> CrossMoments:
    """The merged blocks ``[(rows, statistics)]`` of one pair, stacked in neuron order; checks
    that they cover ``0..n_neurons`` without gaps."""
    parts = sorted(parts, key=lambda part: part[0])
    starts = [rows[0] for rows, _ in parts]
    stops = [0] + [rows[1] for rows, _ in parts]
    if starts != stops[:-1] or stops[-1] != n_neurons:
        raise UnitError(
            f"pair {pair[0]}__{pair[1]}: neuron blocks {[rows for rows, _ in parts]} "
            f"do not cover 0..{n_neurons}"
        )
    return _stack_blocks([stats for _, stats in parts], pair)


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
    blocks: dict[tuple[str, str], list] = defaultdict(list)
    batches_of_pair: dict[tuple[str, str], int] = {}
    for (a, b, rows), shards in by_block.items():
        merged, batches_of_pair[(a, b)] = _merge_shards(shards, units_dir)
        blocks[(a, b)].append((rows, merged))
    pairs = {pair: _stack_pair(parts, pair, n_neurons) for pair, parts in blocks.items()}
    counts = set(batches_of_pair.values())
    if len(counts) > 1:
        raise UnitError(f"pairs were computed over different numbers of batches: {batches_of_pair}")
    return pairs, counts.pop() if counts else 0


def merge_block_maxima(
    units: list[Unit], context: UnitContext, n_neurons: int
) -> tuple[dict[tuple[str, str], PairMaxima], int]:
    """The units' files as every pair's ``PairMaxima`` (above the full-pairs threshold).

    A block computed over the whole token set in one unit was reduced by that unit; the
    shards of a sharded block are merged here (Chan, float64; ``[rows, N]`` in memory, one
    block at a time) and reduced. Returns ``({(a, b): maxima}, batches per pair)``.
    """
    map_large_allocations()  # the sharded blocks' reductions run here
    by_block: dict[tuple[str, str, tuple[int, int]], list[Unit]] = defaultdict(list)
    for unit in units:
        by_block[(unit.a, unit.b, unit.rows)].append(unit)
    blocks: dict[tuple[str, str], list[BlockMaxima]] = defaultdict(list)
    batches_of_pair: dict[tuple[str, str], int] = {}
    for (a, b, rows), shards in by_block.items():
        if len(shards) == 1:  # reduced by the unit itself (it saw the whole token set)
            block, info = _load_block(unit_path(context.units_dir, shards[0]), shards[0])
            batches_of_pair[(a, b)] = int(info["batches"])
        else:
            merged, batches_of_pair[(a, b)] = _merge_shards(shards, context.units_dir)
            assert context.draws is not None
            draws, dead = context.draws, context.dead_variance
            block = reduce_block(merged, (a, b), rows, context.d_mlp, draws, dead)
            del merged  # one block's [rows, N] at a time
        blocks[(a, b)].append(block)
    pairs = {pair: combine_blocks(parts, n_neurons) for pair, parts in blocks.items()}
    counts = set(batches_of_pair.values())
    if len(counts) > 1:
        raise UnitError(f"pairs were computed over different numbers of batches: {batches_of_pair}")
    return pairs, counts.pop() if counts else 0


def _load_block(path: Path, unit: Unit) -> tuple[BlockMaxima, dict]:
    """A whole-token-set unit's block maxima file, checked to be that unit's."""
    try:
        return BlockMaxima.load(path)
    except UserError:
        raise UnitError(f"{path}: holds statistics, expected the maxima of {unit.name}") from None


def units_summary(units: list[Unit]) -> dict[str, int]:
    """How the work was split: numbers of units, pairs, neuron blocks and token shards."""
    return {
        "units": len(units),
        "pairs": len({(u.a, u.b) for u in units}),
        "neuron_blocks": len({u.rows for u in units}),
        "token_shards": len({u.sequences for u in units}),
    }
