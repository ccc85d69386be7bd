"""docs/ARCHITECTURE.md's "How to add a stage", followed in a copy of the repository.

The stage file and the ``dvc.yaml`` entry are the two code blocks of that section, so the doc
cannot drift from what works: after ``scripts/dvc_code_deps.py`` fills in the code deps, the
wiring check finds nothing wrong, DVC reads the pipeline, and the new file runs as ``dvc.yaml``
runs it, writing what the tables say.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import REPO_ROOT

BIN = Path(sys.executable).parent


def _section_blocks(language: str) -> list[str]:
    """The ``language`` code blocks of the "How to add a stage" section."""
    doc = (REPO_ROOT / "docs" / "ARCHITECTURE.md").read_text()
    section = doc.split("## How to add a stage", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{language}\n(.*?)```", section, flags=re.S)


def _copy_repository(dest: Path) -> None:
    for folder in ("src", "stages", "scripts", "pipelines", ".dvc"):
        shutil.copytree(
            REPO_ROOT / folder,
            dest / folder,
            ignore=shutil.ignore_patterns("__pycache__", "cache", "tmp"),
        )
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO_ROOT / name, dest / name)


def _env(root: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": f"{root / 'src'}{os.pathsep}{root}",
    }


def _run(args: list, root: Path, cwd: Path | None = None) -> str:
    done = subprocess.run(args, cwd=cwd or root, env=_env(root), capture_output=True, text=True)
    assert done.returncode == 0, f"{args}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


WIRING = (
    "from pathlib import Path\n"
    "from stages import all_stages\n"
    "from universal_neurons.pipeline.wiring import wiring_problems\n"
    "print('\\n'.join(wiring_problems(Path('dvc.yaml'), all_stages(), Path('stages'), Path('src'))))\n"
)


@pytest.mark.slow
def test_the_documented_steps_add_a_stage_that_runs(tmp_path, tiny_analysis, tiny_tokens_dir):
    (stage_file,) = _section_blocks("python")
    (entry,) = _section_blocks("yaml")
    root = tmp_path / "repo"
    _copy_repository(root)
    # step 1: the stage file; step 2: its dvc.yaml entry (after the last stage)
    (root / "stages" / "universal_count.py").write_text(stage_file)
    dvc_yaml = root / "dvc.yaml"
    text = dvc_yaml.read_text()
    text = text.replace("\nplots:\n", "\n" + entry + "\nplots:\n", 1)
    dvc_yaml.write_text(text)
    problems = _run([sys.executable, "-c", WIRING], root).split("\n")
    assert any("universal_count: deps lack src/universal_neurons/io.py" in p for p in problems)
    # step 3: the code deps filled in, nothing left to fix
    _run([sys.executable, "scripts/dvc_code_deps.py", "dvc.yaml"], root)
    assert _run([sys.executable, "-c", WIRING], root).strip() == ""
    deps = yaml.safe_load(dvc_yaml.read_text())["stages"]["universal_count"]["deps"]
    assert "stages/universal_count.py" in deps and "src/universal_neurons/io.py" in deps
    log_deps = yaml.safe_load(dvc_yaml.read_text())["stages"]["log"]["deps"]
    assert "results/universal_count.json" in log_deps  # the MLflow run keeps every result
    _run(["git", "init", "-q"], root)
    listed = _run([BIN / "dvc", "stage", "list", "--name-only"], root).split()
    assert "universal_count" in listed
    # the stage runs as dvc.yaml runs it, in a workspace holding the tiny group's analysis
    work = tmp_path / "work"
    shutil.copytree(tiny_analysis, work / "data")
    from conftest import tiny_params_dict

    (work / "params.yaml").write_text(yaml.safe_dump(tiny_params_dict()))
    command = entry.split("cmd: ", 1)[1].split("\n", 1)[0].split()
    assert command[:2] == ["python", "-P"]
    _run([sys.executable, "-P", str(root / command[2])], root, cwd=work)
    counts = json.loads((work / "results" / "universal_count.json").read_text())
    tables = {
        path.stem: pd.read_parquet(path)
        for path in (work / "data" / "universality").glob("*.parquet")
    }
    assert counts == {name: int(t["is_universal"].sum()) for name, t in tables.items()}
    assert set(counts) == {"seed1", "seed2", "seed3"}
