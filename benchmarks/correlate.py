"""Benchmark of the correlation core, all figures measured in one run on the same machine.

(a) FLOP/s of the correlation update (``CrossMoments.update``: centring, the centred
    product, the float64 Chan merge) against the machine's own plain matrix product of
    the same shapes (``torch.mm``, float32 on CPU / bf16->fp32 on CUDA): their ratio.
(b) peak memory of a whole correlate pass (two models, ``correlate_group``) at two token
    counts 4x apart, each in a fresh subprocess (``ru_maxrss``; ``torch.cuda`` peak on GPU).
(c) time to capture MLP activations with hooks (``capture_mlp``) against a bare forward
    pass of the same model: their ratio.
(d) ``--gpt2-small``: a GPT2-small-shaped pair (12 layers x 3072 neurons, random weights,
    config built locally, no download) on the GPU: tokens/s for the pair including both
    forward passes, the fraction of the measured bf16 matrix-product peak, and the error of
    the bf16 correlations against float64 on a block of neurons.

Usage: ``python benchmarks/correlate.py`` (small CPU sizes) or
``python benchmarks/correlate.py --gpt2-small --device cuda``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from universal_neurons.config import ModelConfig  # noqa: E402
from universal_neurons.matching.correlation import CrossMoments  # noqa: E402
from universal_neurons.matching.pairs import resolve_products  # noqa: E402
from universal_neurons.models.gpt2 import gpt2_config, init_model, save_model  # noqa: E402


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _times(func, device: str, repeats: int) -> list[float]:
    """Seconds of ``repeats`` calls of ``func`` after one warm-up call (device synchronised)."""
    func()  # warm-up
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        func()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def _best_time(func, device: str, repeats: int = 3) -> float:
    return min(_times(func, device, repeats))


def _median_time(func, device: str, repeats: int = 5) -> float:
    return float(np.median(_times(func, device, repeats)))


def bench_update(n: int, tokens: int, device: str, products: str) -> dict:
    """(a): the update's achieved FLOP/s vs a bare matrix product of the same shapes."""
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(tokens, n, device=device, generator=gen).relu_()
    y = torch.randn(tokens, n, device=device, generator=gen).relu_()
    stats = CrossMoments.empty(n, n, device)
    state = {"stats": stats}

    def update():
        state["stats"] = state["stats"].update(x, y, products)

    if products == "bfloat16":
        xt, yb = x.T.contiguous().bfloat16(), y.bfloat16()

        def bare():
            try:
                torch.mm(xt, yb, out_dtype=torch.float32)
            except (RuntimeError, TypeError):
                torch.mm(xt.float(), yb.float())
    else:
        xt, yb = x.T.contiguous(), y

        def bare():
            torch.mm(xt, yb)

    flops = 2.0 * tokens * n * n
    t_update = _best_time(update, device)
    t_bare = _best_time(bare, device)
    return {
        "shape": f"[{n}, {tokens}] x [{tokens}, {n}]",
        "products": products,
        "update_s": t_update,
        "matmul_s": t_bare,
        "update_gflops": flops / t_update / 1e9,
        "matmul_gflops": flops / t_bare / 1e9,
        "ratio": t_bare / t_update,
    }


def _tiny_models(
    root: Path, shape: ModelConfig, vocab: int, n_ctx: int, seeds=(1, 2)
) -> list[Path]:
    paths = []
    for seed in seeds:
        path = root / f"seed{seed}"
        if not path.exists():
            save_model(init_model(gpt2_config(shape, vocab, n_ctx, 0), seed), path)
        paths.append(path)
    return paths


