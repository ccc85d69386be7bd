"""What ``dvc.yaml`` must say about each stage: its command, parameters, outputs and deps.

``dvc.yaml`` is written and read by people; the stage declarations (``stages/<name>.py``) are
the truth it must agree with. For every stage: its ``cmd``; its ``outs``, ``metrics`` and
``plots`` (path, cache, push, persist); its ``params``; its data ``deps`` (the declared
inputs); and its code ``deps``, which must be exactly the stage file and the files of the
library it imports, directly or not. The imports are found with ``ast`` in every import
statement of every module reached, inside functions too; only imports under
``if TYPE_CHECKING:`` are left out (they never run). Package ``__init__.py`` files hold a
docstring only, so they are no dependency of anything.

Nothing here imports a stage file: the caller passes the declarations in
(``stages.all_stages()``), so the library stays usable without the repository.
"""

from __future__ import annotations

import ast
import functools
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import yaml

from universal_neurons.pipeline.command import ALL_PARAMS, Out, Stage
from universal_neurons.pipeline.layout import Layout

PACKAGE = "universal_neurons"
STAGES = "stages"
"""The stage files' package (``stages/`` beside ``src/``)."""
PRESET_ONLY = {"fetch"}
"""Stages of the preset pipelines alone (``fetch`` replaces ``train`` there)."""
COMMAND_LINE = ("pipeline", "runner.py")
"""The command line every stage file ends with (option parsing, loading ``params.yaml``, the
error line): not a code dep. It reaches a stage's results only through the parameter values,
which ``dvc.yaml`` tracks under ``params``; were it a dep, every edit of ``config.py`` would
retrain the group (the ``universal-neurons`` command line was no dep before stages/ either)."""


# --------------------------------------------------------------------------- imports


