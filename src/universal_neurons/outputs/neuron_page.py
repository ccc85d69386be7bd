"""One neuron as text (``universal-neurons neuron MODEL LAYER.INDEX``), like Neuroscope.

Shows what the pipeline knows about the neuron (stats, universality and family tables
when they exist) and its top-activating contexts in the analysis token set, the
activating token highlighted. Highlighting goes through a ``style(text, role)`` function
(roles ``heading``, ``family``, ``token``): the command line colours them, plain text
leaves them as they are.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from universal_neurons.analysis.families import FamiliesError, classify_model, parse_neuron
from universal_neurons.analysis.features import FeatureSet, load_analysis_features
from universal_neurons.analysis.universality import CONTRACT_COLUMNS
from universal_neurons.analysis.variance import TopActivations, collect_feature_sums
from universal_neurons.config import AnalysisConfig, FamiliesConfig
from universal_neurons.errors import UserError
from universal_neurons.models.loading import load_model

Style = Callable[[str, str], str]
UNIVERSALITY_COLUMNS = [c for c in CONTRACT_COLUMNS if c not in ("layer", "index")]


def plain(text: str, role: str) -> str:
    """The ``Style`` that leaves text unstyled."""
    return text


class NeuronPageError(UserError):
    """A neuron that does not exist in its model."""


@dataclass(frozen=True)
class NeuronSources:
    """What the page of one neuron reads. ``label``: the model's name in the tables
    (``seed1``); the tables and ``syntax_dir`` may be missing (their sections say so)."""

    label: str
    model_dir: Path
    tokens_dir: Path
    stats_table: Path
    universality_table: Path
    family_table: Path
    syntax_dir: Path


def check_neuron(text: str, n_layers: int, d_mlp: int, label: str) -> tuple[int, int]:
    """Parse ``LAYER.INDEX`` and check it lies inside the model."""
    try:
        layer, index = parse_neuron(text)
    except FamiliesError as exc:
        raise NeuronPageError(str(exc).replace("neuron:", "NEURON:")) from None
    if not (0 <= layer < n_layers and 0 <= index < d_mlp):
        raise NeuronPageError(
            f"NEURON: {text} is outside {label} ({n_layers} layers x {d_mlp} neurons: "
            f"LAYER 0-{n_layers - 1}, INDEX 0-{d_mlp - 1})"
        )
    return layer, index


def table_row(path: Path, layer: int, index: int) -> pd.Series | None:
    """The row of neuron ``(layer, index)`` in a per-model parquet table, or None."""
    if not path.is_file():
        return None
    table = pd.read_parquet(path)
    rows = table[(table["layer"] == layer) & (table["index"] == index)]
    return None if rows.empty else rows.iloc[0]


def format_value(value) -> str:
    """A table value for display: floats with 4 significant digits, lists comma-separated."""
    if isinstance(value, float | np.floating):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, list | np.ndarray):
        return ", ".join(format_value(v) for v in value)
    return str(value)


def key_values(row: pd.Series, keys: list[str] | None = None, per_line: int = 3) -> list[str]:
    """``key = value`` lines, a few per line."""
    keys = [k for k in (keys or list(row.index)) if k in row.index and k not in ("layer", "index")]
    items = [f"{k} = {format_value(row[k])}" for k in keys]
    return ["  " + "   ".join(items[i : i + per_line]) for i in range(0, len(items), per_line)]


def table_lines(sources: NeuronSources, layer: int, index: int, style: Style) -> list[str]:
    """The universality and statistics sections, from the pipeline's tables."""
    stats = table_row(sources.stats_table, layer, index)
    universality = table_row(sources.universality_table, layer, index)
    if universality is None and stats is not None:
        universality = stats
    lines = [style("universality", "heading")]
    if universality is None:
        lines.append(f"  (no {sources.universality_table}: run the universality stage)")
    else:
        lines += key_values(universality, UNIVERSALITY_COLUMNS)
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


def render_piece(piece: str) -> str:
    """Token text for display: special tokens named, newlines visible."""
    if piece == "":
        return "<|endoftext|>"
    return piece.replace("\n", "\u23ce")


