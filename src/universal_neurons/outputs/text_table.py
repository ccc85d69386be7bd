"""Aligned text tables that fit a terminal: the layout the ``universal-neurons`` tools share."""

from __future__ import annotations

TERMINAL_WIDTH = 120
"""Columns the tools' default output fits in (a terminal's width; their ``--wide`` lifts it)."""


def text_table(rows: list[list[str]]) -> list[str]:
    """Rows of cells as aligned text columns, a dashed rule under the header row."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def _column_groups(rows: list[list[str]], width: int, tail: int) -> list[list[int]]:
    """The middle columns (after the first, before the last ``tail``) in groups whose table,
    first column and ``tail`` columns repeated, is at most ``width`` wide; one column per
    group at least."""
    cell_widths = [max(len(row[i]) for row in rows) + 2 for i in range(len(rows[0]))]
    middle = range(1, len(rows[0]) - tail)
    fixed = cell_widths[0] + sum(cell_widths[i] for i in range(middle.stop, len(rows[0]))) - 2
    groups: list[list[int]] = [[]]
    for column in middle:
        used = fixed + sum(cell_widths[i] for i in groups[-1])
        if groups[-1] and used + cell_widths[column] > width:
            groups.append([])
        groups[-1].append(column)
    return groups


def fitted_table(rows: list[list[str]], width: int | None, tail: int = 0) -> list[str]:
    """``text_table`` of ``rows``; when ``width`` is given and the middle columns do not fit,
    one table per group of them (the first column and the last ``tail`` columns in each),
    separated by a blank line."""
    if width is None or len(rows[0]) <= 2 + tail:
        return text_table(rows)
    lines: list[str] = []
    for group in _column_groups(rows, width, tail):
        picked = [[row[0], *(row[i] for i in group), *row[len(row) - tail :]] for row in rows]
        lines += ([""] if lines else []) + text_table(picked)
    return lines


def wrapped_line(line: str, width: int, at: str = " ") -> list[str]:
    """``line`` broken at ``at`` (between words; ``", "``: between the items of a list) into
    lines of at most ``width`` columns where it can be, each continuation indented two spaces
    deeper than the line itself."""
    indent = " " * (len(line) - len(line.lstrip(" ")) + 2)
    pieces = line.split(at)
    mark = at.rstrip()  # what a broken line ends with ("," between the items of a list)
    lines = [pieces[0]]
    for number, piece in enumerate(pieces[1:], start=2):
        room = width - (len(mark) if number < len(pieces) else 0)
        if len(lines[-1]) + len(at) + len(piece) <= room:
            lines[-1] += at + piece
        else:
            lines[-1] += mark
            lines.append(indent + piece.lstrip())
    return [text.rstrip() for text in lines]
