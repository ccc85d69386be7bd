"""Benchmark of the effects stage's batched ablation against plain forward passes.

Ablated neurons x tokens per second of ``description.ablation.measure_ablations`` (the clean
pass once per batch of sequences, then only the blocks after the neuron's, ``neuron_batch``
neurons per pass, measures from the logits without full log-probability tensors) against
the plain way: one Hugging Face ``GPT2LMHeadModel`` forward per ablated neuron with a hook
on ``mlp.act``, ``log_softmax`` and the same measures (loss change, KL, entropy change,
mean log-probability change per token). Both on the same machine, model and tokens; the
printed ratio is the speed-up.

The model is a random GPT-2 of the default group's shape (2 layers x 512 neurons, d_model
128, 4 heads, vocabulary 4,096, context 128) unless ``--model DIR`` names one.

Usage: ``python benchmarks/effects_throughput.py [--sequences 32] [--neurons 16]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from transformers import GPT2LMHeadModel  # noqa: E402

from universal_neurons.config import ModelConfig  # noqa: E402
from universal_neurons.description.ablation import Ablation, measure_ablations  # noqa: E402
from universal_neurons.models.gpt2 import gpt2_config, init_model, save_model  # noqa: E402
from universal_neurons.models.loading import load_model  # noqa: E402
from universal_neurons.models.tail import forward_for  # noqa: E402

SHAPE = ModelConfig(n_layers=2, d_model=128, n_heads=4, d_mlp=512, activation="gelu_new")
VOCAB, CONTEXT = 4096, 128


def _ablations(count: int, n_layers: int, d_mlp: int) -> list[Ablation]:
    """``count`` neurons spread over the layers, ablated to 0.1."""
    return [Ablation(i % n_layers, (37 * i) % d_mlp, 0.1) for i in range(count)]


def batched_seconds(model_dir: str, tokens: np.ndarray, ablations, batch: int, copies: int):
    """Seconds of ``measure_ablations`` over all ``tokens`` for all ``ablations``."""
    model = load_model(model_dir)
    forward = forward_for(model, torch.as_tensor(tokens[:2]))
    start = time.perf_counter()
    measure_ablations(
        forward,
        model.W_out.detach(),
        tokens,
        np.zeros(0, np.int64),
        ablations,
        batch,
        copies,
        progress=False,
    )
    return time.perf_counter() - start


@torch.no_grad()
def plain_seconds(model_dir: str, tokens: np.ndarray, ablations, batch: int) -> float:
    """Seconds of one hooked Hugging Face forward per ablation and batch, with the measures."""
    model = GPT2LMHeadModel.from_pretrained(model_dir).eval()
    start = time.perf_counter()
    for begin in range(0, len(tokens), batch):
        ids = torch.as_tensor(tokens[begin : begin + batch])
        logp = model(ids).logits[:, :-1].log_softmax(-1)
        for ablation in ablations:

            def hook(module, inputs, output, ablation=ablation):
                output = output.clone()
                output[..., ablation.index] = ablation.value
                return output

            handle = model.transformer.h[ablation.layer].mlp.act.register_forward_hook(hook)
            logq = model(ids).logits[:, :-1].log_softmax(-1)
            handle.remove()
            target = ids[:, 1:, None]
            _ = (logp.gather(-1, target) - logq.gather(-1, target)).mean()
            _ = (logp.exp() * (logp - logq)).sum(-1).mean()
            _ = ((logp.exp() * logp).sum(-1) - (logq.exp() * logq).sum(-1)).mean()
            _ = (logq - logp).mean((0, 1))
    return time.perf_counter() - start


def main() -> None:
    """Run both ways and print neurons x tokens per second and their ratio (JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a GPT-2 model directory (default: random, default shape)")
    parser.add_argument("--sequences", type=int, default=32)
    parser.add_argument("--neurons", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--neuron-batch", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        model_dir = args.model
        if model_dir is None:
            model_dir = str(Path(folder) / "model")
            save_model(init_model(gpt2_config(SHAPE, VOCAB, CONTEXT, 0), 0), Path(model_dir))
        config = json.loads((Path(model_dir) / "config.json").read_text())
        rng = np.random.default_rng(0)
        tokens = rng.integers(0, config["vocab_size"], (args.sequences, config["n_positions"]))
        ablations = _ablations(args.neurons, config["n_layer"], config.get("n_inner") or 512)
        batched = batched_seconds(model_dir, tokens, ablations, args.batch_size, args.neuron_batch)
        plain = plain_seconds(model_dir, tokens, ablations, args.batch_size)
    work = args.neurons * tokens.size
    print(
        json.dumps(
            {
                "threads": torch.get_num_threads(),
                "sequences": args.sequences,
                "context": int(tokens.shape[1]),
                "neurons": args.neurons,
                "batched_neuron_tokens_per_s": work / batched,
                "plain_neuron_tokens_per_s": work / plain,
                "speedup": plain / batched,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
