"""Function lengths and docstrings of the package, measured with ``ast`` (``make metrics``).

Length of a function: its lines from ``def`` to its last statement (decorators not
counted, docstring and comments counted), for every function and method, nested ones
included. Public: a module-level function or a method of a module-level class whose name
(and whose class's name) does not start with ``_``; dunder methods are not public API.

    python scripts/code_metrics.py [SRC]        # default: src/
"""

from __future__ import annotations

import ast
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

LIMITS = {"median": 10, "p90": 30, "max": 60}
"""The bars the code keeps (tests/test_code_metrics.py checks them)."""
FILE_LINES = 600
"""No file of the package or of stages/ is longer (one idea per file)."""


@dataclass(frozen=True)
class Function:
    """One function: where it is, its length in lines, whether it is public and documented."""

    path: str
    line: int
    name: str
    length: int
    public: bool
    documented: bool


def _public(name: str, owner: str | None) -> bool:
    return not name.startswith("_") and not (owner or "").startswith("_")


def functions(path: Path, root: Path) -> list[Function]:
    """Every function and method of one file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []

    def visit(node: ast.AST, owner: str | None, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                found.append(
                    Function(
                        path=path.relative_to(root).as_posix(),
                        line=child.lineno,
                        name=child.name if owner is None else f"{owner}.{child.name}",
                        length=child.end_lineno - child.lineno + 1,
                        public=top and _public(child.name, owner),
                        documented=ast.get_docstring(child) is not None,
                    )
                )
                visit(child, owner, top=False)
            elif isinstance(child, ast.ClassDef):
                visit(child, child.name, top=top and owner is None)
            else:
                visit(child, owner, top)

    visit(tree, None, top=True)
    return found


def measure(src: Path) -> list[Function]:
    """Every function of every ``.py`` file under ``src``."""
    return [f for path in sorted(src.rglob("*.py")) for f in functions(path, src)]


def long_files(*folders: Path) -> list[str]:
    """``path (lines)`` of every ``.py`` file under ``folders`` longer than ``FILE_LINES``."""
    found = []
    for folder in folders:
        for path in sorted(folder.rglob("*.py")):
            lines = len(path.read_text(encoding="utf-8").splitlines())
            if lines > FILE_LINES:
                found.append(f"{path} ({lines})")
    return found


def summary(found: list[Function]) -> dict:
    """``count, median, p90, max`` of the lengths, the longest function, the functions over
    the maximum, and the public functions without a docstring."""
    lengths = sorted(f.length for f in found)
    longest = max(found, key=lambda f: f.length)
    return {
        "count": len(found),
        "median": statistics.median(lengths),
        "p90": statistics.quantiles(lengths, n=10, method="inclusive")[-1],
        "max": longest.length,
        "longest": f"{longest.path}:{longest.line} {longest.name}",
        "over_max": [
            f"{f.path}:{f.line} {f.name} ({f.length})" for f in found if f.length > LIMITS["max"]
        ],
        "undocumented": [
            f"{f.path}:{f.line} {f.name}" for f in found if f.public and not f.documented
        ],
        "public": sum(f.public for f in found),
    }


def report(result: dict) -> str:
    """The summary as a few lines of text."""
    lines = [
        f"functions: {result['count']} ({result['public']} public)",
        f"length (lines): median {result['median']}, p90 {result['p90']:.1f}, max {result['max']} "
        f"({result['longest']}); limits: median <= {LIMITS['median']}, p90 <= {LIMITS['p90']}, "
        f"max <= {LIMITS['max']}",
        f"public functions without a docstring: {len(result['undocumented'])}",
    ]
    lines += [f"  undocumented: {item}" for item in result["undocumented"]]
    lines += [f"  over {LIMITS['max']} lines: {item}" for item in result["over_max"]]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """Print the metrics of ``argv[0]`` (default ``src``); exit 1 when a limit is broken."""
    src = Path(argv[0]) if argv else Path(__file__).resolve().parents[1] / "src"
    result = summary(measure(src))
    print(report(result))
    broken = (
        result["median"] > LIMITS["median"]
        or result["p90"] > LIMITS["p90"]
        or result["over_max"]
        or result["undocumented"]
    )
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
