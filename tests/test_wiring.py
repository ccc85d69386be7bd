"""dvc.yaml says what the stage declarations and the stage modules' imports say.

``dvc.yaml`` is written and read by people; the declarations in
``src/universal_neurons/pipeline/stages/<name>.py`` are the truth it must agree with. For
every stage: its ``cmd``; its ``outs``, ``metrics`` and ``plots`` (path, cache, push,
persist); its ``params``; its data ``deps`` (the declared inputs); and its code ``deps``,
which must be exactly the files of the stage module's transitive imports inside
``src/``. The imports are found with ``ast`` in every import statement of every module
reached, inside functions too; only imports under ``if TYPE_CHECKING:`` are left out (they
never run). Package ``__init__.py`` files hold a docstring only, so they are no
dependency of anything (checked here too).

The same holds for the preset pipelines' ``pipelines/<preset>/dvc.preset.yaml`` (paths
relative to their folder, code as ``../../src/...``), where a stage may read more data
than declared (e.g. tokenize reading a model's tokenizer that params.yaml points at).
"""

from __future__ import annotations

import ast
import os
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import REPO_ROOT

from universal_neurons.pipeline.command import ALL_PARAMS, Out, Stage
from universal_neurons.pipeline.layout import Layout
from universal_neurons.pipeline.registry import all_stages

PACKAGE = "universal_neurons"
PRESET_ONLY = {"fetch"}  # stages of the preset pipelines alone (fetch replaces train there)
PRESETS = sorted(REPO_ROOT.glob("pipelines/*/dvc.preset.yaml"))


# --------------------------------------------------------------------------- imports


