"""Atomic outputs: everything a stage writes appears whole or not at all.

A stage writes into a temporary sibling of its output and renames it into place
only when it has finished, so a killed run leaves the previous output intact.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np


class OutputError(OSError):
    """An output location that cannot be written."""


def _check_writable(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    if not os.access(directory, os.W_OK):
        raise OutputError(f"{directory}: output directory is not writable")


@contextlib.contextmanager
def atomic_path(target: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` on success.

    Works for a file or a directory written at the yielded path. On an exception the
    temporary path is removed and ``target`` is left as it was.
    """
    target = Path(target)
    _check_writable(target.parent)
    temp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    work = temp / (target.name + suffix)
    try:
        yield work
        if not work.exists():
            raise OutputError(f"{target}: nothing was written")
        old = None
        if target.exists() or target.is_symlink():
            old = temp / ".old"
            os.replace(target, old)
        os.replace(work, target)
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented, key-sorted JSON, atomically."""
    with atomic_path(path) as temp:
        temp.write_text(json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n")


def write_npy(path: str | Path, array: np.ndarray) -> None:
    """Write one array as ``.npy``, atomically."""
    with atomic_path(path) as temp, temp.open("wb") as handle:
        np.save(handle, array, allow_pickle=False)


def read_json(path: str | Path) -> Any:
    """Read a JSON file, naming the file when it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found (run the stage that writes it)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
