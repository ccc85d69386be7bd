"""Running a command: parameters, layout, errors and output, shared by every entry point.

A stage file (``stages/<name>.py``, run by ``dvc.yaml`` as ``python stages/<name>.py``) ends
with ``stage_main(COMMAND)``; the ``universal-neurons`` tools are run by ``pipeline/cli.py``.
Both go through ``run_command``: it loads the parameter file once (``--params``) and hands the
typed parameters and the project's ``Layout`` to the command's ``run``. A user's mistake
(``errors.UserError``: a bad parameter, option or input) ends with ``error: <message>`` on
stderr and exit status 2; any other exception is a bug or a failure of the environment and
keeps its traceback.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
from pathlib import Path
from typing import Any

import click

from universal_neurons.config import DEFAULT_PARAMS_PATH, load_params
from universal_neurons.errors import UserError
from universal_neurons.io import Terminated, exit_on_sigterm
from universal_neurons.pipeline.command import Command, Stage
from universal_neurons.pipeline.layout import Layout

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


def _exit_with(error: UserError) -> None:
    """``error: <message>`` on stderr, exit status 2."""
    _close_progress_bars()
    click.echo(f"error: {error}", err=True)
    sys.exit(2)


def run_command(declared: Command, params_path: Path | None, options: dict[str, Any]) -> Any:
    """Run ``declared`` in the project's layout; a ``UserError`` becomes one line and exit 2,
    SIGTERM one line and exit 143 (after every temporary output was removed)."""
    exit_on_sigterm()
    try:
        if not declared.needs_params:
            return declared.run(Layout(), **options)
        # A parameter file elsewhere (``--params pipelines/gpt2-small/params.yaml``) is a
        # pipeline of its own: its paths are relative to its folder, where DVC runs its stages.
        params_path = Path(params_path or DEFAULT_PARAMS_PATH)
        layout = Layout.at(params_path.parent, params=params_path)
        return declared.run(load_params(layout.params), layout, **options)
    except UserError as exc:
        _exit_with(exc)
    except Terminated as exc:
        _close_progress_bars()
        click.echo(
            f"error: {declared.name} stopped by SIGTERM; unfinished outputs were not written",
            err=True,
        )
        sys.exit(exc.code)


def click_command(declared: Command) -> click.Command:
    """The click command of a declaration: its options, ``--params``, and its output."""

    def callback(params_path: Path | None = None, **options: Any) -> None:
        text = declared.render(run_command(declared, params_path, options))
        if text is not None:
            click.echo(text, nl=not text.endswith("\n"))

    options = list(declared.options)
    if isinstance(declared, Stage) and declared.per_seed:
        options.insert(0, click.option("--seed", type=int, required=True, help=declared.seed_help))
    for decorator in reversed(options):
        callback = decorator(callback)
    if declared.needs_params:
        callback = params_option(callback)
    return click.command(declared.name, help=declared.help)(callback)


def stage_main(declared: Stage, doc: str | None, args: list[str] | None = None) -> None:
    """The command line of a stage file: ``python stages/<name>.py [--seed S] [--params FILE]``;
    ``doc``: its ``--help`` (the file's docstring); ``args``: default ``sys.argv[1:]``."""
    if not declared.help and doc:
        declared = dataclasses.replace(declared, help=inspect.cleandoc(doc))
    click_command(declared).main(args=args, prog_name=f"stages/{declared.name}.py")
