"""Rewrite the code ``deps`` of every stage in dvc.yaml files to what the wiring check wants.

    python scripts/dvc_code_deps.py dvc.yaml pipelines/*/dvc.preset.yaml

Each stage's lines that name a ``.py`` file are replaced by its stage file and the library
files it imports, directly or not (``universal_neurons.pipeline.wiring.code_deps``), sorted,
after the data deps; everything else in the file (comments, order, data deps) stays as written.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from universal_neurons.pipeline.wiring import code_deps

ROOT = Path(__file__).resolve().parents[1]


def closure_lines(stage: str, base: Path, indent: str) -> list[str]:
    """The ``- path`` lines of the code deps of ``stage``, relative to ``base``."""
    files = code_deps(ROOT / "stages" / f"{stage}.py", ROOT / "src", base)
    return [f"{indent}- {name}" for name in files]


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
