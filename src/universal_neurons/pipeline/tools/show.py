"""List the most universal neurons of MODEL (seed1, 1, or a .parquet path) with key statistics."""

from __future__ import annotations

from pathlib import Path

import click

from universal_neurons.outputs.listing import (
    find_table,
    format_listing,
    read_neuron_table,
    top_neurons,
)
from universal_neurons.outputs.text_table import TERMINAL_WIDTH
from universal_neurons.pipeline.command import Command
from universal_neurons.pipeline.layout import Layout, model_name


def run(
    layout: Layout,
    model: str,
    sort_column: str,
    ascending: bool,
    layer: int | None,
    top: int,
    universal_only: bool,
    output_format: str,
    stats_dir: Path,
    wide: bool = False,
) -> str:
    """The listing of MODEL (``seed1``, ``1`` or a ``.parquet`` path) from ``stats_dir``; a
    table fitted to ``TERMINAL_WIDTH`` columns unless ``wide``."""
    name = model_name(model) if model.isdigit() else model
    table = read_neuron_table(find_table(model, stats_dir, name))
    listing = top_neurons(table, sort_column, layer, top, ascending, universal_only)
    width = None if wide else TERMINAL_WIDTH
    return format_listing(listing, output_format, width, sort_column)


COMMAND = Command(
    name="show",
    run=run,
    options=[
        click.argument("model"),
        click.option(
            "--sort",
            "sort_column",
            default="excess_corr",
            show_default=True,
            help="Column to sort by.",
        ),
        click.option(
            "--ascending", is_flag=True, help="Smallest values first (default: largest first)."
        ),
        click.option("--layer", type=int, default=None, help="Only neurons of this layer."),
        click.option(
            "--top", type=int, default=20, show_default=True, help="How many neurons to list."
        ),
        click.option("--universal-only", is_flag=True, help="Only neurons marked universal."),
        click.option(
            "--wide",
            is_flag=True,
            help=f"Every column however wide (default: fit {TERMINAL_WIDTH} columns).",
        ),
        click.option(
            "--format",
            "output_format",
            type=click.Choice(["table", "csv"]),
            default="table",
            show_default=True,
        ),
        click.option(
            "--stats-dir",
            type=click.Path(path_type=Path),
            default=Layout().stage_dir("stats"),
            show_default=True,
            help="Where the stats stage wrote the neuron tables.",
        ),
    ],
    needs_params=False,
)
