"""Cost of the paper's and PolyPythia's preset groups (``universal-neurons plan --presets``).

Kept apart from ``matching.plan`` (which the correlate stage imports) so that a new preset or
rate here never reruns correlate. Shapes are the models' own configs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from universal_neurons.matching.plan import (
    GIB,
    PRESET_SHAPES,
    RUNTIME,
    GroupShape,
    Rates,
    WorkPlan,
    largest_block,
    seconds,
    unit_count,
    unit_memory,
)
from universal_neurons.matching.slabs import candidate_sums_bytes, rotate_per_token, slab_memory

POLYPYTHIA_SHAPES = {  # (n_layers, d_mlp, d_model, d_vocab, context), from the models' configs
    "polypythia-14m": (6, 512, 128, 50304, 2048),
    "polypythia-31m": (6, 1024, 256, 50304, 2048),
    "polypythia-70m": (6, 2048, 512, 50304, 2048),
    "polypythia-160m": (12, 3072, 768, 50304, 2048),
    "polypythia-410m": (24, 4096, 1024, 50304, 2048),
    "polypythia-160m-data-seed": (12, 3072, 768, 50304, 2048),
    "polypythia-160m-weight-seed": (12, 3072, 768, 50304, 2048),
}
ALL_PRESET_SHAPES = {**PRESET_SHAPES, **POLYPYTHIA_SHAPES}
"""Every preset group's model shape."""


GPU_RATES = Rates(728e12, 67e12, "H100: bf16 product measured, float64 tensor datasheet")
"""The GPU the preset table assumes: the bf16 product rate measured on an H100
(``benchmarks/results/h100.json``) and its datasheet's float64 tensor rate, in FLOP/s."""
GPU_MEMORY = 80 * GIB
"""The GPU memory a unit of the preset table may use (an 80 GB H100)."""


def preset_cost(
    shape: GroupShape, tokens: int, rates: Rates, cuda: bool, *, samples: int = 3
) -> dict:
    """The correlate cost of a group of ``shape`` on ``tokens`` analysis tokens, batches of
    12,288 tokens, ``samples`` baseline draws, full pair statistics up to 8,192 neurons (the
    defaults): on the CPU one pass over every pair when the statistics are full (as the
    default pipeline runs), else one unit per pair; on ``cuda`` one unit per pair, or the
    largest block of whole layers that fits ``GPU_MEMORY``. Returns ``units``, ``block`` (neurons of a per unit), ``memory`` (bytes
    per unit), ``seconds`` (compute on one device at ``rates``: correlate + baseline stage)."""
    full = shape.neurons <= 8192
    plan = WorkPlan(
        block=shape.neurons,
        shards=1,
        batch_tokens=12_288,
        full_pairs=full,
        samples=samples,
        one_pass=full and not cuda,
        model_bytes=2 if cuda else 4,
        cuda=cuda,
    )
    if cuda and unit_memory(shape, plan)["total"] > GPU_MEMORY:
        plan = replace(plan, block=largest_block(shape, plan, GPU_MEMORY) or shape.d_mlp)
    time = seconds(shape, plan, tokens, rates)
    return {
        "units": unit_count(shape, plan),
        "block": plan.block,
        "memory": unit_memory(shape, plan)["total"],
        "seconds": time["correlate"] + time["baseline"],
    }


