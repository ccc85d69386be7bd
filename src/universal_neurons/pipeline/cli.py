"""The ``universal-neurons`` command line: the tools, built from the registry of commands.

The pipeline's stages are files of their own (``stages/<name>.py`` at the repository root, run
by ``dvc.yaml``); this command holds the tools that read what they wrote (``show``,
``neuron``, ``findings``, ``plan``, ``exps``, ``ui``, ``log`` ...). Each is run by
``runner.run_command``: a user's mistake ends with ``error: <message>`` and exit status 2.
"""

from __future__ import annotations

import click

from universal_neurons.pipeline.registry import command, command_modules, command_names
from universal_neurons.pipeline.runner import click_command


class RegistryGroup(click.Group):
    """A click group whose commands come from the registry, imported only when used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Every registered command name."""
        return command_names()

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """The click command ``cmd_name`` (imports its module), or None if there is none."""
        if cmd_name not in command_modules():
            return None
        return click_command(command(cmd_name))


@click.group(cls=RegistryGroup)
@click.version_option(package_name="universal-neurons")
def main() -> None:
    """Find universal neurons: MLP neurons that recur across models differing only in seed."""
