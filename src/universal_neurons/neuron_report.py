"""One neuron in the terminal (``universal-neurons neuron MODEL LAYER.INDEX``), like Neuroscope.

Shows what the pipeline knows about the neuron (stats, universality and family tables
when they exist) and its top-activating contexts in the analysis token set, the
activating token highlighted.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import click
import numpy as np
import pandas as pd

from universal_neurons.families import FamiliesError, parse_neuron
from universal_neurons.universality import CONTRACT_COLUMNS


class NeuronReportError(ValueError):
    """A model name or neuron that does not exist."""


def resolve_model(name: str, seeds: list[int], models_dir: Path) -> tuple[str, Path]:
    """``("seed1", models/seed1)`` from ``seed1`` or ``1`` (a seed of ``train.seeds``) or a model directory."""
    match = re.fullmatch(r"(?:seed)?(\d+)", name)
    if match:
        seed = int(match.group(1))
        if seed not in seeds:
            raise NeuronReportError(
                f"MODEL: {name!r} is not a model of the group; train.seeds is {seeds} "
                f"(use one of {', '.join(f'seed{s}' for s in seeds)} or a model directory)"
            )
        path = Path(models_dir) / f"seed{seed}"
        if not path.is_dir():
            raise NeuronReportError(f"{path}: model directory not found (run the train stage)")
        return f"seed{seed}", path
    path = Path(name)
    if path.is_dir():
        return path.name, path
    raise NeuronReportError(
        f"MODEL: unknown model {name!r}; expected seed<s> with s in train.seeds {seeds} "
        "or an existing model directory"
    )


def model_dims(path: Path) -> tuple[int, int]:
    """``(n_layers, d_mlp)`` from a Hugging Face GPT-2 ``config.json`` (no model load)."""
    config_path = Path(path) / "config.json"
    if not config_path.is_file():
        raise NeuronReportError(f"{config_path}: not found; not a model directory")
    config = json.loads(config_path.read_text())
    n_layers = int(config.get("n_layer", config.get("num_hidden_layers", 0)))
    d_mlp = config.get("n_inner") or config.get("intermediate_size") or 4 * int(config["n_embd"])
    return n_layers, int(d_mlp)


def check_neuron(text: str, n_layers: int, d_mlp: int, label: str) -> tuple[int, int]:
    """Parse ``LAYER.INDEX`` and check it lies inside the model."""
    try:
        layer, index = parse_neuron(text)
    except FamiliesError as exc:
        raise NeuronReportError(str(exc).replace("neuron:", "NEURON:")) from None
    if not (0 <= layer < n_layers and 0 <= index < d_mlp):
        raise NeuronReportError(
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
    if isinstance(value, float | np.floating):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, list | np.ndarray):
        return ", ".join(format_value(v) for v in value)
    return str(value)


def heading(text: str) -> str:
    return click.style(text, bold=True)


def key_values(row: pd.Series, keys: list[str] | None = None, per_line: int = 3) -> list[str]:
    """``key = value`` lines, a few per line."""
    keys = [k for k in (keys or list(row.index)) if k in row.index and k not in ("layer", "index")]
    items = [f"{k} = {format_value(row[k])}" for k in keys]
    return ["  " + "   ".join(items[i : i + per_line]) for i in range(0, len(items), per_line)]


UNIVERSALITY_COLUMNS = [c for c in CONTRACT_COLUMNS if c not in ("layer", "index")]


def family_lines(row: pd.Series, computed_now: bool) -> list[str]:
    """The family section from a family-table row."""
    lines = []
    if computed_now:
        lines.append("  (computed now over the analysis token set: not in the family table)")
    family = click.style(str(row["family"]), fg="green", bold=True)
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
    tokens: np.ndarray, pieces: list[str], sequence: int, position: int, before: int, after: int
) -> str:
    """The text around ``tokens[sequence, position]`` with that token highlighted."""
    row = tokens[sequence]
    left = "".join(render_piece(pieces[t]) for t in row[max(0, position - before) : position])
    right = "".join(render_piece(pieces[t]) for t in row[position + 1 : position + 1 + after])
    token = click.style(f"[{render_piece(pieces[row[position]])}]", fg="red", bold=True)
    return f"{left}{token}{right}"


def neuron_report(
    params,
    model_name: str,
    neuron: str,
    tokens_dir: Path,
    models_dir: Path,
    data_dir: Path,
    top: int = 8,
    before: int = 12,
    after: int = 4,
    max_sequences: int | None = None,
) -> list[str]:
    """The lines of the report (styled with click; ``click.echo`` strips styles off a non-terminal).

    ``data_dir`` holds ``stats/``, ``universality/``, ``families/`` and ``syntax/``;
    ``max_sequences`` limits the token set searched (default ``analysis.max_sequences``).
    """
    from universal_neurons.families import (
        add_vocab_families,
        classify_neurons,
        collect_feature_sums,
    )
    from universal_neurons.features import FeatureSet, load_analysis_features
    from universal_neurons.models import load_model

    label, path = resolve_model(model_name, params.train.seeds, models_dir)
    layer, index = check_neuron(neuron, *model_dims(path), label)
    data_dir = Path(data_dir)
    lines = [heading(f"{label} neuron L{layer}.N{index}") + f"   ({path})"]

    stats = table_row(data_dir / "stats" / f"{label}.parquet", layer, index)
    universality = table_row(data_dir / "universality" / f"{label}.parquet", layer, index)
    if universality is None and stats is not None:
        universality = stats
    lines.append(heading("universality"))
    if universality is None:
        lines.append(
            f"  (no {data_dir / 'universality' / f'{label}.parquet'}: run the universality stage)"
        )
    else:
        lines += key_values(universality, UNIVERSALITY_COLUMNS)
    lines.append(heading("statistics"))
    if stats is None:
        lines.append(f"  (no {data_dir / 'stats' / f'{label}.parquet'}: run the stats stage)")
    else:
        lines += key_values(stats, [c for c in stats.index if c not in UNIVERSALITY_COLUMNS])

    family = table_row(data_dir / "families" / f"{label}.parquet", layer, index)
    analysis = params.analysis
    if max_sequences is not None:
        analysis = analysis.model_copy(update={"max_sequences": max_sequences})
    syntax_dir = data_dir / "syntax"
    tokens, features, excluded, pieces = load_analysis_features(
        tokens_dir, analysis, params.families, syntax_dir
    )
    if family is not None:  # the family is known: the pass only looks for top contexts
        features = FeatureSet(variables=[], codes={})
    model = load_model(str(path), device=analysis.device)
    sums, best = collect_feature_sums(
        model,
        tokens,
        features,
        [(layer, index)],
        excluded,
        analysis.batch_size,
        analysis.device,
        top_k=top,
        desc=f"{label} L{layer}.N{index}",
    )
    lines.append(heading("family"))
    if family is None:
        table = classify_neurons(sums, features, [(layer, index)], params.families)
        stats_path = data_dir / "stats" / f"{label}.parquet"
        if stats_path.is_file():
            table = add_vocab_families(table, pd.read_parquet(stats_path), params.families)
        family = table.iloc[0]
        if not syntax_dir.exists():
            lines.append("  (no syntax labels: run the syntax stage for part-of-speech features)")
    lines += family_lines(family, computed_now=features.variables != [])

    lines.append(heading(f"top-activating contexts ({len(tokens)} sequences)"))
    for rank in range(best.values.shape[1]):
        value = float(best.values[0, rank])
        if not math.isfinite(value):
            break
        seq, pos = int(best.sequence[0, rank]), int(best.position[0, rank])
        where = f"seq {seq} pos {pos}"
        lines.append(
            f"  {value:8.4f}  {where:>16}  {context_line(tokens, pieces, seq, pos, before, after)}"
        )
    return lines
