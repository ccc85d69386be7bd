"""What a correlate plan costs before it runs: memory per unit, disk per stage, time.

One place for the estimates that ``universal-neurons plan`` prints and that the correlate
stage checks before it starts (``check_memory``). All sizes in bytes, all rates in FLOP/s.

Memory of one unit (block of ``B`` neurons of model a against all ``N`` of model b, batches
of ``T`` tokens; docs/scale.md "Memory arithmetic"): the float64 accumulator ``8·B·N``, each
batch's product in float32 and its float64 copy ``12·B·N``, the batch's activations
``18·T·(B + N)``, the two models and the process itself (``RUNTIME``). Above ``correlate.full_pairs_max_neurons`` the unit
then reduces its block (while the product buffers are gone): ``8·1024·N`` of correlations
and ``24·B·d_mlp`` of rotated covariances at a time. The default one-pass plan holds every
pair's accumulator at once and the activations of every model.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from universal_neurons.errors import UserError
from universal_neurons.resources import configured_memory_limit
from universal_neurons.resources import memory_limit as process_memory_limit

if TYPE_CHECKING:
    from universal_neurons.config import Params

GIB = 1024**3
REDUCE_CHUNK = 1024  # rows of correlations at a time in a block's reduction (maxima.reduce_block)
RUNTIME = 600 * 1024**2  # the process itself: Python, torch, transformers (0.55-0.65 GiB measured)


@dataclass(frozen=True)
class GroupShape:
    """The group's shape: ``models`` models of ``n_layers`` x ``d_mlp`` neurons, residual
    width ``d_model``, ``d_vocab`` embedding rows, ``context`` tokens per sequence."""

    models: int
    n_layers: int
    d_mlp: int
    d_model: int
    d_vocab: int
    context: int

    @property
    def neurons(self) -> int:
        """Neurons per model ``N``."""
        return self.n_layers * self.d_mlp

    @property
    def pairs(self) -> int:
        """Unordered pairs of the group."""
        return self.models * (self.models - 1) // 2

    def model_parameters(self) -> int:
        """Weights of one model: attention + MLP blocks, embeddings, positions."""
        per_layer = 4 * self.d_model**2 + 2 * self.d_model * self.d_mlp
        return self.n_layers * per_layer + (self.d_vocab + self.context) * self.d_model

    def loaded_parameters(self) -> int:
        """Weights one model holds once loaded for analysis: ``model_parameters`` and a
        second copy of the joint QKV projection (TransformerBridge keeps Hugging Face's and
        its own split q/k/v, 3 d_model² per layer: 0.43 GiB per GPT2-small-shaped model
        measured, 0.40 counted)."""
        return self.model_parameters() + self.n_layers * 3 * self.d_model**2


PRESET_SHAPES = {  # (n_layers, d_mlp, d_model, d_vocab, context): the models' own config.json
    "gpt2-small": (12, 3072, 768, 50257, 1024),
    "gpt2-medium": (24, 4096, 1024, 50257, 1024),
    "pythia-160m": (12, 3072, 768, 50304, 2048),
}


def shape_from_config(directory: str | Path, models: int) -> GroupShape:
    """The ``GroupShape`` of ``models`` models like the Hugging Face model in ``directory``
    (GPT-2 or GPT-NeoX ``config.json``)."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise UserError(f"{path}: not found; the plan needs a model directory or a preset")
    c = json.loads(path.read_text())
    d_model = int(c.get("n_embd", c.get("hidden_size", 0)))
    d_mlp = c.get("n_inner") or c.get("intermediate_size") or 4 * d_model
    n_layers = int(c.get("n_layer", c.get("num_hidden_layers", 0)))
    context = int(c.get("n_positions", c.get("max_position_embeddings", 0)))
    return GroupShape(models, n_layers, int(d_mlp), d_model, int(c["vocab_size"]), context)


@dataclass(frozen=True)
class WorkPlan:
    """How correlate splits the work: ``block`` neurons of a per unit (the whole ``N`` if 0),
    ``shards`` token shards, ``batch_tokens`` tokens per batch, ``full_pairs`` (pair files
    written, baseline rotates them) or not (units reduce to maxima, ``samples`` draws),
    ``one_pass`` (every pair in one pass), ``model_bytes`` per weight (4 float32, 2 bf16),
    ``cuda``: units run on a GPU."""

    block: int
    shards: int
    batch_tokens: int
    full_pairs: bool
    samples: int
    one_pass: bool
    model_bytes: int = 4
    cuda: bool = False


