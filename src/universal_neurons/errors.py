"""The one error type for users' mistakes.

A ``UserError`` is raised by every check of what a user gives the pipeline: parameters,
command-line options, input files and their contents (token arrays, models, tables).
Its message names the parameter or file and says what was expected, in one line (a
parameter file with several bad keys lists them below the first line). The command line
prints it as ``error: <message>`` and exits with status 2; every other exception is a
bug or an environment failure and keeps its traceback.

Specific errors (``ConfigError``, ``TokensError``, ``ModelLoadError``, ...) subclass it,
and ``UserError`` is a ``ValueError``: a value the user supplied cannot be used.
"""

from __future__ import annotations

from typing import Any

MAX_SHOWN = 80
"""Longest value an error message echoes; longer ones are cut and their length given."""


def shown(value: Any) -> str:
    """``repr(value)``, cut to ``MAX_SHOWN`` characters (a huge value is never echoed whole)."""
    text = repr(value)
    if len(text) <= MAX_SHOWN:
        return text
    return f"{text[: MAX_SHOWN - 20]}... ({len(text):,} characters)"


class UserError(ValueError):
    """A parameter, option or input that cannot be used; the message says which and why."""


class MissingInputError(UserError, FileNotFoundError):
    """An input file or directory that does not exist (usually: an earlier stage has not run)."""