def _is_type_checking(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_statements(tree: ast.AST):
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
    """The file of a module of the package under ``src`` (None: another package, or none)."""
    if module != PACKAGE and not module.startswith(PACKAGE + "."):
        return None
    base = src.joinpath(*module.split("."))
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return base / "__init__.py" if (base / "__init__.py").is_file() else None


def imported_modules(path: Path, src: Path) -> set[str]:
    """The package's modules that the file ``path`` imports (``from a import b``: ``a.b`` when
    that is a module, else ``a``)."""
    package = ".".join(path.relative_to(src).with_suffix("").parts[:-1])
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
    return found


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
            if found is not None and found.name != "__init__.py":
                todo.append(found)
    return seen


# --------------------------------------------------------------------------- dvc.yaml


def _dvc_outs(entry: dict) -> dict[str, Out]:
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


def _dvc_params(entry: dict) -> set[str]:
    params = set()
    for item in entry.get("params") or []:
        params.add(ALL_PARAMS if isinstance(item, dict) else item)
    return params


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


def _stage_problems(
    name: str, entry: dict, stage: Stage, src: Path, base: Path, preset: bool
) -> list[str]:
    """What the dvc.yaml entry of one stage gets wrong; paths in it are relative to ``base``."""
    problems = []
    if stage.per_seed != ("foreach" in entry) or (
        stage.per_seed and entry["foreach"] != "${train.seeds}"
    ):
        problems.append(f"{name}: foreach ${{train.seeds}} expected: {stage.per_seed}")
    body = entry.get("do", entry)
    if body.get("cmd") != stage.cmd:
        problems.append(f"{name}: cmd {body.get('cmd')!r}, expected {stage.cmd!r}")
    # the preset pipelines' groups are above correlate.full_pairs_max_neurons: scale_params too
    declared = set(stage.params) | (set(stage.scale_params) if preset else set())
    written = _dvc_params(body)
    if declared - written:
        problems.append(f"{name}: params lack {sorted(declared - written)}")
    if written - declared:
        problems.append(f"{name}: params list {sorted(written - declared)}, not declared")
    layout = Layout()
    declared = {str(out.path): out for out in stage.declared_outputs(layout)}
    problems += _output_problems(name, _dvc_outs(body), declared)
    deps = [Path(dep) for dep in body.get("deps") or []]
    code = {(base / dep).resolve() for dep in deps if (base / dep).suffix == ".py"}
    module = src / PACKAGE / "pipeline" / "stages" / f"{name}.py"
    closure = {file.resolve() for file in code_closure(module, src)}
    for missing in sorted(closure - code):
        problems.append(f"{name}: deps lack {_relative(missing, base)} (imported by the stage)")
    for extra in sorted(code - closure):
        problems.append(
            f"{name}: deps list {_relative(extra, base)}, which the stage never imports"
        )
    data = {str(dep) for dep in deps if dep.suffix != ".py"}
    inputs = {str(path) for path in stage.declared_inputs(layout)}
    trained = {str(path) for path in stage.trained_inputs(layout)}
    if not inputs <= data or (not preset and data != inputs | trained):
        declared = f"declared inputs {sorted(inputs)} (trained group only: {sorted(trained)})"
        problems.append(f"{name}: data deps {sorted(data)}, {declared}")
    return problems


def _relative(path: Path, base: Path) -> str:
    return Path(os.path.relpath(path, base.resolve())).as_posix()


def wiring_problems(dvc_yaml: Path, src: Path, preset: bool = False) -> list[str]:
    """Every disagreement of ``dvc_yaml`` with the stage declarations and imports under ``src``."""
    stages = {stage.name: stage for stage in all_stages()}
    written = yaml.safe_load(dvc_yaml.read_text())["stages"]
    problems = [f"{name}: not a stage of the registry" for name in written if name not in stages]
    if not preset:
        wanted = set(stages) - PRESET_ONLY
        problems += [f"{name}: missing from dvc.yaml" for name in sorted(wanted - set(written))]
    for name, entry in written.items():
        if name in stages:
            problems += _stage_problems(name, entry, stages[name], src, dvc_yaml.parent, preset)
    return problems


# --------------------------------------------------------------------------- tests


def test_dvc_yaml_agrees_with_the_registry_and_the_imports():
    problems = wiring_problems(REPO_ROOT / "dvc.yaml", REPO_ROOT / "src")
    assert not problems, "dvc.yaml disagrees with the stages:\n" + "\n".join(problems)


@pytest.mark.parametrize("preset", PRESETS, ids=[p.parent.name for p in PRESETS])
def test_preset_pipelines_agree_with_the_registry_and_the_imports(preset):
    problems = wiring_problems(preset, REPO_ROOT / "src", preset=True)
    assert not problems, f"{preset} disagrees with the stages:\n" + "\n".join(problems)


def test_an_unlisted_import_fails_naming_the_missing_file(tmp_path):
    """A stage that starts importing a module dvc.yaml does not list: the check names it."""
    shutil.copytree(REPO_ROOT / "src", tmp_path / "src")
    shutil.copy(REPO_ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    assert wiring_problems(tmp_path / "dvc.yaml", tmp_path / "src") == []
    stage = tmp_path / "src" / PACKAGE / "pipeline" / "stages" / "syntax.py"
    stage.write_text(
        stage.read_text()
        + "\n\ndef _later():\n    from universal_neurons.analysis import baseline  # noqa: F401\n"
    )
    problems = wiring_problems(tmp_path / "dvc.yaml", tmp_path / "src")
    assert (
        "syntax: deps lack src/universal_neurons/analysis/baseline.py (imported by the stage)"
        in problems
    )
    assert all(problem.startswith("syntax: deps lack src/") for problem in problems)


def test_type_checking_imports_are_not_dependencies(tmp_path):
    module = tmp_path / "src" / PACKAGE / "pipeline" / "stages" / "probe.py"
    module.parent.mkdir(parents=True)
    for name in ("config", "io", "errors"):
        (tmp_path / "src" / PACKAGE / f"{name}.py").write_text('"""x"""\n')
    module.write_text(
        "from typing import TYPE_CHECKING\n"
        "from universal_neurons import io\n"
        "if TYPE_CHECKING:\n    from universal_neurons.config import Params\n"
        "def f():\n    import universal_neurons.errors\n"
    )
    closure = code_closure(module, tmp_path / "src")
    assert {p.name for p in closure} == {"probe.py", "io.py", "errors.py"}


def test_package_init_files_hold_a_docstring_only():
    for init in (REPO_ROOT / "src" / PACKAGE).rglob("__init__.py"):
        body = ast.parse(init.read_text()).body
        assert len(body) == 1 and isinstance(body[0], ast.Expr), init


def test_the_train_stage_depends_on_no_analysis_or_transformerlens_code():
    """train decides when DVC retrains the group (an hour on CPU): its code stays small."""
    src = REPO_ROOT / "src"
    module = src / PACKAGE / "pipeline" / "stages" / "train.py"
    closure = sorted(p.relative_to(src / PACKAGE).as_posix() for p in code_closure(module, src))
    assert closure == [
        "errors.py",
        "io.py",
        "models/gpt2.py",
        "models/training.py",
        "pipeline/command.py",
        "pipeline/layout.py",
        "pipeline/stages/train.py",
        "resources.py",
        "text/tokens.py",
    ]