def preset_costs(
    models: dict[str, int], tokens: int, cpu: Rates, gpu: Rates = GPU_RATES
) -> list[dict]:
    """One row per preset of ``ALL_PRESET_SHAPES`` (``models``: its member count): ``preset``,
    ``models``, ``neurons`` (per model), ``pairs``, ``tokens``, and ``cpu`` / ``gpu``:
    ``preset_cost`` at the ``cpu`` rates (float32, whole-model units) and at the ``gpu``
    rates (bf16); ``effects``: ``effects_cost`` at each and ``effects_memory``;
    ``uncertainty``: ``uncertainty_cost`` at each (its host work at the ``cpu`` rates on the
    GPU too)."""
    rows = []
    for preset, dims in ALL_PRESET_SHAPES.items():
        shape = GroupShape(models[preset], *dims)
        rows.append(
            {
                "preset": preset,
                "models": shape.models,
                "neurons": shape.neurons,
                "pairs": shape.pairs,
                "tokens": tokens,
                "cpu": preset_cost(shape, tokens, cpu, cuda=False),
                "gpu": preset_cost(shape, tokens, gpu, cuda=True),
                "effects": {
                    "cpu": effects_cost(shape, cpu),
                    "gpu": effects_cost(shape, gpu),
                    "memory": effects_memory(shape, **PRESET_EFFECTS)["total"],
                },
                "uncertainty": {
                    "cpu": uncertainty_cost(shape, tokens, cpu, cpu, cuda=False),
                    "gpu": uncertainty_cost(shape, tokens, gpu, cpu, cuda=True),
                },
            }
        )
    return rows


UNIVERSAL_FRACTION = 0.0416
"""The share of universal neurons the effects estimate assumes: the paper's largest (GPT2-small,
4.16 %), so the estimate is an upper bound for the groups it measured lower."""


def effects_cost(
    shape: GroupShape,
    rates: Rates,
    *,
    sequences: int = 256,
    controls: int = 4,
    universal_fraction: float = UNIVERSAL_FRACTION,
) -> dict:
    """The effects stage's compute on a group of ``shape``: per model its universal neurons
    (``universal_fraction`` of its neurons), ``controls`` controls each and a partner in every
    other model are ablated, each ablation one forward pass over ``sequences`` held-out
    sequences of ``shape.context`` tokens (counted as the whole model, 2 FLOP per weight and
    token: an upper bound, the stage runs only the layers after the neuron's). Returns
    ``universal`` (group), ``ablations`` (group) and ``seconds`` at ``rates.products``."""
    universal = round(universal_fraction * shape.neurons)
    ablations = shape.models * universal * (1 + controls + shape.models - 1)
    flops = 2 * shape.model_parameters() * sequences * shape.context * ablations
    return {
        "universal": shape.models * universal,
        "ablations": ablations,
        "seconds": flops / rates.products,
    }


PRESET_EFFECTS = {"context": 512, "batch_size": 16, "neuron_batch": 4}
"""The presets' ``tokens.context``, ``effects.batch_size`` and ``effects.neuron_batch``."""


def effects_memory(shape: GroupShape, *, context: int, batch_size: int, neuron_batch: int) -> dict:
    """The effects stage's peak memory (bytes) on a group of ``shape`` with ``effects.batch_size``
    sequences of ``context`` tokens per pass and ``effects.neuron_batch`` ablated copies of the
    batch: the clean pass's logits and probabilities and, per chunk, the copies' logits and their
    softmax
    (4-byte ``[tokens, vocab]`` tensors: ``logits``, which dominate at GPT-2's vocabulary), one
    loaded model, and the unembedding's float64 SVD for the roles (the centred copy, U and the
    workspace: three ``[d_model, vocab]``). ``total`` is their sum."""
    tokens = batch_size * context
    parts = {
        "logits": 2 * (1 + neuron_batch) * tokens * shape.d_vocab * 4,
        "model": shape.loaded_parameters() * 4,
        "svd": 3 * shape.d_model * shape.d_vocab * 8,
    }
    return parts | {"total": sum(parts.values())}


# --- uncertainty_resamples ---------------------------------------------------------------------


@dataclass(frozen=True)
class UncertaintySizes:
    """The bootstrap's sizes (``uncertainty.*``): ``resamples``, ``blocks``, ``candidates``
    (``k``) per neuron and partner, ``draws`` (``baseline_draws``)."""

    resamples: int = 200
    blocks: int = 20
    candidates: int = 8
    draws: int = 4


PRESET_UNCERTAINTY = UncertaintySizes()
"""The sizes every preset's params.yaml sets (the default pipeline's)."""

