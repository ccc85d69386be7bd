"""Print what the configured correlate plan costs: units, memory per unit, outputs, time.

For the group of the parameter file (the trained group's ``model`` section, a preset's
known shape, or the first model's ``config.json``) and its work units (``correlate.*``):
each unit's peak memory against what it may use (the check the correlate stage makes),
the number of units, the size of every analysis stage's outputs, and the estimated time
from matrix-product rates measured now on this machine (or given with the options).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click
import numpy as np

from universal_neurons.errors import UserError
from universal_neurons.matching.plan import (
    GIB,
    GroupShape,
    Rates,
    measure_rates,
    memory_limit,
    output_sizes,
    seconds,
    shape_from_config,
    unit_count,
    unit_memory,
    work_plan,
)
from universal_neurons.matching.preset_plan import (
    ALL_PRESET_SHAPES,
    GPU_MEMORY,
    PRESET_EFFECTS,
    PRESET_UNCERTAINTY,
    UNIVERSAL_FRACTION,
    preset_costs,
)
from universal_neurons.matching.units import check_token_shards
from universal_neurons.models.group import PRESETS
from universal_neurons.outputs.text_table import TERMINAL_WIDTH, wrapped_line
from universal_neurons.pipeline.command import Command
from universal_neurons.pipeline.layout import Layout

if TYPE_CHECKING:
    from universal_neurons.config import Params


def group_shape(params: Params, layout: Layout) -> GroupShape:
    """The group's shape: the first model's config.json if it is there, else the preset's
    known shape, else the trained group's ``model`` section."""
    models, context = len(params.train.seeds), params.tokens.context
    first = layout.model(params.train.seeds[0])
    if (first / "config.json").is_file():
        found = shape_from_config(first, models)
        return GroupShape(models, *_dims(found), context)
    preset = params.group.preset
    if preset in ALL_PRESET_SHAPES:
        return GroupShape(models, *ALL_PRESET_SHAPES[preset][:4], context)
    if preset != "trained":
        raise UserError(f"group.preset: {preset}: the plan needs {first}/config.json")
    m, vocab = params.model, params.tokenizer.vocab_size
    vocab = vocab if params.tokenizer.kind == "bpe" else 50257
    return GroupShape(models, m.n_layers, m.d_mlp, m.d_model, vocab, context)


def _dims(shape: GroupShape) -> tuple[int, int, int, int]:
    return shape.n_layers, shape.d_mlp, shape.d_model, shape.d_vocab


def token_count(params: Params, layout: Layout, tokens: int | None) -> int:
    """Tokens of the analysis set: ``--tokens``, else ``analysis.max_sequences`` x context,
    else the token set's size."""
    if tokens:
        return tokens
    if params.analysis.max_sequences:
        return params.analysis.max_sequences * params.tokens.context
    path = Path(layout.tokens) / f"{params.analysis.split}_tokens.npy"
    if not path.is_file():
        raise UserError("analysis.max_sequences is 0 and there is no token set yet: give --tokens")
    return int(np.prod(np.load(path, mmap_mode="r").shape))


def _rates(params: Params, products: float | None, float64: float | None) -> Rates:
    """The rates of the options (TFLOP/s), the rest measured now."""
    if products and float64:
        return Rates(products * 1e12, float64 * 1e12, "given on the command line")
    device = params.analysis.device
    import torch

    measured = measure_rates(device if torch.cuda.is_available() else "cpu")
    return Rates(
        products * 1e12 if products else measured.products,
        float64 * 1e12 if float64 else measured.float64,
        measured.source + (" (one rate given)" if products or float64 else ""),
    )


def _parallel(params: Params, parallel: int | None) -> int:
    """Units running at once: ``--parallel``, else the executor's workers / array size."""
    corr = params.correlate
    if parallel:
        return parallel
    return {"local": corr.workers, "slurm": corr.slurm.array_parallelism}.get(corr.executor, 1)


