"""Files: atomic outputs (everything a stage writes appears whole or not at all), and reading
JSON and parquet inputs with messages that name the file.

A stage writes into a temporary sibling of its output and renames it into place
only when it has finished, so a killed run leaves the previous output intact.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import resource
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from universal_neurons.errors import MissingInputError, UserError, shown


class OutputError(UserError, OSError):
    """An output location that cannot be written."""


class Terminated(SystemExit):
    """SIGTERM arrived: unwinds like SIGINT (every ``atomic_path`` removes its temporary
    path, previous outputs stay), then the process exits with status 143."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated(128 + signum)


def exit_on_sigterm() -> None:
    """Handle SIGTERM like SIGINT in this process: raise ``Terminated`` where it runs."""
    signal.signal(signal.SIGTERM, _raise_terminated)


def _check_writable(target: Path) -> list[Path]:
    """Create ``target``'s parent directories; stop with a message naming what is in the way.
    Returns the directories it created (deepest first), for ``_remove_created``."""
    directory = target.parent
    created = [d for d in [directory, *directory.parents] if not d.exists()]
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
    return created


def _remove_created(directories: list[Path]) -> None:
    """Remove the (still empty) directories a failed write created, deepest first."""
    for directory in directories:
        with contextlib.suppress(OSError):
            directory.rmdir()


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


_FULL_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}
_FULL_TEXTS = (
    "No space left",
    "File too large",
    "Disk quota",
    "requested and",
    "code: 27,",
    "code: 28,",
)


def _disk_full(exc: BaseException) -> bool:
    """True for a write that failed because the disk is full or a file size limit was hit
    (Python, numpy, pyarrow and safetensors each say so in their own words)."""
    if isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS:
        return True
    return any(text in str(exc) for text in _FULL_TEXTS)


def _failed_file(work: Path, exc: BaseException) -> Path:
    """The file a failed write was writing: the exception's file name, else the file under
    ``work`` that reached the file size limit (``ulimit -f``), else the one written last."""
    name = getattr(exc, "filename", None)
    if name:
        return Path(name)
    files = [work] if work.is_file() else [p for p in work.rglob("*") if p.is_file()]
    if not files:
        return work
    limit, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    full = [p for p in files if limit != resource.RLIM_INFINITY and p.stat().st_size >= limit]
    return max(full or files, key=lambda p: p.stat().st_mtime_ns)


def _disk_full_message(target: Path, work: Path, exc: BaseException) -> str:
    """One line: the output file that could not be written, why, and what to do."""
    failed = _failed_file(work, exc)
    try:
        shown = target / failed.relative_to(work) if failed != work else target
    except ValueError:
        shown = failed
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    reason = " ".join(reason.split())[:160]
    return (
        f"{shown}: could not be written ({reason}): the disk is full or a file size limit "
        "(ulimit -f) was reached; free space and rerun (the previous output is unchanged)"
    )


class _Staged:
    """One output being written: its temporary folder beside ``target`` and the path
    (``work``) the stage writes; ``state`` says how it was put in place (for ``undo``)."""

    def __init__(self, target: str | Path, suffix: str = "") -> None:
        self.target = Path(target)
        if self.target.is_symlink():
            raise OutputError(
                f"{self.target}: a symbolic link (to {os.readlink(self.target)}); a stage "
                "replaces its output whole, which would replace the link instead of writing "
                f"where it points: remove the link (a DVC output is a folder or file of its own)"
            )
        self.created = _check_writable(self.target)
        _clean_stale(self.target)
        self.temp = Path(
            tempfile.mkdtemp(
                prefix=f"{_temp_prefix(self.target)}{os.getpid()}.",
                suffix=".tmp",
                dir=self.target.parent,
            )
        )
        self.work = self.temp / (self.target.name + suffix)
        self.state = ""

    def check(self) -> None:
        """Stop unless something was written and ``target``'s folder can still take it."""
        if not (self.work.exists() or self.work.is_symlink()):
            raise OutputError(f"{self.target}: nothing was written")
        if not os.access(self.target.parent, os.W_OK):
            raise OutputError(
                f"{self.target}: output directory {self.target.parent} is not writable"
            )

    def commit(self) -> None:
        """Put the new output in place (one atomic exchange where the old one exists)."""
        if not (self.target.exists() or self.target.is_symlink()):
            os.replace(self.work, self.target)
            self.state = "new"
        elif _exchange(self.work, self.target):
            self.state = "exchanged"
        else:
            os.replace(self.target, self.temp / ".old")  # a kill here is repaired by _clean_stale
            self.state = "moved"
            os.replace(self.work, self.target)
            self.state = "replaced"

    def undo(self) -> None:
        """Put the previous output back (after a later output of the stage failed)."""
        if self.state in ("new", "replaced"):
            os.replace(self.target, self.work)
        if self.state == "exchanged":
            _exchange(self.work, self.target)
        if self.state in ("moved", "replaced"):
            os.replace(self.temp / ".old", self.target)
        self.state = ""

    def discard(self) -> None:
        """Remove the temporary folder (and the folders made for a target never written)."""
        shutil.rmtree(self.temp, ignore_errors=True)
        if not self.state:
            _remove_created(self.created)