def unit_memory(shape: GroupShape, plan: WorkPlan) -> dict[str, int]:
    """Peak memory of one unit (of the one pass, for the default plan), by part, and
    ``total``: the pass (accumulator + product + activations) or the reduction after it,
    whichever is larger, + the models and the process's own ``RUNTIME``."""
    n, b, t = shape.neurons, plan.block or shape.neurons, plan.batch_tokens
    accumulators = (shape.pairs if plan.one_pass else 1) * 8 * b * n
    # each batch's float32 product (widened into the float64 sums by CUDA's add kernel, on
    # the CPU through a reused buffer of 2**20 entries)
    product = 4 * b * n + (0 if plan.cuda else 8 * 2**20)
    models_held = shape.models if plan.one_pass else 2
    activations = 18 * t * (models_held * n if plan.one_pass else b + n)
    # 1,024 rows of correlations (three [rows, N] float64 temporaries at once: the sums
    # divided by the count, by one spread, by the other), then per layer and 1,024 rows the
    # rotated terms (five [rows, d_mlp]) and the layer's matrices (three [d_mlp, d_mlp])
    correlations = 3 * 8 * min(b, REDUCE_CHUNK) * n
    rotations = 40 * REDUCE_CHUNK * shape.d_mlp + 24 * shape.d_mlp**2
    reduction = 0 if plan.full_pairs else max(correlations, rotations)
    models = models_held * shape.loaded_parameters() * plan.model_bytes
    parts = {
        "accumulators": accumulators,
        "product": product,
        "activations": activations,
        "reduction": reduction,
        "models": models,
        "runtime": RUNTIME,
    }
    parts["total"] = accumulators + max(product + activations, reduction) + models + RUNTIME
    return parts


def unit_count(shape: GroupShape, plan: WorkPlan) -> int:
    """Units of the plan: pairs x neuron blocks x token shards."""
    block = plan.block or shape.neurons
    return shape.pairs * -(-shape.neurons // block) * plan.shards


def output_sizes(shape: GroupShape, plan: WorkPlan, tokens: int) -> dict[str, int]:
    """Approximate bytes of every analysis stage's outputs (parquet before compression),
    and ``work``: the most the units' folder holds at once while correlate runs."""
    n, pairs, s = shape.neurons, shape.pairs, plan.samples
    token_bytes = 2 if shape.d_vocab <= 65535 else 4
    draws_rows = 2 * pairs * n * s
    pair_files = pairs * (8 * n * n + 32 * n)
    mixing = shape.models * s * shape.n_layers * 8 * shape.d_mlp**2
    sharded = plan.shards > 1 or plan.full_pairs
    return {
        "tokens (analysis set)": tokens * token_bytes,
        "collect": shape.models * (n * 14 * 8 + shape.n_layers * 8 * shape.d_mlp**2),
        "correlate": 2 * pairs * n * 40 + (pair_files if plan.full_pairs else draws_rows * 36),
        "baseline": draws_rows * 36,
        "universality": shape.models * n * 110,
        "work": (plan.shards * pair_files if sharded else 0) + (0 if plan.full_pairs else mixing),
    }


@dataclass(frozen=True)
class Rates:
    """Machine rates: ``products`` FLOP/s of the per-batch product (float32 on CPU, bf16 on
    GPU; the forward passes are counted at this rate too), ``float64`` FLOP/s of the
    baseline's rotations; ``source`` says where they come from."""

    products: float
    float64: float
    source: str


def _best_rate(a: torch.Tensor, b: torch.Tensor, repeats: int = 3) -> float:
    """FLOP/s of ``a @ b`` (best of ``repeats``)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        if a.is_cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * a.shape[0] * a.shape[1] * b.shape[1] / best


def measure_rates(device: str = "cpu") -> Rates:
    """The machine's product and float64 matrix-product rates, measured now (a second or
    two): the correlation's shape ``[1024, T]ᵀ``-like products of 2,048 tokens."""
    gen = torch.Generator().manual_seed(0)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    x = torch.randn(1024, 2048, generator=gen).to(device, dtype)
    y = torch.randn(2048, 2048, generator=gen).to(device, dtype)
    products = _best_rate(x, y)
    rates64 = _best_rate(x.to(torch.float64)[:512], y.to(torch.float64))
    threads = torch.get_num_threads()
    return Rates(products, rates64, f"measured now on {device} ({threads} threads)")


