"""Show one neuron: MODEL (seed1, or a model directory) and LAYER.INDEX (e.g. 0.17).

Its statistics, universality and family (from the pipeline's tables, or computed
now), top features with their variance reduction, and its top-activating contexts
in the analysis token set with the token highlighted (stored by the classify stage
for a classified neuron; otherwise found by one pass over the token set).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import click

from universal_neurons.description.neuron_profile import (
    NeuronPageError,
    NeuronSources,
    PageSettings,
    check_neuron,
)
from universal_neurons.io import read_json, read_parquet
from universal_neurons.models.loading import config_shape
from universal_neurons.outputs.neuron_view import neuron_page
from universal_neurons.pipeline.command import Command
from universal_neurons.pipeline.layout import Layout, model_name

if TYPE_CHECKING:
    from universal_neurons.config import Params

STYLES = {
    "heading": {"bold": True},
    "family": {"fg": "green", "bold": True},
    "token": {"fg": "red", "bold": True},
}


def terminal_style(text: str, role: str) -> str:
    """Bold headings, a green family, the activating token in red (``click.echo`` drops the
    colours when stdout is not a terminal)."""
    return click.style(text, **STYLES[role])


def resolve_model(name: str, seeds: list[int], layout: Layout) -> tuple[str, Path]:
    """``("seed1", models/seed1)`` from ``seed1`` or ``1`` (a seed of ``train.seeds``) or a model directory."""
    match = re.fullmatch(r"(?:seed)?(\d+)", name)
    if match:
        seed = int(match.group(1))
        if seed not in seeds:
            raise NeuronPageError(
                f"MODEL: {name!r} is not a model of the group; train.seeds is {seeds} "
                f"(use one of {', '.join(model_name(s) for s in seeds)} or a model directory)"
            )
        path = layout.model(seed)
        if not path.is_dir():
            raise NeuronPageError(f"{path}: model directory not found (run the train stage)")
        return model_name(seed), path
    path = Path(name)
    if path.is_dir():
        return path.name, path
    raise NeuronPageError(
        f"MODEL: unknown model {name!r}; expected seed<s> with s in train.seeds {seeds} "
        "or an existing model directory"
    )


def check_tables(sources: NeuronSources) -> None:
    """Every table the page reads that exists is a readable parquet file (one line naming a
    broken one, before the pass over the tokens)."""
    for path, stage in (
        (sources.stats_table, "stats"),
        (sources.universality_table, "universality"),
        (sources.family_table, "classify"),
        (sources.effects_table, "effects"),
    ):
        if path is not None and path.is_file():
            read_parquet(path, stage)


def run(
    params: Params,
    layout: Layout,
    model: str,
    neuron: str,
    tokens_dir: Path,
    models_dir: Path,
    data_dir: Path,
    top: int,
    before: int,
    after: int,
    max_sequences: int | None,
) -> str:
    """The page of NEURON of MODEL from the pipeline's tables (its top contexts from the family
    table when the classify stage stored them), else one pass over the tokens."""
    layout = Layout.at(
        layout.root, params=layout.params, tokens=tokens_dir, models=models_dir, data=data_dir
    )
    label, path = resolve_model(model, params.train.seeds, layout)
    read_json(path / "config.json")  # a broken one: one line naming it
    layer, index = check_neuron(neuron, *config_shape(path), label)
    sources = NeuronSources(
        label=label,
        model_dir=path,
        tokens_dir=layout.tokens,
        stats_table=layout.table("stats", label),
        universality_table=layout.table("universality", label),
        family_table=layout.table("families", label),
        syntax_dir=layout.stage_dir("syntax"),
        effects_table=layout.table("effects", label),
    )
    check_tables(sources)
    analysis = params.analysis
    if max_sequences is not None:
        analysis = analysis.model_copy(update={"max_sequences": max_sequences})
    precomputed = max_sequences is None  # the classify stage's token set: its top contexts hold
    settings = PageSettings(
        analysis,
        params.families,
        top,
        before,
        after,
        precomputed,
        params.universality.threshold,
    )
    return "\n".join(neuron_page(sources, (layer, index), settings, terminal_style))


COMMAND = Command(
    name="neuron",
    run=run,
    options=[
        click.argument("model"),
        click.argument("neuron"),
        click.option(
            "--tokens-dir",
            type=click.Path(path_type=Path),
            default=Layout().tokens,
            show_default=True,
        ),
        click.option(
            "--models-dir",
            type=click.Path(path_type=Path),
            default=Layout().models,
            show_default=True,
        ),
        click.option(
            "--data-dir",
            type=click.Path(path_type=Path),
            default=Layout().data,
            show_default=True,
            help="Holds stats/, universality/, families/, syntax/ and effects/.",
        ),
        click.option(
            "--top",
            type=click.IntRange(1, 100),
            default=8,
            show_default=True,
            help="Contexts shown.",
        ),
        click.option(
            "--before", type=click.IntRange(0), default=12, show_default=True, help="Tokens before."
        ),
        click.option(
            "--after", type=click.IntRange(0), default=4, show_default=True, help="Tokens after."
        ),
        click.option(
            "--max-sequences",
            type=click.IntRange(0),
            default=None,
            help="Search only the first N sequences (default: analysis.max_sequences).",
        ),
    ],
)