def _failed_output(staged: list[_Staged], exc: BaseException) -> _Staged:
    """The output a failed write was writing: the one holding the exception's file, else the
    one begun last."""
    name = getattr(exc, "filename", None)
    for output in staged:
        if name and _inside(os.path.abspath(name), str(output.temp.resolve())):
            return output
    return staged[-1]


def _commit_all(staged: list[_Staged]) -> None:
    """Put every output in place, or none: on a failure the ones already placed are put
    back, in reverse order, and the failure is named."""
    for output in staged:
        output.check()
    done: list[_Staged] = []
    try:
        for output in staged:
            output.commit()
            done.append(output)
    except OSError as exc:
        failed = output
        for placed in reversed([*done, failed]):
            placed.undo()
        raise OutputError(
            f"{failed.target}: could not be put in place ({exc.strerror or exc}); every "
            "output of this stage is left as it was"
        ) from None


class StageOutputs:
    """The outputs of one stage, written together (``atomic_outputs``)."""

    def __init__(self) -> None:
        self.staged: list[_Staged] = []

    def path(self, target: str | Path, suffix: str = "") -> Path:
        """A temporary path to write ``target`` at; it takes ``target``'s place with the
        stage's other outputs, when all of them were written."""
        self.staged.append(_Staged(target, suffix))
        return self.staged[-1].work

    def write_json(self, target: str | Path, data: Any) -> None:
        """``target`` as indented, key-sorted JSON (``write_json``), placed with the others."""
        self.path(target).write_text(_json_text(data))


@contextlib.contextmanager
def atomic_outputs() -> Iterator[StageOutputs]:
    """Write several outputs of a stage so that they change together or not at all.

    Every output is written at a temporary path beside it (``StageOutputs.path``); an output
    location that cannot be written stops the stage when its path is asked for, before any
    output was replaced. When the block ends, every location is checked once more and the
    outputs are put in place one by one (each an atomic exchange); if one of them fails, those
    already placed are put back. On an exception every temporary path is removed and every
    previous output is left as it was.
    """
    outputs = StageOutputs()
    try:
        try:
            yield outputs
        except BaseException as exc:
            if isinstance(exc, Exception) and _disk_full(exc) and outputs.staged:
                failed = _failed_output(outputs.staged, exc)
                raise OutputError(_disk_full_message(failed.target, failed.work, exc)) from None
            raise
        _commit_all(outputs.staged)
    finally:
        for output in reversed(outputs.staged):
            output.discard()


