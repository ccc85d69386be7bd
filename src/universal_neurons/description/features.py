"""Features of token positions: what a neuron's activation may be explained by.

Every feature is a categorical *variable* with one integer code per position of the
analysis token set (``[sequences, context]``); its binary features are "the variable
takes category c" against the rest. Variables and the family group they belong to:

| variable | group | categories |
|---|---|---|
| ``token`` | unigram | token id |
| ``unigram`` | unigram | normalised unigram: the token string stripped and lower-cased (covers several ids: ``" The"``, ``"the"``, ``" THE"``) |
| ``token_class`` | unigram | special, whitespace, numeric, punctuation, capitalized, lowercase, other |
| ``byte_class`` | byte | the UTF-8 class of the token's bytes: ascii, multi-byte-char, utf8-lead-2/3/4 (ends in the lead byte of a character), continuation, ... (``token_bytes.BYTE_CLASSES``) |
| ``first_letter`` | alphabet | a-z or none: the first letter of the word the token belongs to |
| ``prev_token``, ``prev_unigram``, ``prev_token_class``, ``prev_byte_class``, ``prev_first_letter`` | previous_token | the same, of the previous position (``<start>`` at position 0) |
| ``position`` | position | position in the context (only its eta^2 is used) |
| ``pos``, ``dep`` | syntax | spaCy part of speech / dependency label of the word the token belongs to |
| ``domain`` | semantic | the sequence's corpus domain |
| ``topic`` | semantic | which domain's topic word set the word of the token is in, or none |

Placeholder categories (``none`` of first_letter / pos / dep / topic, ``<start>`` of the
previous-token variables) count in eta^2 but are not binary features.

Labels of tokens that are no text on their own (a byte of a multi-byte character) describe
their bytes (``token_bytes.readable_bytes``: ``token='⟨0xC3: lead byte of À–ÿ⟩'``), and
their normalised unigram keeps the bytes apart instead of merging them into one U+FFFD.

Words: a token continues the word of the previous token when it starts with a letter
(no leading space) and the previous token ends with a letter; otherwise it starts a word.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from universal_neurons.config import AnalysisConfig, FamiliesConfig
from universal_neurons.description.syntax import NONE_LABEL, SyntaxLabels
from universal_neurons.description.token_bytes import (
    BYTE_CLASSES,
    byte_class,
    readable_pieces,
    token_bytes,
)
from universal_neurons.errors import UserError
from universal_neurons.matching.activations import analysis_tokens, excluded_token_ids, kept_mask
from universal_neurons.text.tokens import load_domains, load_tokenizer, load_tokens

GROUPS = ("unigram", "byte", "alphabet", "previous_token", "position", "syntax", "semantic")
TOKEN_CLASSES = (
    "special",
    "whitespace",
    "numeric",
    "punctuation",
    "capitalized",
    "lowercase",
    "other",
)
LETTERS = tuple("abcdefghijklmnopqrstuvwxyz") + (NONE_LABEL,)
START_LABEL = "<start>"


class FeaturesError(UserError):
    """Feature inputs that do not fit together (shapes, missing spaCy model, ...)."""


@dataclass(frozen=True)
class Variable:
    """A categorical variable over positions: its name, family group and category labels."""

    name: str
    group: str
    labels: tuple[str, ...]
    placeholders: tuple[int, ...] = ()  # categories (none, <start>) that are no binary feature

    @property
    def size(self) -> int:
        """Number of categories."""
        return len(self.labels)

    def feature_name(self, category: int) -> str:
        """Readable name of the binary feature ``variable == category``, e.g. ``unigram='the'``."""
        if self.name == "position":
            return "position"
        label = self.labels[category]
        if self.name in ("token", "unigram", "prev_token", "prev_unigram", "topic"):
            return f"{self.name}={label!r}"
        return f"{self.name}={label}"


@dataclass(frozen=True)
class FeatureSet:
    """All variables of the analysis token set: ``codes[name]`` is int32 ``[sequences, context]``."""

    variables: list[Variable]
    codes: dict[str, np.ndarray]
    topic_words: dict[str, list[str]] = field(default_factory=dict)

    def variable(self, name: str) -> Variable:
        """The variable called ``name``."""
        for var in self.variables:
            if var.name == name:
                return var
        raise KeyError(name)

    def batch_codes(self, start: int, stop: int, kept: torch.Tensor) -> dict[str, torch.Tensor]:
        """Codes of sequences ``start:stop`` at kept positions: ``{name: int64 [n_kept]}``.

        ``kept`` is the boolean ``[batch, pos]`` mask of ``activations.kept_mask``.
        """
        mask = kept.cpu().numpy()
        return {
            var.name: torch.as_tensor(self.codes[var.name][start:stop][mask], dtype=torch.int64)
            for var in self.variables
        }


# --- per token id -------------------------------------------------------------------------


def token_pieces(tokenizer: Tokenizer) -> list[str]:
    """The text of every token id (``""`` for special tokens such as ``<|endoftext|>``).

    Pieces of a byte-level BPE that are not valid UTF-8 on their own decode with U+FFFD.
    """
    return [tokenizer.decode([i]) for i in range(tokenizer.get_vocab_size())]


def normalise(piece: str) -> str:
    """The normalised unigram of a token string: stripped and lower-cased."""
    if piece == "":
        return "<special>"
    stripped = piece.strip().lower()
    return stripped if stripped else "<space>"


def token_class(piece: str) -> str:
    """One of ``TOKEN_CLASSES`` for a token string."""
    if piece == "":
        return "special"
    stripped = piece.strip()
    if not stripped:
        return "whitespace"
    if stripped.replace(",", "").replace(".", "").isdigit():
        return "numeric"
    if not any(ch.isalnum() for ch in stripped):
        return "punctuation"
    if stripped[0].isupper():
        return "capitalized"
    if stripped[0].islower():
        return "lowercase"
    return "other"


def first_letter(piece: str) -> str:
    """First character of the stripped token string if it is an ASCII letter (lower-cased), else none."""
    ch = piece.lstrip()[:1].lower()
    return ch if ch and "a" <= ch <= "z" else "none"


@dataclass(frozen=True)
class TokenTable:
    """Per-token-id lookups ``[vocab]`` derived from the token strings."""

    pieces: list[str]
    unigram: np.ndarray  # int32 code into unigram_labels
    unigram_labels: tuple[str, ...]
    token_class: np.ndarray  # int32 code into TOKEN_CLASSES
    letter: np.ndarray  # int32 code into LETTERS
    byte_class: np.ndarray  # int32 code into BYTE_CLASSES
    starts_with_letter: np.ndarray  # bool: first char is a letter (no leading space)
    ends_with_letter: np.ndarray  # bool


def token_table(
    pieces: list[str], shown: list[str] | None = None, data: list[bytes | None] | None = None
) -> TokenTable:
    """Lookups for every token id from the token strings (see ``token_pieces``); ``shown``:
    their labels (the unigram normalises these; default ``pieces``); ``data``: their bytes
    (``token_bytes.token_bytes``; default the UTF-8 of ``pieces``, None for ``""``)."""
    shown = pieces if shown is None else shown
    data = [p.encode("utf-8") if p else None for p in pieces] if data is None else data
    labels: dict[str, int] = {}
    unigram = np.array(
        [
            labels.setdefault(normalise(p) if p == raw else p.strip(), len(labels))
            for p, raw in zip(shown, pieces, strict=True)
        ],
        np.int32,
    )  # a byte's description is stripped, not lower-cased ("0xC3")
    return TokenTable(
        pieces=list(pieces),
        unigram=unigram,
        unigram_labels=tuple(labels),
        token_class=np.array([TOKEN_CLASSES.index(token_class(p)) for p in pieces], np.int32),
        letter=np.array([LETTERS.index(first_letter(p)) for p in pieces], np.int32),
        byte_class=np.array([BYTE_CLASSES.index(byte_class(b)) for b in data], np.int32),
        starts_with_letter=np.array([p[:1].isalpha() for p in pieces], bool),
        ends_with_letter=np.array([p[-1:].isalpha() for p in pieces], bool),
    )


# --- per position -------------------------------------------------------------------------


def word_starts(tokens: np.ndarray, table: TokenTable) -> np.ndarray:
    """Position of the first token of the word each token belongs to: int64 ``[sequences, context]``."""
    tokens = np.asarray(tokens, dtype=np.int64)
    continues = np.zeros(tokens.shape, bool)
    continues[:, 1:] = (
        table.starts_with_letter[tokens[:, 1:]] & table.ends_with_letter[tokens[:, :-1]]
    )
    positions = np.broadcast_to(np.arange(tokens.shape[1]), tokens.shape)
    return np.maximum.accumulate(np.where(continues, 0, positions), axis=1)


def word_codes(
    tokens: np.ndarray, table: TokenTable, starts: np.ndarray
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """The normalised word each token belongs to (its tokens joined, stripped, lower-cased).

    Returns int32 ``[sequences, context]`` codes into the word labels, and a bool
    ``[sequences, context]`` mask of word-start positions (one per word occurrence).
    """
    ids: dict[str, int] = {}
    codes = np.zeros(tokens.shape, np.int32)
    for s, (row, start) in enumerate(zip(tokens, starts, strict=True)):
        ends = np.append(np.flatnonzero(start[1:] != start[:-1]) + 1, len(row))
        begin = 0
        for end in ends:
            word = normalise("".join(table.pieces[t] for t in row[begin:end]))
            codes[s, begin:end] = ids.setdefault(word, len(ids))
            begin = end
    first = starts == np.arange(tokens.shape[1])[None, :]
    return codes, first, tuple(ids)


def _previous(codes: np.ndarray, start_code: int) -> np.ndarray:
    prev = np.empty_like(codes)
    prev[:, 0] = start_code
    prev[:, 1:] = codes[:, :-1]
    return prev


def build_topic_words(
    unigram_codes: np.ndarray,
    domain_codes: np.ndarray,
    unigram_labels: tuple[str, ...],
    domain_names: list[str],
    n_words: int,
    min_count: int,
) -> dict[str, list[str]]:
    """Topic word set of each domain: its most distinctive words in the token set.

    ``unigram_codes`` / ``domain_codes``: int ``[occurrences]``, one per word occurrence
    (codes into ``unigram_labels``, the normalised words). Candidate words have >= 3 letters (alphabetic, not an English stop
    word) seen >= ``min_count`` times. A word's score for domain d is the smoothed log
    ratio log(P(w | d) / P(w | not d)); each word goes to the domain where it scores
    highest, and each domain keeps its ``n_words`` best words with a positive score.
    With a single domain there are no topic sets.
    """
    from spacy.lang.en.stop_words import STOP_WORDS

    n_domains = len(domain_names)
    if n_domains < 2:
        return {}
    counts = np.zeros((n_domains, len(unigram_labels)), np.float64)
    np.add.at(counts, (domain_codes.astype(np.int64), unigram_codes.astype(np.int64)), 1.0)
    total_per_word = counts.sum(axis=0)
    candidates = np.array(
        [
            len(label) >= 3 and label.isalpha() and label not in STOP_WORDS
            for label in unigram_labels
        ]
    ) & (total_per_word >= min_count)
    vocab = max(int(candidates.sum()), 1)
    size = counts.sum(axis=1, keepdims=True)
    inside = (counts + 1.0) / (size + vocab)
    outside = (total_per_word - counts + 1.0) / (size.sum() - size + vocab)
    score = np.log(inside / outside)  # [domains, words]
    owner = score.argmax(axis=0)
    words: dict[str, list[str]] = {}
    for d, name in enumerate(domain_names):
        mine = np.flatnonzero(candidates & (owner == d) & (score[d] > 0))
        best = mine[np.argsort(-score[d, mine], kind="stable")][:n_words]
        words[name] = [unigram_labels[i] for i in best]
    return words


def _variable(
    name: str, group: str, labels, values: np.ndarray, placeholders=()
) -> tuple[Variable, np.ndarray]:
    """A variable and its int32 codes ``[sequences, context]``."""
    variable = Variable(name, group, tuple(labels), tuple(placeholders))
    return variable, np.ascontiguousarray(values, dtype=np.int32)


def _check_feature_inputs(tokens: np.ndarray, pieces: list[str], domains: np.ndarray) -> None:
    """Stop when the token array, its token strings and domain labels do not fit together."""
    if tokens.ndim != 2:
        raise FeaturesError(f"tokens: expected [sequences, context], got shape {tokens.shape}")
    if domains.shape != (tokens.shape[0],):
        raise FeaturesError(
            f"domains: expected one label per sequence ({tokens.shape[0]}), got shape {domains.shape}"
        )
    if int(tokens.max(initial=0)) >= len(pieces):
        raise FeaturesError(
            f"tokens: id {int(tokens.max())} beyond the {len(pieces)} token strings"
        )


def _token_variables(
    tokens: np.ndarray, shown: list[str], table: TokenTable, start: np.ndarray
) -> list[tuple[Variable, np.ndarray]]:
    """The token-level variables (unigram, byte and alphabet groups) and their previous-token
    versions; ``shown``: the label of every token id."""
    word_first = np.take_along_axis(tokens, start, axis=1)
    current = {
        "token": (tuple(shown), tokens),
        "unigram": (table.unigram_labels, table.unigram[tokens]),
        "token_class": (TOKEN_CLASSES, table.token_class[tokens]),
        "byte_class": (BYTE_CLASSES, table.byte_class[tokens]),
        "first_letter": (LETTERS, table.letter[word_first]),
    }
    letter_none = (LETTERS.index(NONE_LABEL),)
    groups = {"first_letter": "alphabet", "byte_class": "byte"}
    out = []
    for name, (labels, values) in current.items():
        group = groups.get(name, "unigram")
        out.append(
            _variable(name, group, labels, values, letter_none if group == "alphabet" else ())
        )
    for name, (labels, values) in current.items():
        skip = (len(labels),) + (letter_none if name == "first_letter" else ())
        prev = _previous(values, len(labels))
        out.append(_variable(f"prev_{name}", "previous_token", labels + (START_LABEL,), prev, skip))
    return out


def _syntax_variables(syntax: SyntaxLabels, shape: tuple[int, int]) -> list:
    """``pos`` and ``dep`` (code 0 = none is a placeholder); the labels must have ``shape``."""
    if syntax.pos.shape != shape or syntax.dep.shape != shape:
        raise FeaturesError(
            f"syntax labels have shape {syntax.pos.shape}, the analysis token set {shape}: "
            "rerun the syntax stage"
        )
    return [
        _variable("pos", "syntax", syntax.pos_labels, syntax.pos, (0,)),
        _variable("dep", "syntax", syntax.dep_labels, syntax.dep, (0,)),
    ]


def _topic_variable(
    tokens: np.ndarray,
    table: TokenTable,
    start: np.ndarray,
    counted: np.ndarray,
    domain_codes: np.ndarray,
    domain_names: list[str],
    sizes: tuple[int, int],
) -> tuple[tuple[Variable, np.ndarray], dict[str, list[str]]]:
    """The ``topic`` variable (which domain's topic word set a token's word is in) and the
    topic words; words are counted at the ``counted`` positions; ``sizes``: (words per
    domain, minimum count)."""
    word, first_of_word, word_labels = word_codes(tokens, table, start)
    count_at = counted & first_of_word
    words = build_topic_words(
        word[count_at], domain_codes[count_at], word_labels, list(domain_names), *sizes
    )
    topic_of_word = np.zeros(len(word_labels), np.int32)
    index = {label: i for i, label in enumerate(word_labels)}
    for d, name in enumerate(domain_names):
        for w in words.get(name, []):
            topic_of_word[index[w]] = d + 1
    labels = [NONE_LABEL, *domain_names]
    return _variable("topic", "semantic", labels, topic_of_word[word], (0,)), words


def build_features(
    tokens: np.ndarray,
    pieces: list[str],
    domains: np.ndarray,
    domain_names: list[str],
    kept: np.ndarray,
    syntax: SyntaxLabels | None = None,
    topic_words: int = 50,
    topic_min_count: int = 20,
    piece_bytes: list[bytes | None] | None = None,
) -> FeatureSet:
    """Every variable of the module docstring for a token set.

    ``tokens``: ``[sequences, context]`` ids; ``pieces``: text of each id
    (``token_pieces``); ``piece_bytes``: the bytes of each id (``token_bytes.token_bytes``;
    default: the UTF-8 of ``pieces``, which loses the bytes of a piece holding U+FFFD); ``domains``: ``[sequences]`` index into ``domain_names``;
    ``kept``: bool ``[sequences, context]`` positions that count (topic words are
    counted there); ``syntax``: labels of the same shape, or None to leave syntax out.
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    _check_feature_inputs(tokens, pieces, domains)
    if piece_bytes is None:
        piece_bytes = [p.encode("utf-8") if p else None for p in pieces]
    shown = readable_pieces(pieces, piece_bytes)
    table = token_table(pieces, shown, piece_bytes)
    start = word_starts(tokens, table)
    context = tokens.shape[1]
    positions = np.broadcast_to(np.arange(context), tokens.shape)
    parts = _token_variables(tokens, shown, table, start)
    parts.append(_variable("position", "position", [str(p) for p in range(context)], positions))
    if syntax is not None:
        parts += _syntax_variables(syntax, tokens.shape)
    domain_codes = np.broadcast_to(np.asarray(domains, np.int64)[:, None], tokens.shape)
    parts.append(_variable("domain", "semantic", domain_names, domain_codes))
    topic, words = _topic_variable(
        tokens,
        table,
        start,
        np.asarray(kept, bool),
        domain_codes,
        domain_names,
        (topic_words, topic_min_count),
    )
    parts.append(topic)
    return FeatureSet(
        variables=[variable for variable, _ in parts],
        codes={variable.name: codes for variable, codes in parts},
        topic_words=words,
    )