def context_line(
    tokens: np.ndarray,
    pieces: list[str],
    sequence: int,
    position: int,
    before: int,
    after: int,
    style: Style = plain,
) -> str:
    """The text around ``tokens[sequence, position]`` with that token highlighted."""
    row = tokens[sequence]
    left = "".join(render_piece(pieces[t]) for t in row[max(0, position - before) : position])
    right = "".join(render_piece(pieces[t]) for t in row[position + 1 : position + 1 + after])
    token = style(f"[{render_piece(pieces[row[position]])}]", "token")
    return f"{left}{token}{right}"


def context_lines(
    best: TopActivations, tokens: np.ndarray, pieces: list[str], window: tuple[int, int], style
) -> list[str]:
    """One line per top activation of the (single) neuron of ``best``: value, where, context;
    ``window``: tokens shown (before, after)."""
    lines = [style(f"top-activating contexts ({len(tokens)} sequences)", "heading")]
    for rank in range(best.values.shape[1]):
        value = float(best.values[0, rank])
        if not math.isfinite(value):
            break
        seq, pos = int(best.sequence[0, rank]), int(best.position[0, rank])
        where = f"seq {seq} pos {pos}"
        text = context_line(tokens, pieces, seq, pos, *window, style)
        lines.append(f"  {value:8.4f}  {where:>16}  {text}")
    return lines


@dataclass(frozen=True)
class PageSettings:
    """How much of the token set the page shows: ``top`` contexts of ``before`` / ``after``
    tokens around the activating one, found in the analysis token set of ``analysis``."""

    analysis: AnalysisConfig
    families: FamiliesConfig
    top: int = 8
    before: int = 12
    after: int = 4


def _top_activations(
    model, analysis_set: tuple[np.ndarray, np.ndarray], neuron, settings: PageSettings, desc: str
) -> TopActivations:
    """The neuron's ``settings.top`` activations over ``(tokens, excluded ids)``, one pass."""
    tokens, excluded = analysis_set
    batch_size, device = settings.analysis.batch_size, settings.analysis.device
    no_features = FeatureSet(variables=[], codes={})
    return collect_feature_sums(
        model, tokens, no_features, [neuron], excluded, batch_size, device, settings.top, desc
    )[1]


def _family_and_top(
    sources: NeuronSources, neuron: tuple[int, int], settings: PageSettings, style: Style
) -> tuple[list[str], TopActivations, np.ndarray, list[str]]:
    """The family section (from the family table, or computed now) and the neuron's top
    activations over the analysis token set: ``(lines, top, tokens, token strings)``."""
    family = table_row(sources.family_table, *neuron)
    analysis = settings.analysis
    tokens, features, excluded, pieces = load_analysis_features(
        sources.tokens_dir, analysis, settings.families, sources.syntax_dir, syntax_prefix=True
    )
    model = load_model(str(sources.model_dir), device=analysis.device)
    desc = f"{sources.label} L{neuron[0]}.N{neuron[1]}"
    lines = [style("family", "heading")]
    if family is not None:  # the family is known: the pass only looks for top contexts
        best = _top_activations(model, (tokens, excluded), neuron, settings, desc)
        return lines + family_lines(family, False, style), best, tokens, pieces
    stats = pd.read_parquet(sources.stats_table) if sources.stats_table.is_file() else None
    table, best = classify_model(
        model,
        tokens,
        features,
        [neuron],
        excluded,
        analysis,
        settings.families,
        stats,
        desc=desc,
        top_k=settings.top,
    )
    if not sources.syntax_dir.exists():
        lines.append("  (no syntax labels: run the syntax stage for part-of-speech features)")
    return lines + family_lines(table.iloc[0], True, style), best, tokens, pieces


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
    lines += table_lines(sources, layer, index, style)
    family, best, tokens, pieces = _family_and_top(sources, neuron, settings, style)
    window = (settings.before, settings.after)
    return lines + family + context_lines(best, tokens, pieces, window, style)
