"""Training one GPT-2 of a seed group on the token array (a nanoGPT-style loop).

The seed sets both the initial weights and the order of the training sequences;
everything else (data, architecture, schedule) is shared by the group, so models
differ only in their seed. On the same device, the same seed gives the same weights.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm import tqdm
from transformers import GPT2Config, GPT2LMHeadModel

from universal_neurons.errors import UserError
from universal_neurons.models.gpt2 import init_model, save_model

if TYPE_CHECKING:  # annotations only (see the train stage's code dependencies)
    from universal_neurons.config import TrainConfig


class TrainingError(UserError, RuntimeError):
    """Training that cannot go on (e.g. the loss became non-finite)."""


@dataclass
class TrainResult:
    """What a training run reports; ``curve`` has one row per logged step."""

    seed: int
    steps: int
    tokens: int
    heldout_loss: float
    unigram_entropy: float
    wall_time_s: float
    device: str
    threads: int
    curve: list[dict[str, float]] = field(default_factory=list)


def unigram_entropy(tokens: np.ndarray, vocab_size: int) -> float:
    """Entropy in nats of the unigram distribution of the predicted tokens ``tokens[:, 1:]``:
    the loss of the best model that ignores context."""
    counts = np.bincount(np.asarray(tokens[:, 1:]).ravel(), minlength=vocab_size).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def lr_at(step: int, total_steps: int, config: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak learning rate."""
    warmup = max(1, int(config.warmup_fraction * total_steps))
    if step < warmup:
        return config.learning_rate * (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return config.learning_rate * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))


def _optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.learning_rate, betas=(0.9, 0.95))


def _batch_order(n_sequences: int, n_batches: int, batch_size: int, seed: int) -> np.ndarray:
    """Sequence indices ``[n_batches, batch_size]``: seeded epochs of permutations."""
    rng = np.random.default_rng(seed)
    needed = n_batches * batch_size
    epochs = [rng.permutation(n_sequences) for _ in range(math.ceil(needed / n_sequences))]
    return np.concatenate(epochs)[:needed].reshape(n_batches, batch_size)


def training_memory(
    config: TrainConfig, model_config: GPT2Config, context: int
) -> dict[str, tuple[str, int]]:
    """The largest allocations of training one model, in bytes, each with the parameter that
    sets it (``resources.check_memory``): the batch order, the weights with their gradients
    and AdamW moments, and one step's activations and logits (forward and backward)."""
    batch, d, m = config.batch_size, model_config.n_embd, model_config.n_inner
    layers, vocab = model_config.n_layer, model_config.vocab_size
    steps = math.ceil(config.tokens_per_model / (batch * context))
    weights = vocab * d + model_config.n_positions * d + layers * (4 * d * d + 2 * d * m)
    width = "model.d_mlp" if 2 * m > 4 * d + vocab // max(1, layers) else "model.d_model"
    positions = batch * context
    per_position = layers * (16 * d + 2 * model_config.n_head * context) + 3 * vocab
    return {
        "batch order": (f"train.tokens_per_model={config.tokens_per_model}", 16 * steps * batch),
        "weights, gradients and AdamW moments": (
            f"{width}={m if width == 'model.d_mlp' else d}",
            5 * 4 * weights,
        ),
        "activations of one step": (f"train.batch_size={batch}", 2 * 4 * positions * per_position),
        "MLP activations of one step": (f"model.d_mlp={m}", 2 * 4 * positions * layers * 4 * m),
    }


def _loss(model: GPT2LMHeadModel, batch: torch.Tensor, device: str) -> torch.Tensor:
    with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=device == "cuda"):
        logits = model(batch[:, :-1]).logits
    return torch.nn.functional.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1)
    )