def _syntax_prefix(syntax: SyntaxLabels, sequences: int) -> SyntaxLabels | None:
    """The labels of the first ``sequences`` sequences (None: the labels cover fewer)."""
    if syntax.pos.shape[0] < sequences:
        return None
    return dataclasses.replace(syntax, pos=syntax.pos[:sequences], dep=syntax.dep[:sequences])


def load_analysis_features(
    tokens_dir: str | Path,
    analysis: AnalysisConfig,
    families: FamiliesConfig,
    syntax_dir: str | Path | None = None,
    syntax_prefix: bool = False,
) -> tuple[np.ndarray, FeatureSet, np.ndarray, list[str]]:
    """The analysis token set of a tokenize output and its features.

    Returns ``(tokens [sequences, context], features, excluded token ids, token strings)``.
    Syntax features are included when ``syntax_dir`` exists (the syntax stage's output).
    ``syntax_prefix``: the labels may have been parsed for more sequences of the same split
    (a page over the first N sequences only): their first rows are used, and syntax is left
    out when they cover fewer sequences than asked.
    """
    tokenizer = load_tokenizer(tokens_dir)
    tokens = np.asarray(analysis_tokens(load_tokens(tokens_dir, analysis.split), analysis))
    domains, names = load_domains(tokens_dir, analysis.split)
    excluded = excluded_token_ids(tokenizer, analysis)
    syntax = None
    if syntax_dir is not None and Path(syntax_dir).exists():
        syntax = SyntaxLabels.load(syntax_dir)
        if syntax_prefix:
            syntax = _syntax_prefix(syntax, len(tokens))
    pieces = token_pieces(tokenizer)
    features = build_features(
        tokens,
        pieces,
        domains[: len(tokens)],
        names,
        kept_mask(tokens, excluded).numpy(),
        syntax=syntax,
        topic_words=families.topic_words,
        topic_min_count=families.topic_min_count,
        piece_bytes=token_bytes(tokenizer, pieces),
    )
    return tokens, features, excluded, pieces
