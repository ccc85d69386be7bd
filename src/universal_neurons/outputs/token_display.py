"""Tokens for display, shared by a neuron's text view and its HTML page: special tokens
named (``render_piece``), spaces, tabs and newlines as visible marks (``visible_token``),
bytes of split multi-byte characters in words and control characters as escapes
(``display_pieces``: ``⟨0xC3: lead byte of À–ÿ⟩`` rather than ``'\ufffd'``), and in a
context the character such bytes form with their neighbours (``window_texts``:
``'Ö' (lead byte 0xC3)``).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

from universal_neurons.description.features import token_pieces
from universal_neurons.description.token_bytes import (
    context_token_text,
    readable_pieces,
    token_bytes,
)

SPACE, NEWLINE, TAB = "\u2423", "\u23ce", "\u21e5"
INVISIBLE = {"Cc", "Cf", "Co", "Cn", "Zl", "Zp"}  # Unicode categories shown as escapes


def render_piece(piece: str) -> str:
    """Token text for display: special tokens named, newlines visible."""
    if piece == "":
        return "<|endoftext|>"
    return piece.replace("\n", NEWLINE)


def visible_token(piece: str) -> str:
    """A vocabulary token on its own: spaces, tabs and newlines as visible marks
    (``' the'`` -> ``␣the``), special tokens named."""
    return render_piece(piece).replace(" ", SPACE).replace("\t", TAB)


def piece_of(pieces: Sequence[str], token_id: int) -> str:
    """The text of ``token_id``; ids beyond the tokenizer (a model's padded vocabulary) named."""
    return pieces[token_id] if token_id < len(pieces) else f"<id {token_id}>"


def escape_invisible(text: str) -> str:
    """Control and format characters (except newline and tab) as escapes: ``\\x14``, ``\\u200b``."""
    return "".join(
        (f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}")
        if c not in "\n\t" and unicodedata.category(c) in INVISIBLE
        else c
        for c in text
    )


class DisplayPieces(list):
    """The display text of every token id (a ``list[str]``) and, in ``data``, its bytes
    (None for special tokens), so that a context can join split characters."""

    def __init__(self, pieces: Sequence[str], data: Sequence[bytes | None]):
        super().__init__(pieces)
        self.data = list(data)


def display_pieces(tokenizer) -> DisplayPieces:
    """The text of every token id for display: its decoded text (``""`` for special tokens),
    or, for a byte-level BPE token that is no valid UTF-8 on its own (a piece of a multi-byte
    character), its bytes in words (``token_bytes.readable_bytes``: ``⟨0xC3: lead byte of
    À–ÿ⟩``) instead of ``\ufffd``; control characters escaped (``escape_invisible``)."""
    pieces = token_pieces(tokenizer)
    data = token_bytes(tokenizer, pieces)
    shown = [escape_invisible(piece) for piece in readable_pieces(pieces, data)]
    return DisplayPieces(shown, data)


def window_texts(
    token_ids: Sequence[int],
    pieces: Sequence[str],
    after: Sequence[int] = (),
) -> list[tuple[str, str]]:
    """``(short, long)`` display text of each token of a context window: ``render_piece`` of its
    piece, except where ``pieces`` (a ``DisplayPieces``) knows its bytes and the token opens
    or finishes a character with its neighbours: short ``Ö``, long ``'Ö' (lead byte 0xC3)``
    (``token_bytes.context_token_text``; short ``""`` for a token of continuation bytes only,
    whose character the token before it shows). ``after``: the tokens after the window (up to
    3), read only to finish a character its last token opens."""
    data = getattr(pieces, "data", None)
    plain = [render_piece(piece_of(pieces, t)) for t in token_ids]
    if data is None:
        return [(text, text) for text in plain]
    window = [data[t] if t < len(data) else None for t in [*token_ids, *after]]
    out = []
    for i, text in enumerate(plain):
        own = window[i]
        if own is not None and not own.isascii():
            short, long = context_token_text(window, i)
            out.append((escape_invisible(short).replace("\n", NEWLINE), escape_invisible(long)))
        else:
            out.append((text, text))
    return out
