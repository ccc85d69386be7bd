"""The declaration of a ``universal-neurons`` command, and of a pipeline stage.

A stage file (``stages/<name>.py`` at the repository root) declares one
``COMMAND = Stage(...)``: its parameter sections, the paths it reads and writes (through the
``Layout``), its ``run`` and what it prints, and ends with ``stage_main(COMMAND)``
(``pipeline/runner.py``), its command line. ``pipeline/wiring.py`` checks ``dvc.yaml``
against these declarations (tests/test_wiring.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from universal_neurons.pipeline.layout import SEED_ITEM, Layout

ALL_PARAMS = "*"
"""A stage that depends on every parameter (``params: [params.yaml:]`` in ``dvc.yaml``)."""


def as_json(result: Any) -> str:
    """A command's result as indented JSON."""
    return json.dumps(result, indent=2)


def as_output(result: Any) -> str | None:
    """The default output of a command: text as it is, nothing for None, else ``as_json``."""
    if result is None or isinstance(result, str):
        return result
    return as_json(result)


@dataclass(frozen=True, kw_only=True)
class Command:
    """One subcommand of ``universal-neurons``.

    ``run(params, layout, **options)`` does the work (``run(layout, **options)`` when
    ``needs_params`` is False: the command reads no parameter file); ``render(result)`` is
    the text printed on stdout (None: nothing); ``options``: click decorators
    (``click.option``/``click.argument``) whose values reach ``run`` as keyword arguments;
    ``help``: what ``--help`` says (the registry gives it the module's docstring).
    """

    name: str
    run: Callable[..., Any]
    help: str = ""
    render: Callable[[Any], str | None] = as_output
    options: Sequence[Callable] = ()
    needs_params: bool = True


@dataclass(frozen=True)
class Out:
    """An output of a stage as ``dvc.yaml`` declares it: under ``outs``, ``metrics`` or
    ``plots``, cached by DVC or not, pushed to remotes or not, kept between runs or not."""

    path: Path
    kind: Literal["outs", "metrics", "plots"] = "outs"
    cache: bool = True
    push: bool = True
    persist: bool = False


@dataclass(frozen=True, kw_only=True)
class Stage(Command):
    """A command that is a stage of ``dvc.yaml``.

    ``params``: the parameter sections or keys it reads (``dvc.yaml``'s ``params``;
    ``ALL_PARAMS``: every key of the parameter file); ``inputs(layout)`` / ``outputs(layout)``:
    the data it reads (default: none) and the ``Out`` it writes; ``trained_inputs(layout)``:
    data it reads only for the trained group (``group.preset: trained``), which the preset
    pipelines do not produce; ``scale_params``: parameters it reads only for a group above
    ``correlate.full_pairs_max_neurons``, which the preset pipelines (groups that large) list
    under ``params`` too and the default ``dvc.yaml`` does not. A ``per_seed`` stage runs once per seed of ``train.seeds``
    (``foreach`` in ``dvc.yaml``): its ``run``, ``inputs`` and ``outputs`` take the seed
    after the layout, and its command line gets a required ``--seed`` (help: ``seed_help``).
    Every stage but the validate stage itself (``validated=False``) also reads the validate
    stage's output (``Layout.params_check``), so that DVC checks the parameters first.
    """

    params: Sequence[str]
    outputs: Callable[..., Sequence[Out]]
    inputs: Callable[..., Sequence[Path]] = lambda layout, *seed: ()
    trained_inputs: Callable[[Layout], Sequence[Path]] = lambda layout: ()
    scale_params: Sequence[str] = ()
    per_seed: bool = False
    seed_help: str = "Which seed of train.seeds."
    validated: bool = True

    @property
    def cmd(self) -> str:
        """The command line ``dvc.yaml`` runs (from the repository root)."""
        return self.command_line("stages")

    def command_line(self, stages_dir: str) -> str:
        """The command line that runs this stage's file in ``stages_dir`` (``../../stages`` for a
        pipeline two folders down, as DVC runs it from that pipeline's folder). ``-P`` keeps the
        stages folder off the import path, where ``tokenize.py`` would hide the standard
        library's ``tokenize``."""
        seed = f" --seed {SEED_ITEM}" if self.per_seed else ""
        return f"python -P {stages_dir}/{self.name}.py{seed}"

    def declared_inputs(self, layout: Layout) -> list[Path]:
        """``inputs`` as ``dvc.yaml`` writes them (the seed of a per-seed stage: ``${item}``),
        after the validate stage's output."""
        first = [layout.params_check] if self.validated else []
        return first + list(
            self.inputs(layout, SEED_ITEM) if self.per_seed else self.inputs(layout)
        )

    def declared_outputs(self, layout: Layout) -> list[Out]:
        """``outputs`` as ``dvc.yaml`` writes them."""
        return list(self.outputs(layout, SEED_ITEM) if self.per_seed else self.outputs(layout))
