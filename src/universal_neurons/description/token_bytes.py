"""The bytes of byte-level BPE tokens: their UTF-8 class (a feature variable of
``features``) and a readable description of bytes that are no character on their own.

A byte-level BPE (GPT-2's, or the one the tokenize stage trains) may cut a multi-byte UTF-8
character between tokens: a token can end in the *lead byte* of a character (0xC2-0xDF
opens a 2-byte character, 0xE0-0xEF a 3-byte one, 0xF0-0xF4 a 4-byte one) whose
*continuation bytes* (0x80-0xBF) start the next token. Decoded alone, such tokens read
``'\ufffd'``; here they keep their bytes.

``BYTE_CLASSES`` (``byte_class``), decided in this order:

| class | the token's bytes |
|---|---|
| ``special`` | none (a special token such as ``<|endoftext|>``) |
| ``utf8-lead-2`` / ``-3`` / ``-4`` | end inside a 2/3/4-byte character they open (``b"\\xc3"``, ``b" \\xe2\\x80"``) |
| ``continuation`` | start with continuation bytes: they finish a character opened before |
| ``ascii`` | valid UTF-8, ASCII only |
| ``multi-byte-char`` | valid UTF-8 with a whole multi-byte character (``"é"``) |
| ``invalid`` | anything else (bytes no UTF-8 text holds: 0xC0, 0xC1, 0xF5-0xFF) |
"""

from __future__ import annotations

import unicodedata

BYTE_CLASSES = (
    "special",
    "ascii",
    "multi-byte-char",
    "utf8-lead-2",
    "utf8-lead-3",
    "utf8-lead-4",
    "continuation",
    "invalid",
)
REPLACEMENT = "\ufffd"


def byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet inverted: the byte each printable character stands for."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    others = [b for b in range(256) if b not in printable]  # stand-ins from U+0100 on
    decoder = {chr(b): b for b in printable}
    decoder.update({chr(256 + n): b for n, b in enumerate(others)})
    return decoder


def token_bytes(tokenizer, pieces: list[str]) -> list[bytes | None]:
    """The bytes of every token id (None for special tokens, whose ``pieces`` entry is ``""``).

    ``pieces``: the decoded text of every id (``features.token_pieces``). A piece that holds
    U+FFFD is read back from the byte-level BPE's own alphabet (``byte_decoder``) when the
    token's raw string is in it; any other piece is its UTF-8 encoding.
    """
    decoder = byte_decoder()
    out: list[bytes | None] = []
    for token_id, piece in enumerate(pieces):
        if piece == "":
            out.append(None)
            continue
        raw = tokenizer.id_to_token(token_id) if REPLACEMENT in piece else None
        if raw and all(char in decoder for char in raw):
            out.append(bytes(decoder[char] for char in raw))
        else:
            out.append(piece.encode("utf-8"))
    return out


def char_length(lead: int) -> int:
    """Bytes of the UTF-8 character a lead byte opens (2-4), 1 for ASCII, 0 for any other byte."""
    if lead < 0x80:
        return 1
    if 0xC2 <= lead <= 0xDF:
        return 2
    if 0xE0 <= lead <= 0xEF:
        return 3
    if 0xF0 <= lead <= 0xF4:
        return 4
    return 0


def is_continuation(byte: int) -> bool:
    """Whether ``byte`` is a UTF-8 continuation byte (0x80-0xBF)."""
    return 0x80 <= byte <= 0xBF


def open_char(data: bytes) -> int:
    """Length (2-4) of the character ``data`` opens but does not finish, else 0."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if not is_continuation(byte):
            length = char_length(byte)
            return length if length > back else 0
    return 0


def leading_continuations(data: bytes) -> int:
    """How many continuation bytes ``data`` starts with."""
    count = 0
    while count < len(data) and is_continuation(data[count]):
        count += 1
    return count


def byte_class(data: bytes | None) -> str:
    """The ``BYTE_CLASSES`` entry of one token's bytes (None: a special token)."""
    if data is None or data == b"":
        return "special"
    opened = open_char(data)
    if opened:
        return f"utf8-lead-{opened}"
    if is_continuation(data[0]):
        return "continuation"
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return "invalid"
    return "ascii" if data.isascii() else "multi-byte-char"


def _shown_char(char: str) -> str:
    """A character, or ``U+XXXX`` where it would not show (controls, spaces, unassigned)."""
    if unicodedata.category(char)[0] in "CZ":
        return f"U+{ord(char):04X}"
    return char


