"""The registry: every command of ``universal-neurons``, found by module name.

Each module of ``pipeline/tools`` (commands that write nothing DVC tracks, except ``log``,
which is also the last stage) declares one command as its ``COMMAND``; the command's name is
the module's name and its ``--help`` the module's docstring. Writing such a module is all it
takes to add a command: the registry lists it without importing it, and imports it only when
it runs, so ``universal-neurons <command>`` loads the libraries of that command alone. The
pipeline's stages are not here: they are the files of ``stages/`` at the repository root.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
from functools import cache

from universal_neurons.pipeline import tools
from universal_neurons.pipeline.command import Command

PACKAGES = (tools,)


@cache
def command_modules() -> dict[str, str]:
    """``{command name: module}`` of every command, without importing any of them."""
    found: dict[str, str] = {}
    for package in PACKAGES:
        for module in pkgutil.iter_modules(package.__path__):
            if module.name in found:
                raise RuntimeError(f"two commands are named {module.name!r}")
            found[module.name] = f"{package.__name__}.{module.name}"
    return found


def command_names() -> list[str]:
    """Every command name, sorted."""
    return sorted(command_modules())


def command(name: str) -> Command:
    """The declaration of the command ``name`` (imports its module); its help is the
    module's docstring."""
    module = importlib.import_module(command_modules()[name])
    declared = module.COMMAND
    if declared.name != name:
        raise RuntimeError(f"{module.__name__} declares {declared.name!r}, expected {name!r}")
    return dataclasses.replace(declared, help=declared.help or inspect.cleandoc(module.__doc__))
