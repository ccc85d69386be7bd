"""The command line built from the registry: every command answers --help, a user's mistake
is one line on stderr (exit status 2), anything else keeps its traceback."""

from __future__ import annotations

import importlib
import inspect
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner
from conftest import REPO_ROOT, command_argv

from stages import all_stages, stage_names
from universal_neurons.errors import UserError
from universal_neurons.pipeline import cli
from universal_neurons.pipeline.command import Command
from universal_neurons.pipeline.registry import command_names

COMMANDS = command_names()
STAGES = stage_names()


def test_the_tools_and_the_stage_files():
    assert set(COMMANDS) == {"show", "findings", "neuron", "ui", "exps", "plan", "log", "metrics"}
    assert {stage.name for stage in all_stages()} == set(STAGES)
    assert set(STAGES) >= {"validate", "tokenize", "train", "correlate", "log", "report"}


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_help(name):
    result = CliRunner().invoke(cli.main, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert f"Usage: main {name}" in result.output


@pytest.mark.slow
@pytest.mark.parametrize("name", COMMANDS)
def test_python_m_universal_neurons_help(name):
    done = subprocess.run(
        [sys.executable, "-m", "universal_neurons", name, "--help"],
        capture_output=True,
        text=True,
        env=os.environ | {"PYTHONPATH": str(REPO_ROOT / "src")},
    )
    assert done.returncode == 0, done.stderr
    assert f"Usage: python -m universal_neurons {name}" in done.stdout


@pytest.mark.slow
@pytest.mark.parametrize("name", STAGES)
def test_every_stage_file_runs_as_dvc_runs_it_and_has_help(name):
    """``python -P stages/<name>.py --help`` in a real process: the file's docstring is its help
    (``tokenize.py`` does not hide the standard library's ``tokenize``: ``-P``)."""
    done = subprocess.run(
        command_argv(name, "--help"),
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=os.environ | {"PYTHONPATH": str(REPO_ROOT / "src")},
    )
    assert done.returncode == 0, done.stderr
    assert f"Usage: stages/{name}.py [OPTIONS]" in done.stdout
    first_line = inspect.cleandoc(importlib.import_module(f"stages.{name}").__doc__).split("\n")[0]
    assert first_line.split(":")[0] in " ".join(done.stdout.split())


def _fails_with(error: Exception):
    def run(layout):
        raise error

    return Command(name="show", help="x", run=run, needs_params=False)


def test_a_user_error_is_one_line_and_status_2(monkeypatch):
    monkeypatch.setattr(cli, "command", lambda name: _fails_with(UserError("train.seeds: bad")))
    result = CliRunner().invoke(cli.main, ["show"])
    assert result.exit_code == 2
    assert result.stderr == "error: train.seeds: bad\n"
    assert result.stdout == ""


def test_another_error_keeps_its_traceback(monkeypatch):
    monkeypatch.setattr(
        cli, "command", lambda name: _fails_with(RuntimeError("CUDA out of memory"))
    )
    result = CliRunner().invoke(cli.main, ["show"])
    assert isinstance(result.exception, RuntimeError)  # not turned into a one-line message
    assert "error:" not in result.stderr


def test_another_error_prints_a_traceback_in_a_real_process():
    script = (
        "from universal_neurons.pipeline import cli\n"
        "from universal_neurons.pipeline.command import Command\n"
        "def run(layout):\n"
        "    raise RuntimeError('CUDA out of memory')\n"
        "cli.command = lambda name: Command(name='show', run=run, needs_params=False)\n"
        "cli.main(['show'])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=os.environ | {"PYTHONPATH": str(REPO_ROOT / "src")},
    )
    assert done.returncode == 1
    assert "Traceback (most recent call last)" in done.stderr
    assert done.stderr.rstrip().endswith("RuntimeError: CUDA out of memory")