def lead_range(lead: bytes) -> str:
    """The characters a lead byte (and the continuation bytes after it) may open:
    ``b"\\xc3"`` -> ``"À–ÿ"``, ``b"\\xe2\\x80"`` -> ``"U+2000–U+203F"``."""
    length = char_length(lead[0])
    missing = length - len(lead)
    low = lead + b"\x80" * missing
    high = lead + b"\xbf" * missing
    try:
        first, last = low.decode("utf-8"), high.decode("utf-8")
    except UnicodeDecodeError:  # e.g. 0xE0 0x80: an overlong form, no character at all
        return "no character"
    return f"{_shown_char(first)}–{_shown_char(last)}"


def hex_bytes(data: bytes) -> str:
    """``b"\\xe2\\x80"`` -> ``"0xE2 0x80"``."""
    return " ".join(f"0x{b:02X}" for b in data)


def _fragment(data: bytes) -> str:
    """A run of bytes that is no character, in words."""
    if char_length(data[0]) > 1:
        noun = "lead byte" if len(data) == 1 else "lead bytes"
        return f"⟨{hex_bytes(data)}: {noun} of {lead_range(data)}⟩"
    if all(is_continuation(b) for b in data):
        noun = "continuation byte" if len(data) == 1 else "continuation bytes"
        return f"⟨{hex_bytes(data)}: {noun}⟩"
    return f"⟨{hex_bytes(data)}: invalid UTF-8⟩"


def readable_bytes(data: bytes) -> str:
    """The text of ``data`` with every run of bytes that is no character described in words:
    ``b" \\xc3"`` -> ``" ⟨0xC3: lead byte of À–ÿ⟩"``, ``b"\\x96"`` ->
    ``"⟨0x96: continuation byte⟩"``; valid UTF-8 is its text."""
    parts = []
    while data:
        try:
            parts.append(data.decode("utf-8"))
            break
        except UnicodeDecodeError as exc:
            parts.append(data[: exc.start].decode("utf-8"))
            parts.append(_fragment(data[exc.start : exc.end]))
            data = data[exc.end :]
    return "".join(parts)


def _completed_char(data: list[bytes | None], i: int) -> tuple[str, int] | None:
    """The character token ``i`` opens, finished by the continuation bytes of the tokens
    after it, and its lead byte; None when the tokens after it do not finish it."""
    own = data[i] or b""
    length = open_char(own)
    if not length:
        return None
    start = _open_start(own)
    char = own[start:]
    for nxt in data[i + 1 :]:
        if nxt is None or len(char) == length:
            break
        take = min(leading_continuations(nxt), length - len(char))
        char += nxt[:take]
        if take < len(nxt):
            break
    if len(char) != length:
        return None
    return char.decode("utf-8"), own[start]


def _finished_char(data: list[bytes | None], i: int) -> tuple[str, int] | None:
    """The character whose continuation bytes token ``i`` starts with, opened by the token(s)
    before it, and its first continuation byte in token ``i``; None when there is none."""
    own = data[i] or b""
    if not own or not is_continuation(own[0]):
        return None
    for j in range(i - 1, max(i - 4, -1), -1):
        found = _completed_char(data, j)
        if found is not None:
            return found[0], own[0]
        if data[j] is None or leading_continuations(data[j]) != len(data[j]):
            return None
    return None


def context_token_text(data: list[bytes | None], i: int) -> tuple[str, str]:
    """Token ``i`` of a run of tokens (``data``: their bytes) as ``(short, long)`` text.

    A token that opens a character the next tokens finish shows that character:
    short ``"Ö"``, long ``"'Ö' (lead byte 0xC3)"``; a token that finishes a character shows
    the rest of its text (``""`` when it holds nothing else; long: ``"'Ö' (continuation byte
    0x96)"``); any other token its ``readable_bytes`` (special tokens: ``""``).
    """
    own = data[i]
    if own is None:
        return "", ""
    opened, finished = _completed_char(data, i), _finished_char(data, i)
    if opened is not None:
        char, lead = opened
        short = readable_bytes(own[: _open_start(own)]) + char
        return short, f"{short!r} (lead byte 0x{lead:02X})"
    if finished is not None:
        char, first = finished
        rest = readable_bytes(own[leading_continuations(own) :])
        then = f" then {rest!r}" if rest else ""
        return rest, f"{char!r} (continuation byte 0x{first:02X}){then}"
    text = readable_bytes(own)
    return text, text


def readable_pieces(pieces: list[str], data: list[bytes | None]) -> list[str]:
    """Every token's text for labels: ``pieces`` where they decode, ``readable_bytes`` of the
    bytes of a piece holding U+FFFD (a piece of a multi-byte character)."""
    return [
        readable_bytes(raw) if raw is not None and REPLACEMENT in piece else piece
        for piece, raw in zip(pieces, data, strict=True)
    ]


def _open_start(data: bytes) -> int:
    """Where the character ``data`` leaves open starts."""
    return len(data) - next(b for b in range(1, 5) if not is_continuation(data[-b]))
