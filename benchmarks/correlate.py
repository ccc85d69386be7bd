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
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from universal_neurons.analysis.correlation import CrossMoments  # noqa: E402
from universal_neurons.config import ModelConfig  # noqa: E402
from universal_neurons.models.gpt2 import gpt2_config, init_model, save_model  # noqa: E402


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _best_time(func, device: str, repeats: int = 3) -> float:
    func()  # warm-up
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        func()
        _sync(device)
        times.append(time.perf_counter() - start)
    return min(times)


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
    from universal_neurons.analysis.pairs import correlate_group
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
    """(c): capture_mlp (hooks, stops after the last MLP) vs a bare forward of the same model."""
    from universal_neurons.models.loading import capture_mlp, load_model

    model = load_model(str(path), device=args.device)
    tokens = torch.as_tensor(
        np.random.default_rng(1).integers(1, args.vocab, size=(args.batch, args.context)),
        device=args.device,
    )
    with torch.no_grad():
        t_hooks = _best_time(lambda: capture_mlp(model, tokens, ("post",)), args.device, 5)
        t_bare = _best_time(lambda: model(tokens), args.device, 5)
    return {"hooks_s": t_hooks, "bare_forward_s": t_bare, "ratio": t_hooks / t_bare}


def bench_gpt2_small(args) -> dict:
    """(d): a GPT2-small-shaped pair on the GPU, bf16 products, float64 accumulators."""
    from universal_neurons.models.loading import capture_mlp, load_model, model_dtype

    device = args.device
    layers = args.gpt2_layers  # 12 = GPT2-small; fewer for a quick CPU check of the code path
    shape = ModelConfig(n_layers=layers, d_model=768, n_heads=12, d_mlp=3072, activation="gelu_new")
    dtype = getattr(torch, model_dtype(device))  # bf16 models on CUDA, as correlate runs them
    with tempfile.TemporaryDirectory() as tmp:
        paths = _tiny_models(Path(tmp), shape, 50257, 1024)
        models = [load_model(str(p), device, dtype) for p in paths]
    n = layers * 3072
    seqs, ctx = args.gpt2_batch, args.gpt2_context
    gen = np.random.default_rng(0)
    stats = CrossMoments.empty(n, n, device)
    batches = [
        torch.as_tensor(gen.integers(0, 50257, size=(seqs, ctx)), device=device)
        for _ in range(args.gpt2_batches + 1)
    ]

    def step(batch, stats):
        acts = [
            capture_mlp(m, batch, ("post",))["post"].permute(1, 2, 0, 3).reshape(-1, n)
            for m in models
        ]
        return stats.update(acts[0], acts[1], "bfloat16"), acts

    with torch.no_grad():
        stats, _ = step(batches[0], stats)  # warm-up
        _sync(device)
        start = time.perf_counter()
        for batch in batches[1:]:
            stats, acts = step(batch, stats)
        _sync(device)
        elapsed = time.perf_counter() - start
        tokens = args.gpt2_batches * seqs * ctx
        peak = bench_update(n, seqs * ctx, device, "bfloat16")
        # error of bf16 products vs float64 on a block of neurons of the last batch
        block = min(4096, n)
        ref = CrossMoments.of_batch(acts[0][:, :block], acts[1][:, :block], "float64")
        got = CrossMoments.of_batch(acts[0][:, :block], acts[1][:, :block], "bfloat16")
        error = float((got.correlation() - ref.correlation()).abs().nan_to_num(0).max())
    flops = 2.0 * tokens * n * n
    return {
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else device,
        "model_dtype": str(dtype),
        "layers": layers,
        "tokens": tokens,
        "tokens_per_s": tokens / elapsed,
        "seconds_per_12288_tokens": elapsed / tokens * 12288,
        "achieved_tflops_incl_forward": flops / elapsed / 1e12,
        "bf16_matmul_peak_tflops": peak["matmul_gflops"] / 1e3,
        "fraction_of_bf16_peak": (flops / elapsed) / (peak["matmul_gflops"] * 1e9),
        "update_only_fraction": peak["ratio"],
        "max_abs_error_vs_float64": error,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--neurons", type=int, default=1024, help="(a) neurons per side")
    parser.add_argument("--tokens", type=int, default=4096, help="(a) tokens per batch")
    parser.add_argument("--memory-tokens", type=int, default=16384, help="(b) smaller token count")
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=32, help="sequences per batch")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--gpt2-small", action="store_true")
    parser.add_argument("--gpt2-batch", type=int, default=12, help="(d) sequences of 1024")
    parser.add_argument("--gpt2-batches", type=int, default=5)
    parser.add_argument("--gpt2-layers", type=int, default=12, help="(d) 12 = GPT2-small")
    parser.add_argument("--gpt2-context", type=int, default=1024, help="(d) tokens per sequence")
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model-root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args)
        return
    report: dict = {"device": args.device, "threads": torch.get_num_threads()}
    if args.gpt2_small:
        report["gpt2_small"] = bench_gpt2_small(args)
        print(json.dumps(report, indent=2))
        return
    products = "bfloat16" if args.device.startswith("cuda") else "float32"
    report["a_update_vs_matmul"] = bench_update(args.neurons, args.tokens, args.device, products)
    shape = ModelConfig()  # the default pipeline's model shape: 2 layers x 512 neurons
    with tempfile.TemporaryDirectory() as tmp:
        paths = _tiny_models(Path(tmp), shape, args.vocab, args.context)
        report["b_memory"] = bench_memory(args, Path(tmp))
        report["c_hooks_vs_forward"] = bench_hooks(paths[0], args)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
