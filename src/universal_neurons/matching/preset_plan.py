"""Cost of the paper's and PolyPythia's preset groups (``universal-neurons plan --presets``).

Kept apart from ``matching.plan`` (which the correlate stage imports) so that a new preset or
rate here never reruns correlate. Shapes are the models' own configs.
"""

from __future__ import annotations

from dataclasses import replace

from universal_neurons.matching.plan import (
    GIB,
    PRESET_SHAPES,
    GroupShape,
    Rates,
    WorkPlan,
    largest_block,
    seconds,
    unit_count,
    unit_memory,
)

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
    rates (bf16); ``effects``: ``effects_cost`` at each."""
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
                "effects": {"cpu": effects_cost(shape, cpu), "gpu": effects_cost(shape, gpu)},
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