def seconds(shape: GroupShape, plan: WorkPlan, tokens: int, rates: Rates) -> dict[str, float]:
    """Estimated compute seconds on one device: ``pass`` (the units' data pass), ``draws``
    (the baseline's rotations), ``correlate`` and ``baseline`` (the draws count where they
    run: in the units above the threshold, else in the baseline stage), ``per_unit``;
    products ``2·T·B·N`` and forward passes ``2·params·T`` per model run at the product
    rate; rotations ``4·B·N·d_mlp`` per draw and block and the draws' QR ``3·d³`` in float64."""
    n, b = shape.neurons, plan.block or shape.neurons
    blocks = -(-n // b)
    runs_per_pair = 1 if plan.one_pass else blocks * 1.5  # model b whole, a up to its block
    forward = shape.models if plan.one_pass else shape.pairs * runs_per_pair
    forward_flops = forward * 2 * shape.model_parameters() * tokens
    product_flops = shape.pairs * 2 * tokens * n * n
    rotation = shape.pairs * plan.samples * (4 * n * n * shape.d_mlp)
    qr = shape.models * plan.samples * shape.n_layers * 3 * shape.d_mlp**3
    passes = (forward_flops + product_flops) / rates.products
    draws = (rotation + qr) / rates.float64
    in_units = passes + (0.0 if plan.full_pairs else draws)
    return {
        "pass": passes,
        "draws": draws,
        "correlate": in_units,
        "baseline": draws if plan.full_pairs else 0.0,
        "per_unit": in_units / unit_count(shape, plan),
    }


def work_plan(params: Params, shape: GroupShape) -> WorkPlan:
    """The ``WorkPlan`` of the configured ``correlate`` / ``analysis`` / ``baseline``."""
    corr, cfg = params.correlate, params.analysis
    return WorkPlan(
        block=min(corr.neuron_block, shape.neurons),  # a block beyond the model is all of it
        shards=corr.token_shards,
        batch_tokens=cfg.batch_size * shape.context,
        full_pairs=corr.full_pairs(shape.neurons),
        samples=params.baseline.samples,
        one_pass=not corr.split(),
        model_bytes=2 if cfg.device.startswith("cuda") else 4,
        cuda=cfg.device.startswith("cuda"),
    )


def cuda_memory(device: str) -> tuple[int, str]:
    """``(bytes, what)``: the total memory of the CUDA ``device`` (e.g. ``"cuda:0"``)."""
    total = torch.cuda.get_device_properties(device).total_memory
    return total, f"the GPU's {total / GIB:.1f} GiB"


def _device_limit(params: Params) -> tuple[int, str]:
    """What one unit may use before ``UNIVERSAL_NEURONS_MEMORY_GB``: ``correlate.slurm.mem_gb``
    for Slurm, the local GPU's memory on CUDA, else what this process may use
    (``resources.memory_limit``: available memory, ulimit, cgroup), shared by the local
    executor's ``workers``; 0 where it cannot be known here."""
    corr = params.correlate
    if corr.executor == "slurm":
        return corr.slurm.mem_gb * GIB, f"correlate.slurm.mem_gb = {corr.slurm.mem_gb}"
    if params.analysis.device.startswith("cuda"):
        if not torch.cuda.is_available():
            return 0, "the CUDA device's memory (no GPU here to check against)"
        return cuda_memory(params.analysis.device)
    workers = corr.workers if corr.executor == "local" else 1
    free, source = process_memory_limit()
    if source == "the available memory":
        source = "this machine's available memory"
    return free // workers, f"{source} ({free // workers / GIB:.1f} GiB per worker)"


def memory_limit(params: Params) -> tuple[int, str]:
    """What one unit may use, and where that limit comes from (``_device_limit``), never more
    than ``UNIVERSAL_NEURONS_MEMORY_GB`` when it is set."""
    limit, source = _device_limit(params)
    configured = configured_memory_limit()
    if configured is not None and (not limit or configured[0] < limit):
        return configured
    return limit, source


def check_memory(params: Params, shape: GroupShape) -> dict[str, int]:
    """Refuse a plan whose units cannot fit (``memory_limit``), naming what to change;
    returns the unit's memory (``unit_memory``)."""
    plan = work_plan(params, shape)
    need = unit_memory(shape, plan)
    limit, source = memory_limit(params)
    if limit and need["total"] > limit:
        fits = largest_block(shape, plan, limit)
        hint = f"a block of {fits} neurons fits" if fits else "no block of whole layers fits"
        raise UserError(
            f"correlate.neuron_block: a unit needs about {need['total'] / GIB:.1f} GiB "
            f"(block {plan.block or shape.neurons} of {shape.neurons} neurons, "
            f"{plan.batch_tokens} tokens per batch), more than {source}; lower "
            f"correlate.neuron_block ({hint}) or analysis.batch_size"
        )
    return need


def largest_block(shape: GroupShape, plan: WorkPlan, limit: int) -> int:
    """The largest block of whole layers whose split unit fits in ``limit`` bytes (0: none)."""
    for layers in range(shape.n_layers, 0, -1):
        trial = replace(plan, block=layers * shape.d_mlp, one_pass=False)
        if unit_memory(shape, trial)["total"] <= limit:
            return layers * shape.d_mlp
    return 0