GPU_FLOAT32 = 67e12
"""FLOP/s of float32 on the GPU of the preset table (H100 datasheet, no tensor cores: torch
leaves TF32 off): the full-pairs path's float32 models, the slab path's within-layer sums."""

HOST_TO_DEVICE = 16e9
"""Bytes/s of a copy from host memory (the rotation matrices' memory maps, pageable) to the
GPU: an assumption (PCIe 5 x16 carries 64 GB/s, pageable copies a fraction of it)."""


def slab_products(shape: GroupShape, tokens: int, per_token: bool = False) -> dict[str, float]:
    """FLOPs of the slab path's products over ``tokens`` tokens (``matching.slabs``): every
    slab of ``B`` neurons of a model x against all ``N`` neurons of each other model, ``2·T·B·N``
    per partner, once in the candidate pass and once in the block-sums pass. A model's slabs
    cover its ``N`` neurons, so each pass is ``2·T·N²`` per ordered pair, twice correlate's
    products per unordered pair; the block sums add each slab layer's ``[d_mlp, d_mlp]``
    within-layer products (``2·T·L·d_mlp²`` per model, float32), none when the rotated
    squares are summed ``per_token`` (``slabs.rotate_per_token``). Returns ``candidates``,
    ``sums`` (with the within-layer products) and ``within`` (those alone)."""
    m, n = shape.models, shape.neurons
    cross = m * (m - 1) * 2 * tokens * n * n
    within = 0 if per_token else m * 2 * tokens * shape.n_layers * shape.d_mlp**2
    return {"candidates": float(cross), "sums": float(cross + within), "within": float(within)}


def rotation_flops(shape: GroupShape, sizes: UncertaintySizes) -> dict[str, float]:
    """Float64 FLOPs of the bootstrap's rotations and resamples, by part: ``candidates`` (the
    candidate step's rotated correlations, per ordered pair and draw ``2·N²·d_mlp``), ``qr``
    (the rotation draws, ``3·d_mlp³`` per model, draw and layer), per block ``columns`` (the
    rotated columns, ``2·d_mlp³`` per model, draw and layer) and ``rotated`` (the rotated
    candidate sums, ``2·N·k·d_mlp`` per ordered pair and draw), ``gathered`` (the full-pairs
    path's ``2·N·k`` gathered products per link and block from its ``[N, N]`` sums) and
    ``resampled`` (every link's resampled correlations, ``2·resamples·blocks·N·k``; links
    ``M(M − 1)(1 + draws)``)."""
    m, n, d, layers = shape.models, shape.neurons, shape.d_mlp, shape.n_layers
    ordered, k, draws = m * (m - 1), sizes.candidates, sizes.draws
    return {
        "candidates": float(ordered * draws * 2 * n * n * d),
        "qr": float(m * draws * layers * 3 * d**3),
        "columns": float(sizes.blocks * m * draws * layers * 2 * d**3),
        "rotated": float(sizes.blocks * ordered * draws * 2 * n * k * d),
        "gathered": float(sizes.blocks * ordered * (1 + draws) * 2 * n * k),
        "resampled": float(2 * sizes.resamples * sizes.blocks * ordered * (1 + draws) * n * k),
    }


SLAB_DEVICE_PARTS = ("candidates", "columns", "rotated")
"""The ``rotation_flops`` parts the slab path runs on the pass's device (``matching.slabs``);
the rotation draws' QR and the resamples stay on the host."""


def slab_device_flops(
    shape: GroupShape, sizes: UncertaintySizes, tokens: int, per_token: bool = False
) -> float:
    """Float64 FLOPs the slab path runs on the pass's device (``SLAB_DEVICE_PARTS``) over
    ``tokens`` analysis positions; ``per_token``: the rotated columns' squares summed token
    by token (``2·T·d_mlp²`` per model, draw and layer, ``slabs.rotate_per_token``) instead of
    per block."""
    flops = rotation_flops(shape, sizes)
    if per_token:
        layers = shape.models * sizes.draws * shape.n_layers
        flops["columns"] = float(layers * 2 * tokens * shape.d_mlp**2)
    return sum(flops[part] for part in SLAB_DEVICE_PARTS)


