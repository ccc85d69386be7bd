"""Start the MLflow UI on the project's store and print the address of its runs table (headline columns)."""

from __future__ import annotations

import click

from universal_neurons.outputs.text_table import TERMINAL_WIDTH, wrapped_line
from universal_neurons.outputs.tracking import project_root, serve_ui
from universal_neurons.pipeline.command import Command
from universal_neurons.pipeline.layout import Layout


def fitted(line: str) -> str:
    """A line of the UI's start-up message within 120 columns: broken where it has two spaces
    (after the address), then between words; never inside the address, which stays one piece
    to click or copy."""
    parts = wrapped_line(line, TERMINAL_WIDTH, "  ")  # first where the message puts two spaces
    return "\n".join(piece for part in parts for piece in wrapped_line(part, TERMINAL_WIDTH))


def run(layout: Layout, host: str, port: int) -> None:
    """Serve the UI until interrupted; its address is printed first."""
    serve_ui(host, port, echo=lambda line: click.echo(fitted(line)), root=project_root(layout.root))


COMMAND = Command(
    name="ui",
    run=run,
    options=[
        click.option(
            "--host", default="127.0.0.1", show_default=True, help="Address to listen on."
        ),
        click.option(
            "--port", default=5000, show_default=True, type=int, help="Port to listen on."
        ),
    ],
    needs_params=False,
)
