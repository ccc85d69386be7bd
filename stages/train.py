"""train: token array -> one trained GPT-2 per seed (Hugging Face format) + its training curve."""

import csv
import json
from pathlib import Path

from stages.paths import TOKENS_DIR, model_dir
from universal_neurons.config import Params
from universal_neurons.gpt2 import gpt2_config
from universal_neurons.io import atomic_path
from universal_neurons.tokens import check_token_ids, end_of_text_id, load_tokenizer, load_tokens
from universal_neurons.train import train_model


def run(
    params: Params, seed: int, tokens_dir: Path = TOKENS_DIR, output_dir: Path | None = None
) -> dict:
    """Train the model of ``seed``; write weights, ``curve.csv`` and ``training.json``."""
    if seed not in params.train.seeds:
        raise ValueError(f"--seed: {seed} is not one of train.seeds {params.train.seeds}")
    output_dir = output_dir or model_dir(seed)
    tokenizer = load_tokenizer(tokens_dir)
    train_tokens, heldout = load_tokens(tokens_dir, "train"), load_tokens(tokens_dir, "heldout")
    vocab_size = tokenizer.get_vocab_size()
    for split, array in (("train", train_tokens), ("heldout", heldout)):
        source = str(tokens_dir / f"{split}_tokens.npy")
        check_token_ids(array, vocab_size, source)
        if array.shape[1] != params.tokens.context:
            raise ValueError(
                f"{source}: sequences of {array.shape[1]} tokens, but tokens.context is "
                f"{params.tokens.context}; rerun the tokenize stage"
            )
    config = gpt2_config(params.model, vocab_size, params.tokens.context, end_of_text_id(tokenizer))
    with atomic_path(output_dir) as temp:
        temp.mkdir()
        result = train_model(train_tokens, heldout, config, params.train, seed, temp)
        with (temp / "curve.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(
                handle, fieldnames=["step", "tokens", "train_loss", "heldout_loss"]
            )
            writer.writeheader()
            writer.writerows(result.curve)
        report = {key: value for key, value in vars(result).items() if key != "curve"}
        (temp / "training.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    return report
