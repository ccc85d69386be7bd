"""The ``universal-neurons`` command: one subcommand per pipeline stage, plus tools.

``dvc.yaml`` calls these subcommands; each loads ``params.yaml`` once and hands the
typed sections to the stage. Errors in parameters or inputs end with a one-line
message naming the parameter or file, and a non-zero exit status.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import click

from universal_neurons.config import DEFAULT_PARAMS_PATH, Params, load_params

params_option = click.option(
    "--params",
    "params_path",
    type=click.Path(path_type=Path),
    default=DEFAULT_PARAMS_PATH,
    show_default=True,
    help="Parameter file.",
)


def _user_errors(func):
    """Turn the project's expected errors into a clean message and exit status 2."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except (ValueError, OSError, RuntimeError) as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)

    return wrapper


def _load(params_path: Path) -> Params:
    return load_params(params_path)


@click.group()
@click.version_option(package_name="universal-neurons")
def main() -> None:
    """Find universal neurons: MLP neurons that recur across models differing only in seed."""


@main.command()
@params_option
@_user_errors
def validate(params_path: Path) -> None:
    """Check the parameter file and print the resolved parameters."""
    params = _load(params_path)
    click.echo(json.dumps(params.model_dump(), indent=2))


@main.command()
@params_option
@_user_errors
def tokenize(params_path: Path) -> None:
    """Stage tokenize: corpus -> tokenizer and token array."""
    from stages import tokenize as stage

    summary = stage.run(_load(params_path))
    click.echo(json.dumps(summary["corpus"], indent=2))


@main.command()
@params_option
@click.option("--seed", type=int, required=True, help="Which seed of train.seeds to train.")
@_user_errors
def train(params_path: Path, seed: int) -> None:
    """Stage train: train the model of one seed."""
    from stages import train as stage

    report = stage.run(_load(params_path), seed)
    click.echo(json.dumps(report, indent=2))


# --- report, log (MLflow) and ui: the researcher's view of a run (issue 7) -------------------


@main.command()
@params_option
@_user_errors
def report(params_path: Path) -> None:
    """Stage report: metrics, tables and curves -> report/index.html + figures."""
    from stages import report as stage

    result = stage.run(_load(params_path))
    click.echo(json.dumps({"sections": result["sections"], "figures": result["figures"]}, indent=2))


@main.command()
@params_option
@_user_errors
def log(params_path: Path) -> None:
    """Stage log: the pipeline state -> one MLflow run (MLFLOW_TRACKING_URI or ./mlruns.db)."""
    from stages import log as stage

    click.echo(json.dumps(stage.run(params_path), indent=2))


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=5000, show_default=True, type=int, help="Port to listen on.")
@_user_errors
def ui(host: str, port: int) -> None:
    """Start the MLflow UI on the project's store and print its address."""
    from universal_neurons.tracking import serve_ui

    serve_ui(host, port, echo=lambda line: click.echo(line, err=False))


if __name__ == "__main__":
    main()
