"""The package is built in floors: a module imports only from its own floor or the ones below.

    pipeline > outputs > description > matching > models > text > base

(base: ``config``, ``errors``, ``io``, ``resources``, ``hub``). Checked with ``ast`` over every
import statement of every module, inside functions too; ``__main__`` (the entry point) may
import anything. The stage files (``stages/``) sit above them all and are imported by none.
"""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO_ROOT

PACKAGE_DIR = REPO_ROOT / "src" / "universal_neurons"
FLOORS = ["base", "text", "models", "matching", "description", "outputs", "pipeline"]
BASE = {"config", "errors", "io", "resources", "hub"}


def floor_of(module: str) -> str | None:
    """The floor of a module of the package (``universal_neurons.matching.units``), or None."""
    parts = module.split(".")
    if parts[0] != "universal_neurons" or len(parts) < 2:
        return None
    return "base" if parts[1] in BASE else parts[1]


def imports_of(path: Path) -> list[str]:
    """Every module named by an import statement of ``path`` (absolute imports only)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names += [f"{node.module}.{alias.name}" for alias in node.names]
    return names


def upward_imports(package_dir: Path = PACKAGE_DIR) -> list[str]:
    """``file -> module`` for every import of a higher floor."""
    found = []
    for path in sorted(package_dir.rglob("*.py")):
        own = floor_of("universal_neurons." + ".".join(path.relative_to(package_dir).parts))
        if path.name == "__main__.py" or own is None:
            continue
        for name in imports_of(path):
            other = floor_of(name)
            if other is not None and FLOORS.index(other) > FLOORS.index(own):
                found.append(f"{path.relative_to(package_dir)} -> {name}")
    return found


def test_every_module_is_on_a_known_floor():
    for path in PACKAGE_DIR.rglob("*.py"):
        if path.parent == PACKAGE_DIR:
            assert path.stem in BASE | {"__init__", "__main__"}, path
        else:
            assert path.relative_to(PACKAGE_DIR).parts[0] in FLOORS, path


def test_no_module_imports_from_a_floor_above_its_own():
    assert upward_imports() == []


def test_an_upward_import_is_found(tmp_path):
    """The check itself: a matching module that imports a description module is named."""
    package = tmp_path / "universal_neurons"
    (package / "matching").mkdir(parents=True)
    (package / "matching" / "units.py").write_text(
        "def f():\n    from universal_neurons.description.families import classify_model\n"
    )
    assert upward_imports(package) == [
        "matching/units.py -> universal_neurons.description.families.classify_model"
    ]
