"""Tokens for display, shared by a neuron's text view and its HTML page: special tokens
named (``render_piece``), spaces, tabs and newlines as visible marks (``visible_token``),
split multi-byte characters and control characters as escapes (``display_pieces``).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

from universal_neurons.description.features import token_pieces

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


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet inverted: the byte each printable character stands for."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    others = [b for b in range(256) if b not in printable]  # stand-ins from U+0100 on
    decoder = {chr(b): b for b in printable}
    decoder.update({chr(256 + n): b for n, b in enumerate(others)})
    return decoder


def escape_invisible(text: str) -> str:
    """Control and format characters (except newline and tab) as escapes: ``\\x14``, ``\\u200b``."""
    return "".join(
        (f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}")
        if c not in "\n\t" and unicodedata.category(c) in INVISIBLE
        else c
        for c in text
    )


def display_pieces(tokenizer) -> list[str]:
    """The text of every token id for display: its decoded text (``""`` for special tokens),
    or, for a byte-level BPE token that is no valid UTF-8 on its own (a piece of a multi-byte
    character), its bytes as escapes, e.g. ``\\xe2\\x80`` instead of ``\ufffd``; control
    characters escaped too (``escape_invisible``)."""
    pieces = token_pieces(tokenizer)
    decoder = _byte_decoder()
    for token_id, piece in enumerate(pieces):
        raw = tokenizer.id_to_token(token_id) if "\ufffd" in piece else None
        if raw and all(char in decoder for char in raw):
            data = bytes(decoder[char] for char in raw)
            piece = data.decode("utf-8", errors="backslashreplace")
        pieces[token_id] = escape_invisible(piece)
    return pieces
