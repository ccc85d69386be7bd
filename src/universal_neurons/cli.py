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


# --- collect / correlate / baseline / universality (issue 4) -------------------------------


@main.command()
@params_option
@click.option("--seed", type=int, required=True, help="Which seed of train.seeds to collect.")
@_user_errors
def collect(params_path: Path, seed: int) -> None:
    """Stage collect: per-neuron moments and within-layer covariance of one model."""
    from stages import collect as stage

    click.echo(json.dumps(stage.run(_load(params_path), seed), indent=2))


@main.command()
@params_option
@_user_errors
def correlate(params_path: Path) -> None:
    """Stage correlate: every pair's correlation statistics and per-neuron maxima."""
    from stages import correlate as stage

    summary = stage.run(_load(params_path))
    click.echo(json.dumps({k: summary[k] for k in ("pairs", "kept_positions", "dead")}, indent=2))


@main.command()
@params_option
@_user_errors
def baseline(params_path: Path) -> None:
    """Stage baseline: the random-rotation baseline, analytic from correlate's statistics."""
    from stages import baseline as stage

    click.echo(json.dumps(stage.run(_load(params_path))["models"], indent=2))


@main.command()
@params_option
@_user_errors
def universality(params_path: Path) -> None:
    """Stage universality: neuron tables and the percentage of universal neurons."""
    from stages import universality as stage

    click.echo(json.dumps(stage.run(_load(params_path)), indent=2))


if __name__ == "__main__":
    main()
