"""Files: atomic outputs (everything a stage writes appears whole or not at all), and reading
JSON and parquet inputs with messages that name the file.

A stage writes into a temporary sibling of its output and renames it into place
only when it has finished, so a killed run leaves the previous output intact.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from universal_neurons.errors import MissingInputError, UserError


class OutputError(UserError, OSError):
    """An output location that cannot be written."""


def _check_writable(target: Path) -> None:
    """Create ``target``'s parent directories; stop with a message naming what is in the way."""
    directory = target.parent
    for ancestor in [directory, *directory.parents]:
        if ancestor.exists() and not ancestor.is_dir():
            raise OutputError(
                f"{target}: cannot write the output, {ancestor} is a file, expected a directory"
            )
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(
            f"{target}: cannot create the output directory {directory} ({exc.strerror})"
        ) from None
    if not os.access(directory, os.W_OK):
        raise OutputError(f"{target}: output directory {directory} is not writable")


_libc = None


def _exchange(a: Path, b: Path) -> bool:
    """Swap ``a`` and ``b`` in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``).

    Returns False where the system or file system does not offer it.
    """
    global _libc
    if not sys.platform.startswith("linux"):
        return False
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = _libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    status = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return status == 0


def _temp_prefix(target: Path) -> str:
    return f".{target.name}."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _clean_stale(target: Path) -> None:
    """Remove what a killed earlier write of ``target`` left beside it.

    Temporary paths are named ``.{name}.{pid}.{random}.tmp``; one whose process is gone is
    stale. If a kill struck between the two renames of the fallback replace (no
    ``renameat2``), the previous output waits in ``{temp}/.old`` and is put back first.
    """
    pattern = re.compile(re.escape(_temp_prefix(target)) + r"(\d+)\.[^/]*\.tmp$")
    for temp in target.parent.glob(_temp_prefix(target) + "*.tmp"):
        match = pattern.match(temp.name)
        if not match or _pid_alive(int(match.group(1))):
            continue
        old = temp / ".old"
        if (old.exists() or old.is_symlink()) and not (target.exists() or target.is_symlink()):
            os.replace(old, target)
        shutil.rmtree(temp, ignore_errors=True)


@contextlib.contextmanager
def atomic_path(target: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` on success.

    Works for a file or a directory written at the yielded path. On an exception the
    temporary path is removed and ``target`` is left as it was. An existing ``target`` is
    swapped with the new one in a single atomic ``renameat2(RENAME_EXCHANGE)`` (Linux), so
    at every instant ``target`` is either the whole old or the whole new output; temporary
    paths left by a killed run (``.{name}.{pid}.*.tmp``) are removed by the next write.
    """
    target = Path(target)
    _check_writable(target)
    _clean_stale(target)
    temp = Path(
        tempfile.mkdtemp(
            prefix=f"{_temp_prefix(target)}{os.getpid()}.", suffix=".tmp", dir=target.parent
        )
    )
    work = temp / (target.name + suffix)
    try:
        yield work
        if not (work.exists() or work.is_symlink()):
            raise OutputError(f"{target}: nothing was written")
        if not (target.exists() or target.is_symlink()):
            os.replace(work, target)
        elif not _exchange(work, target):
            os.replace(target, temp / ".old")  # a kill here is repaired by _clean_stale
            os.replace(work, target)
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented, key-sorted JSON, atomically."""
    with atomic_path(path) as temp:
        temp.write_text(json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n")


def read_json(path: str | Path) -> Any:
    """Read a JSON file, naming the file when it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path}: file not found (run the stage that writes it)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None


def read_parquet(path: str | Path, stage: str):
    """Read a parquet table written by ``stage``, naming the file when it is missing or corrupt."""
    import pandas as pd
    import pyarrow as pa

    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path}: file not found (run the {stage} stage first)")
    try:
        return pd.read_parquet(path)
    except (pa.ArrowException, OSError, ValueError) as exc:
        reason = str(exc).replace(f"Could not open Parquet input source '{path}': ", "")
        raise UserError(
            f"{path}: not a readable parquet file ({reason}); rerun the {stage} stage "
            "or restore it with `dvc checkout`"
        ) from None