def slab_host_flops(shape: GroupShape, sizes: UncertaintySizes, slabs: bool = True) -> float:
    """Float64 FLOPs on the host CPU: for the slab path the rotation draws' QR and the
    resampled correlations (the rest runs on the pass's device, ``slab_device_flops``); for
    the full-pairs path (not ``slabs``) every part of ``rotation_flops``."""
    flops = rotation_flops(shape, sizes)
    if slabs:
        return flops["qr"] + flops["resampled"]
    return sum(size for part, size in flops.items())


def slab_transfer_bytes(shape: GroupShape, sizes: UncertaintySizes, layers: int) -> int:
    """Bytes the slab path copies from the host to a GPU with slabs of ``layers`` layers: in
    each slab's candidate step every partner's rotation matrices and within-layer covariances
    of every draw (``2·L·d_mlp²`` float64 per partner and draw), and per block and slab every
    partner's matrices of every draw and x's of the slab's layers."""
    m, d, draws = shape.models, shape.d_mlp, sizes.draws
    per_model = -(-shape.n_layers // layers)
    slabs = m * per_model
    draw = 8 * shape.n_layers * d * d  # one model's matrices of one draw
    candidates = slabs * (m - 1) * draws * 2 * draw
    blocks = sizes.blocks * (slabs * (m - 1) * draws * draw + m * draws * draw)
    return candidates + blocks


def candidate_sums(shape: GroupShape, sizes: UncertaintySizes) -> int:
    """Bytes of the group's ``CandidateSums`` (``slabs.candidate_sums_bytes``): float64 sums
    per block of every model's and rotated key's ``N`` columns and of each link's ``[N, k]``
    candidates."""
    return candidate_sums_bytes(
        sizes.blocks, shape.models, sizes.draws, shape.neurons, sizes.candidates
    )


def slab_fixed_memory(
    shape: GroupShape, sizes: UncertaintySizes, model_bytes: int, with_sums: bool = True
) -> int:
    """Bytes the pass's device holds whatever the slab: the loaded models (``model_bytes``
    per weight), the process (``RUNTIME``) and, ``with_sums`` (on the CPU, where host and
    device are one), the ``candidate_sums``."""
    models = shape.models * shape.loaded_parameters() * model_bytes
    return (candidate_sums(shape, sizes) if with_sums else 0) + models + RUNTIME


def slab_path_memory(shape: GroupShape, layers: int, batch_tokens: int, fixed: int) -> int:
    """Bytes of the slab path with slabs of ``layers`` layers: ``fixed`` + ``slabs.slab_memory``."""
    parts = slab_memory(shape.models, shape.n_layers, shape.d_mlp, layers, batch_tokens)
    return fixed + sum(size for _, size in parts.values())


FULL_PAIRS_MAX_NEURONS = 8192
"""``correlate.full_pairs_max_neurons`` of every preset: up to it correlate holds full pair
statistics and takes the candidate links from them (``pair_reductions``), and
uncertainty_resamples sums them in one pass (no slabs)."""


def full_pairs_uncertainty_cost(
    shape: GroupShape,
    tokens: int,
    rates: Rates,
    host: Rates,
    cuda: bool,
    sizes: UncertaintySizes,
    memory: int = GPU_MEMORY,
) -> dict:
    """``uncertainty_cost`` of a group up to ``FULL_PAIRS_MAX_NEURONS``: candidates from
    correlate's links, one pass of every float32 model over all tokens, whose activations the host
    CPU sums (``block_products.BlockProducts``: ``2·T·N²`` per unordered pair and the
    within-layer products, at ``host.products``) into ``[N, N]`` float64 per pair; ``fits``
    within ``memory`` bytes."""
    m, n = shape.models, shape.neurons
    forward = m * 2 * shape.model_parameters() * tokens
    products = shape.pairs * 2 * tokens * n * n + m * 2 * tokens * shape.n_layers * shape.d_mlp**2
    block = shape.pairs * 8 * n * n + m * 8 * (2 * n + shape.n_layers * shape.d_mlp**2)
    fixed = slab_fixed_memory(shape, sizes, 4)
    seconds = forward / (GPU_FLOAT32 if cuda else rates.products) + products / host.products
    return {
        "layers": 0,
        "slabs": 0,
        "fits": fixed + block <= memory,
        "sums": candidate_sums(shape, sizes),
        "memory": fixed + block,
        "products": float(products),
        "seconds": seconds + slab_host_flops(shape, sizes, slabs=False) / host.float64,
    }


def _slab_layers(shape: GroupShape, batch_tokens: int, fixed: int, memory: int) -> list[int]:
    """Layers per slab whose ``slab_path_memory`` fits ``memory`` bytes, most first."""
    return [
        layers
        for layers in range(shape.n_layers, 0, -1)
        if slab_path_memory(shape, layers, batch_tokens, fixed) <= memory
    ]


def uncertainty_cost(
    shape: GroupShape,
    tokens: int,
    rates: Rates,
    host: Rates,
    cuda: bool,
    *,
    sizes: UncertaintySizes = PRESET_UNCERTAINTY,
    memory: int = GPU_MEMORY,
    batch_tokens: int = 12_288,
) -> dict:
    """The uncertainty_resamples stage on a group of ``shape`` and ``tokens`` analysis tokens:
    up to ``FULL_PAIRS_MAX_NEURONS`` its full-pairs path (``full_pairs_uncertainty_cost``),
    else its slab path, slabs of the most whole layers whose memory on the pass's device fits
    ``memory`` bytes (as the stage sizes them, ``slabs.slab_layers``; one layer when none
    fits; on ``cuda`` the candidate sums stay on the host). As correlate, the models run in
    bf16 on ``cuda`` (float32 on the CPU) and per slab a candidate and a block-sums pass run
    every model forward over all tokens (whole models, ``2·params·T`` each) at
    ``rates.products``, with the cross products of ``slab_products``; the within-layer sums
    in float32 (``GPU_FLOAT32`` on ``cuda``), none where the rotated squares are summed token
    by token (``slabs.rotate_per_token``); ``slab_device_flops`` at ``rates.float64``,
    ``slab_host_flops`` at ``host.float64`` and on ``cuda`` ``slab_transfer_bytes`` at
    ``HOST_TO_DEVICE``. Returns ``layers`` (per slab), ``slabs`` (group), ``fits``, ``sums``
    (``candidate_sums`` bytes), ``memory`` (bytes on the pass's device), ``products``
    (FLOPs, both passes) and ``seconds``."""
    if shape.neurons <= FULL_PAIRS_MAX_NEURONS:
        return full_pairs_uncertainty_cost(shape, tokens, rates, host, cuda, sizes, memory)
    fixed = slab_fixed_memory(shape, sizes, 2 if cuda else 4, with_sums=not cuda)
    fitting = _slab_layers(shape, batch_tokens, fixed, memory)
    layers = fitting[0] if fitting else 1
    slabs = shape.models * -(-shape.n_layers // layers)
    forward = 2 * slabs * shape.models * 2 * shape.model_parameters() * tokens
    per_token = rotate_per_token(tokens, sizes.blocks, shape.d_mlp)
    products = slab_products(shape, tokens, per_token)
    cross = products["candidates"] + products["sums"] - products["within"]
    within = products["within"] / (GPU_FLOAT32 if cuda else rates.products)
    time = (forward + cross) / rates.products + within
    time += slab_device_flops(shape, sizes, tokens, per_token) / rates.float64
    time += slab_host_flops(shape, sizes) / host.float64
    if cuda:
        time += slab_transfer_bytes(shape, sizes, layers) / HOST_TO_DEVICE
    return {
        "layers": layers,
        "slabs": slabs,
        "fits": bool(fitting),
        "sums": candidate_sums(shape, sizes),
        "memory": slab_path_memory(shape, layers, batch_tokens, fixed),
        "products": products["candidates"] + products["sums"],
        "seconds": time,
    }
