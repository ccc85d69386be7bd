"""Read back the aligned text tables the ``universal-neurons`` tools print
(``outputs/text_table.py``): cells cut at the columns each table's dashed rule marks."""

from __future__ import annotations

import re


def table_cells(text: str) -> list[list[str]]:
    """The cells of the first table of ``text`` (header row first), up to a blank line."""
    lines = text.splitlines()
    rule = lines[1]
    spans, start = [], 0
    for dashes in rule.split("  "):
        spans.append((start, start + len(dashes)))
        start += len(dashes) + 2
    end = lines.index("") if "" in lines else len(lines)
    rows = [lines[0], *lines[2:end]]
    return [[row[a:b].strip() for a, b in spans] for row in rows]


def text_tables(text: str) -> list[list[list[str]]]:
    """The cells of every table of ``text``: blocks separated by blank lines whose second line
    is a dashed rule (other blocks, such as notes, are not tables)."""
    blocks = [block for block in text.split("\n\n") if block.strip()]
    return [
        table_cells(block)
        for block in blocks
        if len(block.splitlines()) > 1 and re.fullmatch(r"-+(  -+)*", block.splitlines()[1])
    ]


def cells_by_row(text: str) -> dict[str, dict[str, str]]:
    """``{row name: {column name: cell}}`` over every table of ``text`` (a table split to fit
    a terminal repeats its row names in each part)."""
    out: dict[str, dict[str, str]] = {}
    for table in text_tables(text):
        for row in table[1:]:
            out.setdefault(row[0], {}).update(zip(table[0][1:], row[1:], strict=True))
    return out
