"""Rewrite the code ``deps`` of every stage in dvc.yaml files to what tests/test_wiring.py wants.

    python scripts/dvc_code_deps.py dvc.yaml pipelines/*/dvc.preset.yaml

Each stage's lines that name a ``.py`` file under ``src/`` are replaced by the files of the
stage module's transitive imports (``code_closure`` of tests/test_wiring.py), sorted, after
the data deps; everything else in the file (comments, order, data deps) stays as written.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from test_wiring import code_closure  # noqa: E402


def closure_lines(stage: str, base: Path, indent: str) -> list[str]:
    """The ``- path`` lines of the code deps of ``stage``, relative to ``base``."""
    module = ROOT / "src" / "universal_neurons" / "pipeline" / "stages" / f"{stage}.py"
    files = sorted(os.path.relpath(p, base) for p in code_closure(module, ROOT / "src"))
    return [f"{indent}- {Path(f).as_posix()}" for f in files]


def rewrite(path: Path) -> str:
    """The text of the dvc.yaml at ``path`` with every stage's code deps recomputed."""
    lines, out, stage, i = path.read_text().splitlines(), [], None, 0
    while i < len(lines):
        line = lines[i]
        if match := re.match(r"^  ([a-z_]+):", line):
            stage = match.group(1)
        out.append(line)
        i += 1
        if (deps := re.match(r"^(\s+)deps:\s*$", line)) and stage is not None:
            indent = deps.group(1) + "  "
            while i < len(lines) and lines[i].startswith(indent + "- "):
                if not lines[i].split("#")[0].strip().endswith(".py"):
                    out.append(lines[i])
                i += 1
            out += closure_lines(stage, path.parent.resolve(), indent)
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    for name in sys.argv[1:]:
        Path(name).write_text(rewrite(Path(name)))
