"""The GPT-2 architecture of the trained seed group, in Hugging Face format.

Kept apart from ``models.loading`` (analysis-time loading) so that the train stage depends
on as little code as possible: editing analysis code never retrains the group.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import GPT2Config, GPT2LMHeadModel

if TYPE_CHECKING:  # annotations only (see the train stage's code dependencies)
    from universal_neurons.config import ModelConfig


def gpt2_config(config: ModelConfig, vocab_size: int, n_ctx: int, eot_id: int) -> GPT2Config:
    """The Hugging Face config of a GPT-2 model of the given shape."""
    return GPT2Config(
        vocab_size=vocab_size,
        n_positions=n_ctx,
        n_embd=config.d_model,
        n_layer=config.n_layers,
        n_head=config.n_heads,
        n_inner=config.d_mlp,
        activation_function=config.activation,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=eot_id,
        eos_token_id=eot_id,
        tie_word_embeddings=True,
    )


def init_model(config: GPT2Config, seed: int) -> GPT2LMHeadModel:
    """A freshly initialised GPT-2 whose weights depend on ``seed`` alone."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = GPT2LMHeadModel(config)
    finally:
        torch.random.set_rng_state(generator_state)
    return model


def save_model(model: GPT2LMHeadModel, directory: Path) -> None:
    """Save in Hugging Face format: ``config.json`` + ``model.safetensors``. A system error of
    the safetensors writer (e.g. a full disk) becomes an ``OSError`` naming the weights file
    (safetensors removes the partial file and names none)."""
    try:
        model.save_pretrained(directory, safe_serialization=True)
    except Exception as exc:
        code = re.search(r"os error (\d+)", str(exc))
        if code is None:
            raise
        number = int(code.group(1))
        raise OSError(number, os.strerror(number), str(directory / "model.safetensors")) from exc