def run(
    params: Params,
    layout: Layout,
    tokens: int | None = None,
    products_tflops: float | None = None,
    float64_tflops: float | None = None,
    parallel: int | None = None,
    wide: bool = False,
    presets: bool = False,
) -> dict:
    """The plan's numbers (see the module docstring); ``width``: the columns ``render`` wraps
    its lines at (``TERMINAL_WIDTH``; ``None`` with ``wide``). ``presets``: instead, every
    preset's cost on this CPU and on the reference GPU (``preset_table``)."""
    if presets:
        table = preset_table(params, tokens, products_tflops, float64_tflops)
        return table | {"width": None if wide else TERMINAL_WIDTH}
    shape = group_shape(params, layout)
    n_tokens = token_count(params, layout, tokens)
    sequences = -(-n_tokens // shape.context)
    check_token_shards(params.correlate.token_shards, sequences, params.analysis.batch_size)
    plan = work_plan(params, shape)
    rates = _rates(params, products_tflops, float64_tflops)
    units, lanes = unit_count(shape, plan), _parallel(params, parallel)
    time = seconds(shape, plan, n_tokens, rates)
    limit, source = memory_limit(params)
    return {
        "shape": shape,
        "tokens": n_tokens,
        "plan": plan,
        "units": units,
        "memory": unit_memory(shape, plan),
        "limit": (limit, source),
        "outputs": output_sizes(shape, plan, n_tokens),
        "rates": rates,
        "seconds": time,
        "parallel": lanes,
        "wall": time["per_unit"] * -(-units // lanes) + time["baseline"],
        "threshold": params.correlate.full_pairs_max_neurons,
        "width": None if wide else TERMINAL_WIDTH,
    }


PRESET_TOKENS = 100_000_000
"""Analysis tokens of the preset table unless ``--tokens`` says otherwise (the paper's size)."""


def preset_table(
    params: Params, tokens: int | None, products: float | None, float64: float | None
) -> dict:
    """``{"presets": rows}`` (``matching.plan.preset_costs``) at ``tokens`` (default
    ``PRESET_TOKENS``), CPU rates measured now on the CPU or given."""
    if products and float64:
        cpu = Rates(products * 1e12, float64 * 1e12, "given on the command line")
    else:
        measured = measure_rates("cpu")
        cpu = Rates(
            products * 1e12 if products else measured.products,
            float64 * 1e12 if float64 else measured.float64,
            measured.source,
        )
    models = {name: len(members) for name, members in PRESETS.items()}
    rows = preset_costs(models, tokens or PRESET_TOKENS, cpu)
    return {"presets": rows, "cpu_rates": cpu}


def render_presets(r: dict) -> str:
    """The preset table as text, within ``TERMINAL_WIDTH`` columns."""
    cpu, rows = r["cpu_rates"], r["presets"]
    head = f"{'preset':<28}{'seeds':>5}{'neurons':>8}{'pairs':>6}  {'CPU units':>9}"
    head += f"{'memory/unit':>12}{'time':>10}  {'GPU units':>9}{'memory/unit':>12}{'time':>10}"
    lines = [
        f"correlate + baseline at {rows[0]['tokens']:,} tokens; CPU: products "
        f"{cpu.products / 1e12:.3f} TFLOP/s ({cpu.source}); GPU: an H100 (bf16 728 TFLOP/s, "
        "measured), one unit per pair where 80 GiB allows",
        head,
    ]
    for row in rows:
        line = f"{row['preset']:<28}{row['models']:>5}{row['neurons']:>8,}{row['pairs']:>6}"
        for side in ("cpu", "gpu"):
            cost = row[side]
            memory, time = f"{cost['memory'] / GIB:.1f} GiB", _duration(cost["seconds"])
            line += f"  {cost['units']:>9}{memory:>12}{time:>10}"
        lines.append(line)
    lines.append(
        "compute estimate (a lower bound): measured, the GPT2-small group took 2.4x it on the H100"
    )
    lines += effects_lines(rows) + uncertainty_lines(rows)
    return wrapped(lines, r.get("width", TERMINAL_WIDTH))


def effects_lines(rows: list[dict]) -> list[str]:
    """The effects_candidates stage's estimate per preset (``preset_plan.effects_cost``; a
    preset's ``universality.candidate_threshold`` is its τ: the candidates are the universal
    neurons)."""
    lines = [
        "",
        f"effects_candidates stage: {UNIVERSAL_FRACTION:.2%} of neurons candidates (the paper's "
        "largest universal share; a preset's candidate_threshold is its τ), "
        "4 controls and a partner per other model each, 256 sequences of the model's context; "
        f"memory: the presets' batches of {PRESET_EFFECTS['batch_size']} sequences of "
        f"{PRESET_EFFECTS['context']} tokens x {PRESET_EFFECTS['neuron_batch']} ablated copies "
        "(effects.batch_size, effects.neuron_batch: the copies' [tokens, vocab] logits dominate)",
        f"{'preset':<28}{'universal':>10}{'ablations':>11}{'CPU time':>12}{'GPU time':>12}"
        f"{'memory':>11}",
    ]
    for row in rows:
        cpu, gpu = row["effects"]["cpu"], row["effects"]["gpu"]
        lines.append(
            f"{row['preset']:<28}{cpu['universal']:>10,}{cpu['ablations']:>11,}"
            f"{_duration(cpu['seconds']):>12}{_duration(gpu['seconds']):>12}"
            f"{row['effects']['memory'] / GIB:>7.1f} GiB"
        )
    return lines


def uncertainty_lines(rows: list[dict]) -> list[str]:
    """The uncertainty_resamples stage's estimate per preset (``preset_plan.uncertainty_cost``):
    slabs x layers (``pairs``: from correlate's full pair statistics, one pass), memory
    (``!``: over the limit, even with one layer per slab), time."""
    sizes = PRESET_UNCERTAINTY
    lines = [
        "",
        f"uncertainty_resamples (slab path): {sizes.resamples} resamples of {sizes.blocks} "
        f"blocks, {sizes.candidates} candidates, {sizes.draws} draws; per slab of whole layers "
        "a candidate and a block-sums pass over every ordered pair (4x correlate's products), "
        "models and products as correlate's (bf16 on the GPU), rotations in float64 on the "
        f"device; slabs sized to {GPU_MEMORY / GIB:.0f} GiB of it (the GPU's sums on the host); "
        "QR and resamples in float64 on this CPU",
        f"{'preset':<28}{'sums':>10}  {'CPU slabs':>9}{'memory':>11}{'time':>10}"
        f"  {'GPU slabs':>9}{'memory':>11}{'time':>10}",
    ]
    for row in rows:
        cost = row["uncertainty"]
        line = f"{row['preset']:<28}{cost['cpu']['sums'] / GIB:>6.1f} GiB"
        for side in ("cpu", "gpu"):
            c = cost[side]
            slabs = f"{c['slabs']} x {c['layers']}L" if c["slabs"] else "pairs"
            memory = f"{c['memory'] / GIB:.1f} GiB" + ("" if c["fits"] else "!")
            line += f"  {slabs:>9}{memory:>11}{_duration(c['seconds']):>10}"
        lines.append(line)
    lines.append(
        "pairs: up to 8,192 neurons, candidates taken by correlate (its links), one pass summed on "
        "the CPU; !: over the memory even with one layer per slab: lower analysis.batch_size "
        "(the activations of one batch of every model) or give more (UNIVERSAL_NEURONS_MEMORY_GB)"
    )
    return lines


def _duration(s: float) -> str:
    """Seconds as s, min, h, or days beyond two days."""
    return f"{s / 86400:,.0f} d" if s >= 2 * 86400 else _hours(s)


def wrapped(lines: list[str], width: int | None) -> str:
    """``lines`` joined, each wrapped at ``width`` columns (continuations indented by two
    spaces); unwrapped when ``width`` is None."""
    if width is None:
        return "\n".join(lines)
    return "\n".join(part for line in lines for part in wrapped_line(line, width))


def _size(n: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def _hours(s: float) -> str:
    return f"{s / 3600:.2f} h" if s >= 3600 else f"{s / 60:.1f} min" if s >= 60 else f"{s:.1f} s"


def render(r: dict) -> str:
    """The plan as lines of text (the preset table with ``--presets``)."""
    if "presets" in r:
        return render_presets(r)
    shape, plan, mem, rates = r["shape"], r["plan"], r["memory"], r["rates"]
    block = plan.block or shape.neurons
    mode = "full pair statistics" if plan.full_pairs else "per-neuron maxima + baseline draws"
    where = "baseline stage" if plan.full_pairs else "in correlate's units"
    threshold = r["threshold"]
    parts = ", ".join(f"{k} {v / GIB:.2f}" for k, v in mem.items() if k != "total")
    limit = r["limit"][0]
    fits = "not checked" if not limit else "fits" if mem["total"] <= limit else "DOES NOT FIT"
    lines = [
        f"group: {shape.models} models x {shape.n_layers} layers x {shape.d_mlp} = "
        f"{shape.neurons:,} neurons each, {shape.pairs} pairs; {r['tokens']:,} tokens",
        f"correlate writes: {mode} ({shape.neurons:,} neurons per model, "
        f"correlate.full_pairs_max_neurons = {threshold:,})",
        f"units: {r['units']} = {shape.pairs} pairs x {-(-shape.neurons // block)} blocks of "
        f"{block} x {plan.shards} shards" + (" (one pass)" if plan.one_pass else ""),
        f"memory per unit: {mem['total'] / GIB:.2f} GiB ({parts} GiB); "
        f"limit {r['limit'][1]}: {fits}",
        "outputs: " + ", ".join(f"{k} {_size(v)}" for k, v in r["outputs"].items()),
        f"rates: products {rates.products / 1e12:.3f} TFLOP/s, float64 "
        f"{rates.float64 / 1e12:.3f} TFLOP/s ({rates.source})",
        f"time on one device: correlate {_hours(r['seconds']['correlate'])} (data pass "
        f"{_hours(r['seconds']['pass'])}, baseline draws {_hours(r['seconds']['draws'])} "
        f"{where}), baseline stage {_hours(r['seconds']['baseline'])}; per unit "
        f"{_hours(r['seconds']['per_unit'])}; {r['parallel']} units at once: {_hours(r['wall'])}",
    ]
    return wrapped(lines, r.get("width"))


COMMAND = Command(
    name="plan",
    run=run,
    render=render,
    options=[
        click.option("--tokens", type=int, default=None, help="Analysis tokens (default: params)."),
        click.option(
            "--products-tflops", type=float, default=None, help="Product rate (default: measured)."
        ),
        click.option(
            "--float64-tflops", type=float, default=None, help="float64 rate (default: measured)."
        ),
        click.option(
            "--parallel", type=int, default=None, help="Units at once (default: the executor's)."
        ),
        click.option(
            "--presets", is_flag=True, help="Every preset's cost on this CPU and on an H100."
        ),
        click.option(
            "--wide", is_flag=True, help=f"One line per item (default: wrap at {TERMINAL_WIDTH})."
        ),
    ],
)
