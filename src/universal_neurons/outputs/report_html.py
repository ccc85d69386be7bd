"""The HTML parts every section of the report is made of: numbers as the report prints them
(``percent``, ``count``, ``number``), tables (``html_table``), and the contents list linked to
the sections' headings (``linked_contents``)."""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Sequence
from typing import Any


def percent(value: Any) -> str:
    """``4.1621`` -> ``4.16%``; missing -> ``–``."""
    return "–" if value is None else f"{float(value):.2f}%"


def count(value: Any) -> str:
    """``36864`` -> ``36,864``; missing -> ``–``."""
    return "–" if value is None else f"{int(value):,}"


def number(value: Any, digits: int = 3) -> str:
    """A float with ``digits`` significant digits; small p-values in scientific notation."""
    if value is None:
        return "–"
    if isinstance(value, bool | str):
        return html.escape(str(value))
    value = float(value)
    if value != 0 and abs(value) < 1e-3:
        return f"{value:.2e}"
    return f"{value:.{digits}g}"


def html_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """An HTML table of ``headers`` and ``rows`` (cells: HTML already escaped)."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def anchor(title: str) -> str:
    """The id of a section's heading: ``"Per layer"`` -> ``"per-layer"``."""
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "section"


def linked_contents(sections: list[str], titles: list[str]) -> tuple[list[str], str]:
    """The sections with an id on each heading ``<h2>title</h2>`` and the contents list, one
    ``<a href="#id">`` per title whose heading is there (plain text otherwise)."""
    body = "\n".join(sections)
    items = []
    for title in titles:
        heading = f"<h2>{html.escape(title)}</h2>"
        if heading not in body:
            items.append(f"<li>{html.escape(title)}</li>")
            continue
        target = anchor(title)
        body = body.replace(heading, f'<h2 id="{target}">{html.escape(title)}</h2>', 1)
        items.append(f'<li><a href="#{target}">{html.escape(title)}</a></li>')
    return [body], "".join(items)