def _is_type_checking(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_statements(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every ``import`` / ``from ... import`` node, at any depth, outside ``if TYPE_CHECKING``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        children = list(ast.iter_child_nodes(node))
        if _is_type_checking(node):
            children = [child for child in children if child not in node.body]
        stack.extend(children)


def module_file(src: Path, module: str) -> Path | None:
    """The file of a module of the package under ``src``, or of a stage file (``stages.collect``:
    ``stages/`` beside ``src``, for a stage that runs others); None: another package, or none."""
    if module.startswith(STAGES + "."):
        base = src.parent.joinpath(*module.split("."))
        return base.with_suffix(".py") if base.with_suffix(".py").is_file() else None
    if module != PACKAGE and not module.startswith(PACKAGE + "."):
        return None
    base = src.joinpath(*module.split("."))
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return base / "__init__.py" if (base / "__init__.py").is_file() else None


def _package_of(path: Path, src: Path) -> str:
    """The dotted package of a file under ``src`` ('' for a file elsewhere, e.g. a stage)."""
    try:
        return ".".join(path.relative_to(src).with_suffix("").parts[:-1])
    except ValueError:
        return ""


def imported_modules(path: Path, src: Path) -> set[str]:
    """The package's modules that the file ``path`` imports (``from a import b``: ``a.b`` when
    that is a module, else ``a``)."""
    stamp = path.stat()
    return set(_parsed_imports(path, src, stamp.st_mtime_ns, stamp.st_size))


@functools.lru_cache(maxsize=4096)
def _parsed_imports(path: Path, src: Path, mtime_ns: int, size: int) -> frozenset[str]:
    """``imported_modules`` of one version of a file (its modification time and size are part
    of the key): each file is parsed once, however many stages and pipelines reach it."""
    package = _package_of(path, src)
    found = set()
    for node in _import_statements(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
            continue
        base = node.module or ""
        if node.level:
            parent = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join([*parent, base] if base else parent)
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            found.add(sub if module_file(src, sub) is not None else base)
    return frozenset(found)


def code_closure(path: Path, src: Path) -> set[Path]:
    """``path`` and every file of the package it imports, directly or not (no ``__init__.py``)."""
    seen: set[Path] = set()
    todo = [path]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        for module in imported_modules(current, src):
            found = module_file(src, module)
            if found is not None and found.name != "__init__.py" and not _is_command_line(found):
                todo.append(found)
    return seen


def _is_command_line(path: Path) -> bool:
    return path.parts[-len(COMMAND_LINE) :] == COMMAND_LINE


def relative(path: Path, base: Path) -> str:
    """``path`` relative to the folder ``base``, as ``dvc.yaml`` writes it."""
    return Path(os.path.relpath(path, base.resolve())).as_posix()


def code_deps(stage_file: Path, src: Path, base: Path) -> list[str]:
    """The code ``deps`` of the stage in ``stage_file``, relative to ``base``, sorted."""
    return sorted(relative(path.resolve(), base) for path in code_closure(stage_file, src))


# --------------------------------------------------------------------------- dvc.yaml


def _has_key(raw: object, dotted: str) -> bool:
    for part in dotted.split("."):
        if not isinstance(raw, dict) or part not in raw:
            return False
        raw = raw[part]
    return True


def missing_params(dvc_yaml: Path, raw_params: dict) -> list[tuple[str, str]]:
    """``(stage, key)`` for every parameter a stage of ``dvc_yaml`` lists under ``params``
    that the parameter file (``raw_params``, as read from YAML, before defaults) lacks: DVC
    would stop at that stage ("Parameters ... are missing"), after the stages before it ran."""
    stages = (yaml.safe_load(dvc_yaml.read_text(encoding="utf-8")) or {}).get("stages") or {}
    missing = []
    for name, entry in stages.items():
        for key in sorted(dvc_params(entry.get("do", entry)) - {ALL_PARAMS}):
            if not _has_key(raw_params, key):
                missing.append((name, key))
    return missing


def dvc_outs(entry: dict) -> dict[str, Out]:
    """``{path: Out}`` of a dvc.yaml stage's ``outs``, ``metrics`` and ``plots``."""
    outs = {}
    for kind in ("outs", "metrics", "plots"):
        for item in entry.get(kind) or []:
            path, flags = next(iter(item.items())) if isinstance(item, dict) else (item, {})
            flags = flags or {}
            outs[path] = Out(
                Path(path),
                kind,
                flags.get("cache", True),
                flags.get("push", True),
                flags.get("persist", False),
            )
    return outs


def dvc_params(entry: dict) -> set[str]:
    """The ``params`` of a dvc.yaml stage (``ALL_PARAMS`` for ``params.yaml:``)."""
    return {ALL_PARAMS if isinstance(item, dict) else item for item in entry.get("params") or []}


def _output_problems(name: str, written: dict[str, Out], declared: dict[str, Out]) -> list[str]:
    problems = []
    for path in sorted(set(written) | set(declared)):
        if path not in written:
            problems.append(f"{name}: lacks the output {path} ({declared[path]})")
        elif path not in declared:
            problems.append(f"{name}: lists {path}, which the stage does not declare")
        elif written[path] != declared[path]:
            problems.append(f"{name}: output {written[path]}, declared {declared[path]}")
    return problems


FULL_PAIRS_PARAMS = {
    "correlate": ("uncertainty.baseline_draws", "uncertainty.candidates", "uncertainty.seed"),
}
"""Parameters a stage reads only for a group of full pair statistics (at most
``correlate.full_pairs_max_neurons`` neurons per model): correlate then takes
uncertainty_resamples' candidate links (``matching.pair_reductions``). A preset pipeline of a
larger group leaves them out, so that changing them does not rerun its pass (an H100-hour for
GPT2-small); the wiring check accepts a preset with or without them."""


def preset_params(params: list, scale_params: Sequence[str], full_only: Sequence[str] = ()) -> list:
    """A stage's parameters in a preset pipeline, mostly of groups above
    ``correlate.full_pairs_max_neurons``: its ``params`` and its ``scale_params``, a key of a
    section listed whole there (``correlate.products`` under ``correlate``) left out, and the
    ``full_only`` keys (``FULL_PAIRS_PARAMS``, for a group above the threshold) left out."""
    scale = [key for key in scale_params if key not in params]
    covered = [
        key
        for key in params
        if isinstance(key, str) and any(key.startswith(section + ".") for section in scale)
    ]
    return [key for key in params if key not in covered and key not in full_only] + scale


def _command_and_params(name: str, body: dict, stage: Stage, stages_dir: str, preset: bool):
    problems = []
    if body.get("cmd") != stage.command_line(stages_dir):
        problems.append(
            f"{name}: cmd {body.get('cmd')!r}, expected {stage.command_line(stages_dir)!r}"
        )
    params = list(stage.params)
    full_only = FULL_PAIRS_PARAMS.get(name, ()) if preset else ()
    declared = set(preset_params(params, stage.scale_params, full_only) if preset else params)
    written = dvc_params(body)
    if declared - written:
        problems.append(f"{name}: params lack {sorted(declared - written)}")
    written -= set(full_only) if written >= set(full_only) else set()
    if written - declared:
        problems.append(f"{name}: params list {sorted(written - declared)}, not declared")
    return problems


def _code_problems(name: str, deps: list[Path], stage_file: Path, src: Path, base: Path):
    code = {(base / dep).resolve() for dep in deps if (base / dep).suffix == ".py"}
    closure = {file.resolve() for file in code_closure(stage_file, src)}
    problems = [
        f"{name}: deps lack {relative(missing, base)} (imported by the stage)"
        for missing in sorted(closure - code)
    ]
    problems += [
        f"{name}: deps list {relative(extra, base)}, which the stage never imports"
        for extra in sorted(code - closure)
    ]
    return problems


def made_by(path: str, outputs: Iterable[str]) -> bool:
    """Whether ``path`` is one of ``outputs``, inside one, or holds one (``models`` holds
    ``models/seed${item}``); any ``${...}`` stands for any seed."""
    path = re.sub(r"\$\{[^}]*\}", "${item}", path)
    outputs = [re.sub(r"\$\{[^}]*\}", "${item}", out) for out in outputs]
    return any(
        path == out or path.startswith(f"{out}/") or out.startswith(f"{path}/") for out in outputs
    )


def _data_problems(name: str, deps: list[Path], stage: Stage, made: set[str] | None):
    """``made``: in a preset pipeline, every output of its stages (an input none of them writes,
    such as the emergence curve, is not listed there); None for ``dvc.yaml``."""
    layout = Layout()
    data = {str(dep) for dep in deps if dep.suffix != ".py"}
    inputs = {str(path) for path in stage.declared_inputs(layout)}
    trained = {str(path) for path in stage.trained_inputs(layout)}
    if made is not None:
        unmade = sorted(d for d in data if not made_by(d, made))
        inputs = {path for path in inputs if made_by(path, made)}
        if unmade:
            return [f"{name}: data deps {unmade}, which no stage of the pipeline writes"]
    if inputs <= data and (made is not None or data == inputs | trained):
        return []
    declared = f"declared inputs {sorted(inputs)} (trained group only: {sorted(trained)})"
    return [f"{name}: data deps {sorted(data)}, {declared}"]


class StageFiles:
    """Where a pipeline's stage files and the library live, seen from its ``dvc.yaml``."""

    def __init__(self, dvc_yaml: Path, stages_dir: Path, src: Path) -> None:
        self.base = dvc_yaml.parent
        self.stages_dir = stages_dir
        self.src = src

    def stage_file(self, name: str) -> Path:
        """The file of the stage ``name``."""
        return self.stages_dir / f"{name}.py"


def stage_problems(
    name: str, entry: dict, stage: Stage, files: StageFiles, made: set[str] | None = None
):
    """What the dvc.yaml entry of one stage gets wrong; paths in it are relative to
    ``files.base``; ``made``: a preset pipeline's outputs (``_data_problems``)."""
    preset = made is not None
    problems = []
    if stage.per_seed != ("foreach" in entry) or (
        stage.per_seed and entry["foreach"] != "${train.seeds}"
    ):
        problems.append(f"{name}: foreach ${{train.seeds}} expected: {stage.per_seed}")
    body = entry.get("do", entry)
    stages_dir = relative(files.stages_dir, files.base)
    problems += _command_and_params(name, body, stage, stages_dir, preset)
    declared = {str(out.path): out for out in stage.declared_outputs(Layout())}
    problems += _output_problems(name, dvc_outs(body), declared)
    deps = [Path(dep) for dep in body.get("deps") or []]
    problems += _code_problems(name, deps, files.stage_file(name), files.src, files.base)
    return problems + _data_problems(name, deps, stage, made)


def wiring_problems(
    dvc_yaml: Path, stages: Iterable[Stage], stages_dir: Path, src: Path, preset: bool = False
) -> list[str]:
    """Every disagreement of ``dvc_yaml`` with the declarations ``stages`` (the files of
    ``stages_dir``) and their imports of the library under ``src``."""
    by_name = {stage.name: stage for stage in stages}
    written = yaml.safe_load(dvc_yaml.read_text())["stages"]
    problems = [f"{name}: not a stage of stages/" for name in written if name not in by_name]
    if not preset:
        wanted = set(by_name) - PRESET_ONLY
        problems += [f"{name}: missing from dvc.yaml" for name in sorted(wanted - set(written))]
    files = StageFiles(dvc_yaml, stages_dir, src)
    made = {out for entry in written.values() for out in dvc_outs(entry.get("do", entry))}
    for name, entry in written.items():
        if name in by_name:
            problems += stage_problems(name, entry, by_name[name], files, made if preset else None)
    return problems
