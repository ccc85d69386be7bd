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


def _close_progress_bars() -> None:
    """End open tqdm bars so that an error message starts on a line of its own."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def _user_errors(func):
    """Turn the project's expected errors into a clean message and exit status 2."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except (ValueError, OSError, RuntimeError) as exc:
            _close_progress_bars()
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
@click.option(
    "--seed",
    "seeds",
    type=int,
    multiple=True,
    help="Train only this seed of train.seeds (repeatable; default: every seed).",
)
@_user_errors
def train(params_path: Path, seeds: tuple[int, ...]) -> None:
    """Stage train: train the model of every seed (in parallel processes, train.workers)."""
    from stages import train as stage

    reports = stage.run(_load(params_path), list(seeds) or None)
    click.echo(json.dumps(reports, indent=2))


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


@main.command()
@params_option
@_user_errors
def emergence(params_path: Path) -> None:
    """Stage emergence: the percentage of universal neurons at every training checkpoint."""
    from stages import emergence as stage

    rows = stage.run(_load(params_path))
    for row in rows:
        click.echo(
            f"{row['tokens']:>12,} tokens: {row['mean_percent_universal']:6.2f} % universal, "
            f"median corr {row['median_corr']:.3f}, median baseline {row['median_baseline']:.3f}, "
            f"held-out loss {row['mean_heldout_loss']:.3f}"
        )


# --- neuron statistics (issue 5): stage `stats`, tools `show` and `findings` ---


@main.command()
@params_option
@_user_errors
def stats(params_path: Path) -> None:
    """Stage stats: the neuron table of every model and universal vs other neurons."""
    from stages import stats as stage

    params = _load(params_path)
    trained = params.group.preset == "trained"  # only a trained group has checkpoints
    comparison = stage.run(params, emergence_path=stage.EMERGENCE_NEURONS if trained else None)
    click.echo(
        f"wrote {stage.STATS_DIR} and {stage.STATS_METRICS} ({len(comparison['models'])} models)"
    )


@main.command()
@click.argument("model")
@click.option(
    "--sort", "sort_column", default="excess_corr", show_default=True, help="Column to sort by."
)
@click.option("--ascending", is_flag=True, help="Smallest values first (default: largest first).")
@click.option("--layer", type=int, default=None, help="Only neurons of this layer.")
@click.option("--top", type=int, default=20, show_default=True, help="How many neurons to list.")
@click.option("--universal-only", is_flag=True, help="Only neurons marked universal.")
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["table", "csv"]),
    default="table",
    show_default=True,
)
@click.option(
    "--stats-dir",
    type=click.Path(path_type=Path),
    default=Path("data/stats"),
    show_default=True,
    help="Where the stats stage wrote the neuron tables.",
)
@_user_errors
def show(
    model: str,
    sort_column: str,
    ascending: bool,
    layer: int | None,
    top: int,
    universal_only: bool,
    output_format: str,
    stats_dir: Path,
) -> None:
    """List the most universal neurons of MODEL (seed1, 1, or a .parquet path) with key statistics."""
    import pandas as pd

    from universal_neurons.statistics import table_path, top_neurons

    table = pd.read_parquet(table_path(model, stats_dir))
    listing = top_neurons(table, sort_column, layer, top, ascending, universal_only)
    if output_format == "csv":
        click.echo(listing.to_csv(index=False), nl=False)
    else:
        click.echo(listing.to_string(index=False, float_format=lambda v: f"{v:.4g}"))


@main.command()
@params_option
@click.option(
    "--metrics",
    "metrics_path",
    type=click.Path(path_type=Path),
    default=Path("metrics/stats.json"),
    show_default=True,
)
@_user_errors
def findings(params_path: Path, metrics_path: Path) -> None:
    """Print which of the paper's findings on universal neurons hold (for the README)."""
    from universal_neurons.io import read_json
    from universal_neurons.statistics import findings_verdict

    click.echo(findings_verdict(read_json(metrics_path), _load(params_path).stats.alpha))


# --- neuron families (issue 6) ---------------------------------------------------------


@main.command()
@params_option
@_user_errors
def syntax(params_path: Path) -> None:
    """Stage syntax: spaCy part of speech / dependency label of every analysis position."""
    from stages import syntax as stage

    summary = stage.run(_load(params_path))
    click.echo(json.dumps(summary, indent=2))


@main.command()
@params_option
@_user_errors
def classify(params_path: Path) -> None:
    """Stage classify: family of each universal neuron (variance reduction of features)."""
    from stages import classify as stage

    metrics = stage.run(_load(params_path))
    summary = {
        model: {k: entry[k] for k in ("n_universal", "n_explained", "percent_explained", "counts")}
        for model, entry in metrics["models"].items()
    }
    click.echo(json.dumps(summary, indent=2))


@main.command()
@params_option
@click.argument("model")
@click.argument("neuron")
@click.option(
    "--tokens-dir", type=click.Path(path_type=Path), default=Path("data/tokens"), show_default=True
)
@click.option(
    "--models-dir", type=click.Path(path_type=Path), default=Path("models"), show_default=True
)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=Path("data"),
    show_default=True,
    help="Holds stats/, universality/, families/ and syntax/.",
)
@click.option(
    "--top", type=click.IntRange(1, 100), default=8, show_default=True, help="Contexts shown."
)
@click.option(
    "--before", type=click.IntRange(0), default=12, show_default=True, help="Tokens before."
)
@click.option("--after", type=click.IntRange(0), default=4, show_default=True, help="Tokens after.")
@click.option(
    "--max-sequences",
    type=click.IntRange(0),
    default=None,
    help="Search only the first N sequences (default: analysis.max_sequences).",
)
@_user_errors
def neuron(
    params_path: Path,
    model: str,
    neuron: str,
    tokens_dir: Path,
    models_dir: Path,
    data_dir: Path,
    top: int,
    before: int,
    after: int,
    max_sequences: int | None,
) -> None:
    """Show one neuron: MODEL (seed1, or a model directory) and LAYER.INDEX (e.g. 0.17).

    Its statistics, universality and family (from the pipeline's tables, or computed
    now), top features with their variance reduction, and its top-activating contexts
    in the analysis token set with the token highlighted.
    """
    from universal_neurons.neuron_report import neuron_report

    lines = neuron_report(
        _load(params_path),
        model,
        neuron,
        tokens_dir,
        models_dir,
        data_dir,
        top=top,
        before=before,
        after=after,
        max_sequences=max_sequences,
    )
    click.echo("\n".join(lines))


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
@click.option(
    "--if-missing",
    is_flag=True,
    help="Only log if this store lacks the run named in tracking/run.json (e.g. a fresh clone).",
)
def log(params_path: Path, if_missing: bool) -> None:
    """Stage log: the pipeline state -> one MLflow run (MLFLOW_TRACKING_URI or ./mlruns.db)."""
    from stages import log as stage

    record = stage.ensure(params_path) if if_missing else stage.run(params_path)
    click.echo(json.dumps(record, indent=2))


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


# --- issue 8: pretrained groups (pipelines/<preset>/dvc.yaml) --------------------------------


@main.command()
@params_option
@click.option("--seed", type=int, required=True, help="Member number of the group (1-based).")
@_user_errors
def fetch(params_path: Path, seed: int) -> None:
    """Stage fetch: member SEED of params.group (a preset or custom group) -> models/seed{SEED}."""
    from stages import fetch as stage

    click.echo(json.dumps(stage.run(_load(params_path), seed), indent=2))
