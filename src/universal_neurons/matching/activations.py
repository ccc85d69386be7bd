"""The analysis token stream: which tokens the models see and which positions count.

Statistics are taken over token positions, leaving out positions whose token is in
an excluded set (BOS/EOS/padding and newline tokens by default, as the paper did).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from universal_neurons.config import AnalysisConfig
from universal_neurons.errors import UserError
from universal_neurons.text.tokens import (
    END_OF_TEXT,
    check_token_ids,
    load_tokenizer,
    load_tokens,
    newline_token_ids,
)


class NoKeptPositionsError(UserError):
    """Every position of the analysis token set was excluded."""


def excluded_token_ids(tokenizer: Tokenizer, config: AnalysisConfig) -> np.ndarray:
    """Sorted token ids whose positions are left out of every statistic."""
    ids = set(config.exclude_ids)
    if "special" in config.exclude:
        ids.update(
            tokenizer.token_to_id(tok)
            for tok in [END_OF_TEXT]
            if tokenizer.token_to_id(tok) is not None
        )
    if "newline" in config.exclude:
        ids.update(newline_token_ids(tokenizer))
    return np.array(sorted(ids), dtype=np.int64)


def analysis_tokens(tokens: np.ndarray, config: AnalysisConfig) -> np.ndarray:
    """The first ``config.max_sequences`` sequences (all if 0): ``[sequences, context]``."""
    return tokens if config.max_sequences == 0 else tokens[: config.max_sequences]


def kept_mask(tokens: np.ndarray | torch.Tensor, excluded_ids: np.ndarray) -> torch.Tensor:
    """Boolean ``[batch, pos]``: True where the position counts in the statistics."""
    tokens = torch.as_tensor(np.asarray(tokens, dtype=np.int64))
    return ~torch.isin(tokens, torch.as_tensor(excluded_ids, dtype=torch.int64))


def iter_batches(tokens: np.ndarray, batch_size: int) -> Iterator[tuple[int, torch.Tensor]]:
    """``(batch_number, tokens [batch, pos] int64)`` over the sequences, in order."""
    for number, start in enumerate(range(0, len(tokens), batch_size)):
        yield (
            number,
            torch.as_tensor(np.asarray(tokens[start : start + batch_size], dtype=np.int64)),
        )


def count_kept(tokens: np.ndarray, excluded_ids: np.ndarray, batch_size: int = 1024) -> int:
    """Number of kept positions; raises ``NoKeptPositionsError`` if it is zero."""
    kept = sum(
        int(kept_mask(batch, excluded_ids).sum()) for _, batch in iter_batches(tokens, batch_size)
    )
    if kept == 0:
        raise NoKeptPositionsError(
            "analysis.exclude / analysis.exclude_ids: every position of the analysis token set is excluded; "
            "nothing is left to measure"
        )
    return kept


def load_analysis_set(
    tokens_dir: str | Path, config: AnalysisConfig
) -> tuple[np.ndarray, np.ndarray, int]:
    """The analysis token set of ``config`` read from the tokenize stage's ``tokens_dir``:
    ``(tokens [sequences, pos], excluded ids, kept positions)``.

    Raises ``NoKeptPositionsError`` when every position is excluded.
    """
    tokenizer = load_tokenizer(tokens_dir)
    vocab_size = tokenizer.get_vocab_size()
    beyond = [token for token in config.exclude_ids if token >= vocab_size]
    if beyond:
        raise UserError(
            f"analysis.exclude_ids: {beyond[0]} is beyond the vocabulary size {vocab_size} of "
            f"{Path(tokens_dir) / 'tokenizer.json'}"
        )
    tokens = analysis_tokens(load_tokens(tokens_dir, config.split), config)
    check_token_ids(tokens, vocab_size, str(Path(tokens_dir) / f"{config.split}_tokens.npy"))
    excluded = excluded_token_ids(tokenizer, config)
    return tokens, excluded, count_kept(tokens, excluded)


def activation_memory(
    config: AnalysisConfig, shape: tuple[int, int], n_layers: int, d_mlp: int, models: int = 1
) -> tuple[str, int]:
    """``(parameter, bytes)``: one analysis batch's captured activations (pre and post,
    float32, with the centred copies the statistics make) of ``models`` models, for the
    token set of ``shape`` ``[sequences, context]`` (a batch is at most all of it)."""
    batch = min(config.batch_size, shape[0])
    return (
        f"analysis.batch_size={config.batch_size}",
        models * 6 * 4 * batch * shape[1] * n_layers * d_mlp,
    )


def token_set_record(tokens: np.ndarray, excluded: np.ndarray, kept: int, split: str) -> dict:
    """What identifies an analysis token set, as every analysis output records it
    (``token_set`` in its ``summary.json``): split, sequences, kept positions, excluded ids
    and a digest of the token ids."""
    digest = hashlib.sha256(np.ascontiguousarray(tokens, dtype=np.int64).tobytes()).hexdigest()
    return {
        "split": split,
        "sequences": int(len(tokens)),
        "kept_positions": int(kept),
        "excluded_ids": [int(i) for i in excluded],
        "tokens_sha256": digest[:16],
    }
