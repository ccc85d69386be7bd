"""The families section's numbers: what the stacked figure draws (``family_stack``), how many
universal neurons an activation family explains (``explained_counts``) and the count tables
(``family_tables``)."""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

from universal_neurons.description.families import FAMILIES, UNEXPLAINED, VOCAB_FAMILIES
from universal_neurons.outputs.report_html import count, html_table, percent


def family_stack(models: Mapping[str, dict]) -> dict[str, list[float]]:
    """The stacked bars of the families figure: per activation family (``unexplained``
    included) its universal neurons in each model. A neuron has exactly one activation family,
    so each model's stack adds up to its universal neurons; the vocabulary families (a second
    axis: a neuron can be ``unigram`` and ``partition``) stay out of it."""
    counts = [m.get("counts") or {} for m in models.values()]
    names = [f for f in FAMILIES if any(c.get(f) for c in counts)]
    return {f: [float(c.get(f, 0)) for c in counts] for f in names}


def explained_counts(entry: Mapping[str, Any]) -> tuple[int | None, float | None, int]:
    """``(explained, % explained, with a vocabulary family)`` of one model's family metrics:
    explained = universal neurons with an activation family (what they respond to), never
    counting a vocabulary family (which nearly every neuron of a small vocabulary has)."""
    counts = entry.get("counts") or {}
    universal = entry.get("n_universal")
    explained = entry.get("n_explained_by_activation")
    if explained is None and universal is not None:
        explained = int(universal) - int(counts.get(UNEXPLAINED, 0))
    share = None if explained is None or not universal else 100.0 * explained / universal
    return explained, share, int(sum(counts.get(v, 0) for v in VOCAB_FAMILIES))


def family_tables(models: Mapping[str, dict]) -> str:
    """The summary per model and the counts per family (one row per family, one column per
    model: as narrow as the group is large, however many families there are)."""
    rows = []
    for name, m in models.items():
        explained, share, vocab = explained_counts(m)
        rows.append(
            [html.escape(name), count(m.get("n_universal")), count(explained), percent(share)]
            + [count(vocab)]
        )
    head = ["model", "universal", "explained (activation family)", "% explained"]
    summary = html_table([*head, "with a vocabulary family"], rows)
    known = [*FAMILIES, *VOCAB_FAMILIES]
    present = {f for m in models.values() for f in (m.get("counts") or {})}
    names = [f for f in known if f in present] + sorted(present - set(known))
    per_family = [
        [html.escape(f), "vocabulary" if f in VOCAB_FAMILIES else "activation"]
        + [count((m.get("counts") or {}).get(f, 0)) for m in models.values()]
        for f in names
    ]
    return summary + html_table(["family", "axis", *models], per_family)