@contextlib.contextmanager
def atomic_path(target: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` on success.

    Works for a file or a directory written at the yielded path. On an exception the
    temporary path is removed and ``target`` is left as it was. An existing ``target`` is
    swapped with the new one in a single atomic ``renameat2(RENAME_EXCHANGE)`` (Linux), so
    at every instant ``target`` is either the whole old or the whole new output; temporary
    paths left by a killed run (``.{name}.{pid}.*.tmp``) are removed by the next write.
    """
    with atomic_outputs() as outputs:
        yield outputs.path(target, suffix)


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_not_output(source: str | Path, output: str | Path, key: str) -> None:
    """Stop when the input ``source`` (named by ``key``) is the output ``output`` a stage is
    about to replace, or lies inside it or around it: the write would delete the input."""
    if not Path(source).expanduser().exists():
        return
    real_source = os.path.realpath(Path(source).expanduser())
    real_output = os.path.realpath(output)
    if _inside(real_source, real_output) or _inside(real_output, real_source):
        raise UserError(
            f"{key}: {source} is (or holds) {output}, which this stage replaces: it would "
            "delete its own input; copy the input elsewhere and point at the copy"
        )


def _json_text(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n"


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented, key-sorted JSON, atomically."""
    with atomic_path(path) as temp:
        temp.write_text(_json_text(data))


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


def read_npy(path: str | Path, stage: str):
    """Read a ``.npy`` array written by ``stage``, naming the file when it is missing,
    truncated or not an array."""
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path}: file not found (run the {stage} stage first)")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        reason = " ".join(str(exc).split())[:160]
        raise UserError(
            f"{path}: not a readable .npy array ({reason}); rerun the {stage} stage "
            "or restore it with `dvc checkout`"
        ) from None


# ----------------------------------------------------------------------------- YAML documents

MAX_YAML_BYTES = 2**20
"""Largest YAML document read (the project's parameter file is a few KiB)."""
MAX_YAML_VALUES = 100_000
"""Most values (after anchors and aliases are expanded) a YAML document may hold."""


def _yaml_where(exc: yaml.YAMLError) -> str:
    """`` at line L, column C: problem (context)`` of a YAML error, in one line."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    if mark is None or problem is None:
        return f": {exc}"
    where = f" at line {mark.line + 1}, column {mark.column + 1}: {problem}"
    context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if context and context_mark is not None:
        return f"{where} ({context} started at line {context_mark.line + 1}, column {context_mark.column + 1})"
    return f"{where} ({context})" if context else where


def _children(node: yaml.Node) -> list[yaml.Node]:
    """The nodes directly under ``node`` (keys and values of a mapping)."""
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return list(node.value) if isinstance(node, yaml.SequenceNode) else []


def _expanded_size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """How many values ``node`` stands for once every alias is expanded (memoised per node,
    so a billion-laughs document is measured without expanding it)."""
    stack = [(node, False)]
    while stack:
        current, done = stack.pop()
        if id(current) in sizes:
            continue
        children = _children(current)
        if done:
            sizes[id(current)] = min(1 + sum(sizes[id(c)] for c in children), MAX_YAML_VALUES + 1)
        else:
            stack.append((current, True))
            stack.extend((child, False) for child in children if id(child) not in sizes)
    return sizes[id(node)]


def _check_duplicates(node: yaml.Node, path: str, path_of: str, seen: set[int]) -> None:
    """Stop at the first key given twice in one mapping, naming it and both lines."""
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        lines: dict[Any, int] = {}
        for key, value in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else None
            line = key.start_mark.line + 1
            if name is not None and name in lines:
                full = f"{path}.{name}" if path else name
                raise UserError(
                    f"{path_of}: key {shown(full)[1:-1]} is given twice, at line {lines[name]} "
                    f"and line {line}; keep one"
                )
            if name is not None:
                lines[name] = line
            _check_duplicates(value, f"{path}.{name}" if path else str(name), path_of, seen)
    for child in _children(node) if isinstance(node, yaml.SequenceNode) else []:
        _check_duplicates(child, path, path_of, seen)


def _parse_yaml(text: str, path: Path) -> Any:
    """The document of ``text``, refused when a key repeats or aliases expand beyond
    ``MAX_YAML_VALUES`` values (checked on the node graph, before anything is built)."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_duplicates(node, "", str(path), set())
        size = _expanded_size(node, {})
        if size > MAX_YAML_VALUES:
            raise UserError(
                f"{path}: holds more than {MAX_YAML_VALUES:,} values once its anchors and "
                "aliases are expanded; a parameter file is a few hundred"
            )
        return loader.construct_document(node)
    except RecursionError:
        raise UserError(f"{path}: nested too deeply to be a parameter file") from None
    finally:
        loader.dispose()


def _read_text(path: Path, what: str) -> str:
    """The text of ``what`` (``parameter file``): an existing regular file of UTF-8 text, at
    most ``MAX_YAML_BYTES``."""
    if path.is_dir():
        raise UserError(f"{path}: is a directory, expected the {what} (YAML)")
    if path.exists() and not path.is_file():
        raise UserError(f"{path}: not a regular file, expected the {what} (YAML)")
    if not path.is_file():
        raise UserError(f"{path}: {what} not found")
    size = path.stat().st_size
    if size > MAX_YAML_BYTES:
        raise UserError(
            f"{path}: {size:,} bytes, more than the {MAX_YAML_BYTES:,} a {what} may have"
        )
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
            "save it as UTF-8"
        ) from None


def read_yaml_document(path: str | Path, what: str) -> Any:
    """The parsed YAML document at ``path`` (``what``: how messages name it), refused with one
    line when it is missing or no regular file, too large, not UTF-8, not YAML, gives a key
    twice, or expands its aliases beyond ``MAX_YAML_VALUES`` values."""
    path = Path(path)
    text = _read_text(path, what)
    try:
        return _parse_yaml(text, path)
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML{_yaml_where(exc)}") from None