def memory_child(args) -> None:
    """Run one correlate pass over ``args.memory_tokens`` tokens; print peak memory as JSON."""
    from universal_neurons.matching.pairs import correlate_group
    from universal_neurons.models.loading import load_model

    root = Path(args.model_root)
    models = {p.name: load_model(str(p), device=args.device) for p in sorted(root.iterdir())}
    n_ctx = args.context
    sequences = args.memory_tokens // n_ctx
    tokens = np.random.default_rng(0).integers(1, args.vocab, size=(sequences, n_ctx))
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    stats = correlate_group(
        models, tokens, np.array([0]), args.batch, "float32", device=args.device, progress=False
    )
    elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {
        "tokens": int(stats.kept_positions),
        "seconds": elapsed,
        "peak_rss_mib": peak / 1024,
        "rss_before_mib": before / 1024,
    }
    if args.device.startswith("cuda"):
        out["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(out))


def bench_memory(args, root: Path) -> dict:
    """(b): peak memory of a correlate pass at two token counts 4x apart (fresh processes)."""
    results = []
    for tokens in (args.memory_tokens, 4 * args.memory_tokens):
        cmd = [
            sys.executable,
            __file__,
            "--memory-child",
            "--memory-tokens",
            str(tokens),
            "--model-root",
            str(root),
            "--device",
            args.device,
            "--context",
            str(args.context),
            "--vocab",
            str(args.vocab),
            "--batch",
            str(args.batch),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    key = "cuda_peak_mib" if args.device.startswith("cuda") else "peak_rss_mib"
    return {"runs": results, "peak_ratio_4x_tokens": results[1][key] / results[0][key]}


def bench_hooks(path: Path, args) -> dict:
    """(c): capture_mlp (fused trunk, stops after the last MLP) vs the same layers' plain
    Hugging Face forward (``model.transformer``, its default fused attention): their ratio.
    The bridge's hook path is timed too, for reference."""
    from transformers import AutoModelForCausalLM

    from universal_neurons.models.loading import capture_mlp, load_model

    model = load_model(str(path), device=args.device)
    plain = AutoModelForCausalLM.from_pretrained(str(path)).to(args.device).eval()
    tokens = torch.as_tensor(
        np.random.default_rng(1).integers(1, args.vocab, size=(args.batch, args.context)),
        device=args.device,
    )
    with torch.no_grad():
        t_fused = _median_time(lambda: capture_mlp(model, tokens, ("post",)), args.device)
        t_hooks = _median_time(
            lambda: capture_mlp(model, tokens, ("post",), fused=False), args.device
        )
        t_plain = _median_time(lambda: plain.transformer(tokens), args.device)
    return {
        "capture_s": t_fused,
        "hooks_s": t_hooks,
        "plain_trunk_s": t_plain,
        "ratio": t_fused / t_plain,
        "hooks_ratio": t_hooks / t_plain,
    }


SHAPES = {  # family, layers, d_model, heads, d_mlp, vocab, context
    "gpt2-small": ("gpt2", 12, 768, 12, 3072, 50257, 1024),
    "gpt2-medium": ("gpt2", 24, 1024, 16, 4096, 50257, 1024),
    "pythia-160m": ("gpt_neox", 12, 768, 12, 3072, 50304, 2048),
}
"""The paper's three groups' model shapes (random weights, configs built locally)."""


def _shaped_models(root: Path, name: str, layers: int) -> list[Path]:
    """Two models of shape ``SHAPES[name]`` (``layers`` of them) saved under ``root``."""
    family, _, d_model, heads, d_mlp, vocab, n_ctx = SHAPES[name]
    if family == "gpt2":
        shape = ModelConfig(
            n_layers=layers, d_model=d_model, n_heads=heads, d_mlp=d_mlp, activation="gelu_new"
        )
        return _tiny_models(root, shape, vocab, n_ctx)
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    config = GPTNeoXConfig(
        vocab_size=vocab,
        hidden_size=d_model,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=d_mlp,
        max_position_embeddings=n_ctx,
        rotary_pct=0.25,
        use_parallel_residual=True,
    )
    paths = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        path = root / f"seed{seed}"
        GPTNeoXForCausalLM(config).save_pretrained(path)
        paths.append(path)
    return paths


def bench_pair(args, name: str, blocks: int = 0) -> dict:
    """(d): one pair of ``name``-shaped models through correlate's own pass
    (``units.correlate_pass``: both forwards, the masks, the update, the finite checks),
    the rows of the last of ``blocks`` blocks of neurons (all layers of both models; 0: the
    fewest that fit ``--pair-gib``); the pair's rate is the unit's divided by ``blocks``."""
    from universal_neurons.matching.units import PassSettings, Unit, correlate_pass
    from universal_neurons.models.loading import load_model, model_dtype
    from universal_neurons.models.trunk import uses_trunk

    device = args.device
    layers = args.pair_layers or SHAPES[name][1]
    d_mlp, vocab, n_ctx = SHAPES[name][4], SHAPES[name][5], min(SHAPES[name][6], args.pair_context)
    dtype = getattr(torch, model_dtype(device))
    n = layers * d_mlp
    blocks = blocks or args.pair_blocks or _blocks_for(n, layers, args.pair_gib)
    rows = (n - n // blocks, n)
    products = resolve_products("auto", device)
    seqs, batches = args.pair_batch, args.pair_batches
    tokens = np.random.default_rng(0).integers(1, vocab, size=((batches + 1) * seqs, n_ctx))
    excluded = np.array([0])
    with tempfile.TemporaryDirectory() as tmp:
        paths = _shaped_models(Path(tmp), name, layers)
        start = time.perf_counter()
        models = {
            "a": load_model(str(paths[0]), device, dtype),
            "b": load_model(str(paths[1]), device, dtype),
        }
        load_s = time.perf_counter() - start
    settings = PassSettings(seqs, products, device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    warm = Unit("a", "b", rows, (0, seqs))
    correlate_pass([warm], models, (tokens, excluded), settings)  # warm-up, first-batch checks
    _sync(device)
    timed = Unit("a", "b", rows, (seqs, (batches + 1) * seqs))
    start = time.perf_counter()
    stats, _ = correlate_pass([timed], models, (tokens, excluded), settings)
    _sync(device)
    elapsed = time.perf_counter() - start
    kept = stats.pop(timed).count  # (frees the sums before the profile)
    flops = 2.0 * kept * (rows[1] - rows[0]) * n
    bare = _bare_product_rate(rows[1] - rows[0], n, kept // batches, device, products)
    out = {
        "shape": name,
        "layers": layers,
        "neurons": n,
        "rows_in_unit": rows[1] - rows[0],
        "blocks_per_pair": blocks,
        "model_dtype": str(dtype).replace("torch.", ""),
        "products": products,
        "tokens": kept,
        "unit_tokens_per_s": kept / elapsed,
        "pair_tokens_per_s": kept / elapsed / blocks,
        "achieved_tflops_incl_forwards": flops / elapsed / 1e12,
        "product_only_tflops": bare / 1e12,
        "fraction_of_product_rate": flops / elapsed / bare,
        "model_load_s": load_s,
    }
    out["fused_trunk"] = uses_trunk(models["a"])
    if args.profile:
        one = Unit("a", "b", rows, (0, seqs))
        out["profile_one_batch"] = _profile(
            lambda: correlate_pass([one], models, (tokens, excluded), settings), device
        )
    if device.startswith("cuda"):
        out["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
    if (name == "gpt2-small" and blocks == 1) or args.pair_layers:
        out.update(_precision(models, device, tokens[:seqs]))
    return out


def _profile(func, device: str, top: int = 12) -> list[dict]:
    """The ``top`` operators of one call of ``func`` by self time on the device (ms)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if device.startswith("cuda"):
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        func()
        _sync(device)
    key = "self_device_time_total" if device.startswith("cuda") else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key, 0), reverse=True)
    return [
        {"op": e.key, "calls": e.count, "self_ms": getattr(e, key, 0) / 1e3} for e in events[:top]
    ]


def _blocks_for(n: int, layers: int, gib: float) -> int:
    """The fewest blocks of whole layers whose float64 ``[rows, n]`` sums fit in ``gib``."""
    for blocks in range(1, layers + 1):
        if layers % blocks == 0 and (n // blocks) * n * 8 <= gib * 2**30:
            return blocks
    return layers


def _bare_product_rate(rows: int, n: int, tokens: int, device: str, products: str) -> float:
    """FLOP/s of the plain product ``[rows, tokens] x [tokens, n]`` (bf16 -> fp32 on CUDA)."""
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(rows, tokens, device=device, generator=gen)
    y = torch.randn(tokens, n, device=device, generator=gen)
    if products == "bfloat16":
        x, y = x.bfloat16(), y.bfloat16()

        def bare():
            torch.mm(x, y, out_dtype=torch.float32)
    else:

        def bare():
            torch.mm(x, y)

    return 2.0 * rows * tokens * n / _median_time(bare, device)


def _precision(models: dict, device: str, tokens: np.ndarray) -> dict:
    """Max |correlation error| on a block of neurons over one batch: the run's path (models
    in their dtype, ``bfloat16`` products on CUDA) against float32 models with float64
    products, and the products alone (same activations, bfloat16 vs float64)."""
    from universal_neurons.models.loading import capture_mlp

    batch = torch.as_tensor(tokens, device=device)
    block = 4096

    def first_neurons(model, fused: bool) -> torch.Tensor:  # [tokens, block]
        post = capture_mlp(model, batch, ("post",), fused=fused)["post"]
        return post.permute(1, 2, 0, 3).reshape(-1, post.shape[0] * post.shape[-1])[:, :block]

    acts = {}
    for key, model in models.items():
        acts[key] = first_neurons(model, fused=True)
        model.float()
        acts[key + "32"] = first_neurons(model, fused=False)
    products = resolve_products("auto", device)
    ref = CrossMoments.of_batch(acts["a32"], acts["b32"], "float64").correlation()
    run = CrossMoments.of_batch(acts["a"], acts["b"], products).correlation()
    same_acts = CrossMoments.of_batch(acts["a32"], acts["b32"], products).correlation()
    return {
        "block_neurons": block,
        "precision_tokens": int(batch.numel()),
        "max_abs_error_vs_float64": float((run - ref).abs().nan_to_num(0).max()),
        "max_abs_error_products_only": float((same_acts - ref).abs().nan_to_num(0).max()),
    }


def machine() -> dict:
    """Where the figures were measured: device name, torch version, threads, date."""
    import datetime
    import platform

    name = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor()
    return {
        "machine": name or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "date": datetime.date.today().isoformat(),
    }


def bench_updates(args, products: str) -> list[dict]:
    """(a) at each ``--neurons`` size: the run with the median ratio of ``--runs`` runs."""
    results = []
    for n in args.neurons:
        runs = [bench_update(n, args.tokens, args.device, products) for _ in range(args.runs)]
        ratios = [run["ratio"] for run in runs]
        median = runs[int(np.argsort(ratios)[len(ratios) // 2])]
        results.append({**median, "ratios": ratios})
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--neurons", type=int, nargs="+", default=[1024, 2048], help="(a) sizes")
    parser.add_argument("--tokens", type=int, default=4096, help="(a) tokens per batch")
    parser.add_argument("--runs", type=int, default=5, help="(a): median of this many runs")
    parser.add_argument("--memory-tokens", type=int, default=16384, help="(b) smaller token count")
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=32, help="sequences per batch")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument(
        "--pair", action="append", help=f"(d) SHAPE[:BLOCKS], SHAPE one of {', '.join(SHAPES)}"
    )
    parser.add_argument("--pair-blocks", type=int, default=0, help="(d) blocks (0: to fit)")
    parser.add_argument("--pair-gib", type=float, default=24.0, help="(d) GiB of sums per unit")
    parser.add_argument("--pair-batch", type=int, default=12, help="(d) sequences per batch")
    parser.add_argument("--pair-batches", type=int, default=5, help="(d) timed batches")
    parser.add_argument("--pair-layers", type=int, default=0, help="(d) fewer layers (a check)")
    parser.add_argument("--pair-context", type=int, default=1024, help="(d) tokens per sequence")
    parser.add_argument("--profile", action="store_true", help="(d) profile one batch")
    parser.add_argument("--save", help="also write the report (JSON) to this file")
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model-root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args)
        return
    report: dict = {"device": args.device, **machine()}
    products = resolve_products("auto", args.device)
    report["a_update_vs_matmul"] = bench_updates(args, products)
    _write(report, args.save)
    if args.pair:
        for spec in args.pair:
            name, _, blocks = spec.partition(":")
            if name not in SHAPES:
                parser.error(f"--pair: unknown shape {name!r}; expected one of {', '.join(SHAPES)}")
            report.setdefault("d_pairs", []).append(bench_pair(args, name, int(blocks or 0)))
            _write(report, args.save)  # each shape's figures as soon as they exist
    else:
        shape = ModelConfig()  # the default pipeline's model shape: 2 layers x 512 neurons
        with tempfile.TemporaryDirectory() as tmp:
            paths = _tiny_models(Path(tmp), shape, args.vocab, args.context)
            report["b_memory"] = bench_memory(args, Path(tmp))
            report["c_hooks_vs_forward"] = bench_hooks(paths[0], args)
        _write(report, args.save)
    print(json.dumps(report, indent=2))


def _write(report: dict, path: str | None) -> None:
    """Write ``report`` as JSON to ``path`` (atomically), if given."""
    if path:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        tmp.write_text(json.dumps(report, indent=2) + "\n")
        tmp.replace(target)


if __name__ == "__main__":
    main()
