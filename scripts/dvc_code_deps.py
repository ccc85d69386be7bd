"""Rewrite the ``deps`` of every stage in dvc.yaml files to what the wiring check wants.

    python scripts/dvc_code_deps.py dvc.yaml pipelines/*/dvc.preset.yaml

Each stage's lines that name a ``.py`` file are replaced by its stage file and the library
files it imports, directly or not (``universal_neurons.pipeline.wiring.code_deps``), sorted,
after the data deps. In the repository's own ``dvc.yaml`` the data deps follow the stage's
declaration too (``Stage.declared_inputs`` and ``trained_inputs``): a declared input that is
missing is added, one no longer declared is dropped (the log stage's inputs are every other
stage's logged outputs, so a new stage changes them). Everything else in the file (comments,
order, the data deps that stay) is kept as written.
"""

from __future__ import annotations

import re
import sys
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stages import all_stages  # noqa: E402
from universal_neurons.pipeline.layout import Layout  # noqa: E402
from universal_neurons.pipeline.wiring import code_deps  # noqa: E402


def closure_lines(stage: str, base: Path, indent: str) -> list[str]:
    """The ``- path`` lines of the code deps of ``stage``, relative to ``base``."""
    files = code_deps(ROOT / "stages" / f"{stage}.py", ROOT / "src", base)
    return [f"{indent}- {name}" for name in files]


@cache
def _stages_by_name() -> dict:
    return {stage.name: stage for stage in all_stages()}


def declared_data(stage: str) -> list[str] | None:
    """The data deps the declaration of ``stage`` wants in the repository's ``dvc.yaml``."""
    found = _stages_by_name().get(stage)
    if found is None:
        return None
    layout = Layout()
    return [str(p) for p in [*found.declared_inputs(layout), *found.trained_inputs(layout)]]


def _data_lines(kept: list[str], stage: str | None, sync: bool, indent: str) -> list[str]:
    """The data dep lines as written, synchronised with the declaration when ``sync``."""
    wanted = declared_data(stage) if sync and stage else None
    if wanted is None:
        return kept
    path_of = {line: line.split("#")[0].strip().removeprefix("- ").strip() for line in kept}
    lines = [line for line in kept if path_of[line] in wanted]
    written = {path_of[line] for line in lines}
    return lines + [f"{indent}- {path}" for path in wanted if path not in written]


def rewrite(path: Path) -> str:
    """The text of the dvc.yaml at ``path`` with every stage's deps recomputed."""
    sync = path.resolve() == (ROOT / "dvc.yaml").resolve()
    lines, out, stage, i = path.read_text().splitlines(), [], None, 0
    while i < len(lines):
        line = lines[i]
        if match := re.match(r"^  ([a-z_]+):", line):
            stage = match.group(1)
        out.append(line)
        i += 1
        if (deps := re.match(r"^(\s+)deps:\s*$", line)) and stage is not None:
            indent, kept = deps.group(1) + "  ", []
            while i < len(lines) and lines[i].startswith(indent + "- "):
                if not lines[i].split("#")[0].strip().endswith(".py"):
                    kept.append(lines[i])
                i += 1
            out += _data_lines(kept, stage, sync, indent)
            out += closure_lines(stage, path.parent.resolve(), indent)
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    for name in sys.argv[1:]:
        Path(name).write_text(rewrite(Path(name)))