@torch.no_grad()
def heldout_loss(
    model: GPT2LMHeadModel, heldout: np.ndarray, device: str, batch_size: int = 64
) -> float:
    """Mean next-token cross-entropy (nats) over the held-out sequences."""
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(heldout), batch_size):
        batch = torch.as_tensor(
            np.asarray(heldout[start : start + batch_size], dtype=np.int64), device=device
        )
        n = batch[:, 1:].numel()
        total += _loss(model, batch, device).item() * n
        count += n
    model.train()
    return total / count


def _prepare_torch(config: TrainConfig) -> None:
    """Stop if CUDA is asked for but missing; set the thread count and deterministic
    algorithms (the weights depend on both)."""
    if config.device == "cuda" and not torch.cuda.is_available():
        raise TrainingError("train.device: 'cuda' was asked for, but no CUDA device is available")
    torch.set_num_threads(config.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)


def save_checkpoint(
    model: GPT2LMHeadModel,
    output_dir: Path,
    requested: int,
    steps: int,
    tokens: int,
    dtype: str = "float32",
) -> None:
    """Save the model as ``checkpoints/tokens_{requested}`` (Hugging Face format, weights in
    ``dtype``) with ``checkpoint.json``: the steps and training tokens it has seen
    (``tokens >= requested``: whole steps). Training goes on with the float32 model."""
    directory = output_dir / "checkpoints" / f"tokens_{requested}"
    stored = model if dtype == "float32" else copy.deepcopy(model).to(getattr(torch, dtype))
    save_model(stored, directory)
    record = {"requested_tokens": requested, "steps": steps, "tokens": tokens}
    (directory / "checkpoint.json").write_text(json.dumps(record, sort_keys=True) + "\n")


def train_model(
    tokens: np.ndarray,
    heldout: np.ndarray,
    model_config: GPT2Config,
    config: TrainConfig,
    seed: int,
    output_dir: Path,
) -> TrainResult:
    """Train one model and save it into ``output_dir``, with its checkpoints (``save_checkpoint``).

    ``tokens``/``heldout``: ``[sequences, context]`` token ids; trains on
    ``config.tokens_per_model`` tokens (rounded up to whole batches)."""
    device = config.device
    _prepare_torch(config)
    started = time.perf_counter()
    context = tokens.shape[1]
    tokens_per_step = config.batch_size * context
    total_steps = math.ceil(config.tokens_per_model / tokens_per_step)
    order = _batch_order(len(tokens), total_steps, config.batch_size, seed)
    heldout = heldout[: config.heldout_sequences]
    checkpoints = list(config.checkpoint_tokens)

    model = init_model(model_config, seed).to(device)
    model.train()
    optimizer = _optimizer(model, config)
    curve: list[dict[str, float]] = []
    progress = tqdm(range(total_steps), desc=f"train seed {seed}", unit="step", mininterval=2.0)
    for step in progress:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, total_steps, config)
        batch = torch.as_tensor(np.asarray(tokens[order[step]], dtype=np.int64), device=device)
        loss = _loss(model, batch, device)
        if not torch.isfinite(loss):
            raise TrainingError(f"seed {seed}: training loss became {loss.item()} at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        seen = (step + 1) * tokens_per_step
        row = {"step": step + 1, "tokens": seen, "train_loss": loss.item()}
        if (step + 1) % config.eval_every_steps == 0 or step + 1 == total_steps:
            row["heldout_loss"] = heldout_loss(model, heldout, device)
            progress.set_postfix(heldout=f"{row['heldout_loss']:.3f}")
        curve.append(row)
        while checkpoints and seen >= checkpoints[0]:
            save_checkpoint(
                model, output_dir, checkpoints.pop(0), step + 1, seen, config.checkpoint_dtype
            )
    save_model(model.to("cpu"), output_dir)
    return TrainResult(
        seed=seed,
        steps=total_steps,
        tokens=total_steps * tokens_per_step,
        heldout_loss=curve[-1]["heldout_loss"],
        unigram_entropy=unigram_entropy(tokens, model_config.vocab_size),
        wall_time_s=time.perf_counter() - started,
        device=device,
        threads=config.threads,
        curve=curve,
    )
