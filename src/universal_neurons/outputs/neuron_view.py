"""A neuron's page as text in a terminal (``universal-neurons neuron MODEL LAYER.INDEX``, like
Neuroscope; ``neuron_page``).

What the pipeline knows about the neuron (stats, universality and family tables when they
exist) and its top-activating contexts in the analysis token set (``analysis.neuron_profile``),
the activating token highlighted. Highlighting goes through a ``style(text, role)`` function
(roles ``heading``, ``family``, ``token``): the command line colours them, plain text leaves
them as they are.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pandas as pd

from universal_neurons.description.effects import effects_section
from universal_neurons.description.neuron_profile import (
    NeuronProfile,
    NeuronSources,
    PageSettings,
    context_window,
    neuron_profile,
    table_row,
)
from universal_neurons.description.variance import TopActivations
from universal_neurons.matching.universality import CONTRACT_COLUMNS
from universal_neurons.outputs.number_format import beside_threshold
from universal_neurons.outputs.text_table import TERMINAL_WIDTH, wrapped_line
from universal_neurons.outputs.token_display import display_pieces, window_texts
from universal_neurons.text.tokens import load_tokenizer

Style = Callable[[str, str], str]
UNIVERSALITY_COLUMNS = [c for c in CONTRACT_COLUMNS if c not in ("layer", "index")]


def plain(text: str, role: str) -> str:
    """The ``Style`` that leaves text unstyled."""
    return text


def format_value(value) -> str:
    """A table value for display: floats with 4 significant digits, lists comma-separated."""
    if isinstance(value, float | np.floating):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, list | np.ndarray):
        return ", ".join(format_value(v) for v in value)
    return str(value)


def key_values(
    row: pd.Series, keys: list[str] | None = None, per_line: int = 3, threshold: float = 0.5
) -> list[str]:
    """``key = value`` lines, a few per line; ``excess_corr`` with the digits that show its
    side of ``threshold`` (τ)."""
    keys = [k for k in (keys or list(row.index)) if k in row.index and k not in ("layer", "index")]
    items = [
        f"{k} = "
        + (beside_threshold(row[k], threshold, 4) if k == "excess_corr" else format_value(row[k]))
        for k in keys
    ]
    return ["  " + "   ".join(items[i : i + per_line]) for i in range(0, len(items), per_line)]


def table_lines(
    sources: NeuronSources, layer: int, index: int, style: Style, threshold: float = 0.5
) -> list[str]:
    """The universality and statistics sections, from the pipeline's tables (``threshold``:
    τ of the universality test)."""
    stats = table_row(sources.stats_table, layer, index)
    universality = table_row(sources.universality_table, layer, index)
    if universality is None and stats is not None:
        universality = stats
    lines = [style("universality", "heading")]
    if universality is None:
        lines.append(f"  (no {sources.universality_table}: run the universality stage)")
    else:
        lines += key_values(universality, UNIVERSALITY_COLUMNS, threshold=threshold)
    lines.append(style("statistics", "heading"))
    if stats is None:
        lines.append(f"  (no {sources.stats_table}: run the stats stage)")
    else:
        lines += key_values(stats, [c for c in stats.index if c not in UNIVERSALITY_COLUMNS])
    return lines


def family_lines(row: pd.Series, computed_now: bool, style: Style = plain) -> list[str]:
    """The family section from a family-table row."""
    lines = []
    if computed_now:
        lines.append("  (computed now over the analysis token set: not in the family table)")
    family = style(str(row["family"]), "family")
    vocab = f"   vocabulary family: {row['vocab_family']}" if "vocab_family" in row.index else ""
    lines.append(f"  family: {family}{vocab}")
    lines.append(
        f"  best feature: {row['best_feature']} (VR {format_value(row['best_vr'])}, "
        f"{row['best_group']})"
    )
    lines.append(
        f"  runner-up:    {row['runner_up_feature']} (VR {format_value(row['runner_up_vr'])}, "
        f"{row['runner_up_group']})"
    )
    lines.append("  top features:")
    for name, vr in zip(row["top_features"], row["top_vrs"], strict=True):
        lines.append(f"    {vr:7.4f}  {name}")
    return lines


def context_line(
    tokens: np.ndarray,
    pieces: list[str],
    sequence: int,
    position: int,
    before: int,
    after: int,
    style: Style = plain,
) -> str:
    """The text around ``tokens[sequence, position]`` with that token highlighted (a byte of
    a split character as ``['Ö' (lead byte 0xC3)]``: ``token_display.window_texts``)."""
    row = tokens[sequence]
    start, stop = context_window(len(row), position, before, after)
    ids = [int(t) for t in row]
    texts = window_texts(ids[start:stop], pieces, ids[stop : stop + 3])
    at = position - start
    left = "".join(short for short, _ in texts[:at])
    right = "".join(short for short, _ in texts[at + 1 :])
    token = style(f"[{texts[at][1]}]", "token")
    return f"{left}{token}{right}"


def context_lines(
    best: TopActivations,
    tokens: np.ndarray,
    pieces: list[str],
    window: tuple[int, int],
    style,
    note: str = "",
) -> list[str]:
    """One line per top activation of the (single) neuron of ``best``: value, where, context;
    ``window``: tokens shown (before, after); ``note``: added to the heading."""
    lines = [style(f"top-activating contexts ({len(tokens)} sequences{note})", "heading")]
    for rank in range(best.values.shape[1]):
        value = float(best.values[0, rank])
        if not math.isfinite(value):
            break
        seq, pos = int(best.sequence[0, rank]), int(best.position[0, rank])
        where = f"seq {seq} pos {pos}"
        text = context_line(tokens, pieces, seq, pos, *window, style)
        lines.append(f"  {value:8.4f}  {where:>16}  {text}")
    return lines


def family_section(profile: NeuronProfile, style: Style = plain) -> list[str]:
    """The family heading and section of ``profile`` (a note where syntax labels were missing)."""
    lines = [style("family", "heading")]
    if profile.no_syntax:
        lines.append("  (no syntax labels: run the syntax stage for part-of-speech features)")
    return lines + family_lines(profile.family, profile.computed_now, style)


def effects_lines(
    sources: NeuronSources, layer: int, index: int, style: Style = plain, pieces=None
) -> list[str]:
    """The effects section: the neuron's effects (measured once, whether as a universal
    neuron, a control or a partner) and the neurons it was measured for; nothing where the
    effects stage has not run. ``pieces``: each token id as shown (ids when None)."""
    path = sources.effects_table
    if path is None or not path.is_file():
        return []
    table = pd.read_parquet(path)
    rows = table[(table["layer"] == layer) & (table["index"] == index)]
    if not len(rows):
        return []
    rows = rows.sort_values("kind", key=lambda kinds: kinds != "universal", kind="stable")
    roles = [f"{r['kind']} of {r['of']}" if r["of"] else r["kind"] for r in rows.to_dict("records")]
    lines = [style("effects (ablation on the held-out tokens)", "heading")]
    lines.append("  measured as: " + ", ".join(roles))
    lines += ["  " + line for line in effects_section(rows.iloc[0].to_dict(), pieces)]
    return [part for line in lines for part in wrapped_line(line, TERMINAL_WIDTH, ", ")]


def neuron_page(
    sources: NeuronSources,
    neuron: tuple[int, int],
    settings: PageSettings,
    style: Style = plain,
) -> list[str]:
    """The lines of the page of ``neuron`` ``(layer, index)`` of the model of ``sources``."""
    layer, index = neuron
    lines = [
        style(f"{sources.label} neuron L{layer}.N{index}", "heading") + f"   ({sources.model_dir})"
    ]
    lines += table_lines(sources, layer, index, style, settings.threshold)
    profile = neuron_profile(sources, neuron, settings)
    window = (settings.before, settings.after)
    pieces = display_pieces(load_tokenizer(sources.tokens_dir))
    note = "; found by the classify stage" if profile.stored_top else ""
    context = context_lines(profile.top, profile.tokens, pieces, window, style, note)
    effects = effects_lines(sources, layer, index, style, pieces)
    return lines + family_section(profile, style) + effects + context
