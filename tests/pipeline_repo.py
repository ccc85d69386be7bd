"""A temporary copy of this repository that runs the real pipeline (real git, real DVC).

``make_pipeline_repo(dest, params)`` copies the project's files (what git tracks plus new,
not-ignored files, so uncommitted work is tested too; never ``dvc.lock`` or outputs), writes
``params`` as ``params.yaml``, and makes it a git repository with one commit. DVC is already
initialised by the copied ``.dvc/config``. ``run(repo, "dvc", "repro")`` runs a command there
with an environment that imports the copy's code and has no DVC/MLflow variables leaking in
from the caller.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
BIN_DIR = Path(sys.executable).parent

# Files of the repository that are not copied: the lock and outputs of the real parameters.
_SKIP_PREFIXES = (
    "dvc.lock",
    "data/",
    "models/",
    "metrics/",
    "results/",
    "report/",
    "tracking/",
    "tests/",
)

# Environment variables that would make a command in the copy look elsewhere.
_LEAKY = (
    "DVC_ROOT",
    "DVC_STAGE",
    "DVC_EXP_NAME",
    "DVC_EXP_BASELINE_REV",
    "MLFLOW_TRACKING_URI",
    "MLFLOW_EXPERIMENT_NAME",
    "MLFLOW_RUN_ID",
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
)


def tiny_pipeline_params(**sections) -> dict:
    """TINY_PARAMS cut down so that tokenize + train of the whole group take seconds:
    2 seeds, 20k training tokens per model, an evaluation every 10 steps, no checkpoints."""
    from conftest import tiny_params_dict

    defaults = {
        "train": {
            "seeds": [1, 2],
            "tokens_per_model": 20_000,
            "eval_every_steps": 10,
            "checkpoint_tokens": [],
        }
    }
    raw = tiny_params_dict(**defaults)
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return raw


def project_files(root: Path = REPO_ROOT) -> list[str]:
    """Paths (relative to ``root``) of the files a pipeline copy needs."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    return sorted(
        path
        for path in listed
        if path and not path.startswith(_SKIP_PREFIXES) and (root / path).is_file()
    )


def pipeline_env(repo: Path, **extra: str | None) -> dict[str, str]:
    """Environment for commands in ``repo``: its own code first on PYTHONPATH, the venv's
    tools on PATH, a fixed git identity, offline Hugging Face; ``extra`` sets (or, with
    ``None``, removes) variables."""
    env = {k: v for k, v in os.environ.items() if k not in _LEAKY}
    env["PYTHONPATH"] = os.pathsep.join([str(repo / "src"), str(repo)])
    env["PATH"] = os.pathsep.join([str(BIN_DIR), env.get("PATH", "")])
    env.update(
        {
            "GIT_AUTHOR_NAME": "pipeline test",
            "GIT_AUTHOR_EMAIL": "test@example.invalid",
            "GIT_COMMITTER_NAME": "pipeline test",
            "GIT_COMMITTER_EMAIL": "test@example.invalid",
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "DVC_NO_ANALYTICS": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    for key, value in extra.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def run(
    repo: Path, *command: str, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess:
    """Run ``command`` in ``repo``; on failure raise with its output in the message."""
    result = subprocess.run(
        list(command),
        cwd=repo,
        env=env or pipeline_env(repo),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(command)} failed with status {result.returncode} in {repo}\n"
            f"--- stdout\n{result.stdout[-6000:]}\n--- stderr\n{result.stderr[-6000:]}"
        )
    return result


def make_pipeline_repo(dest: Path, params: dict, *, commit: bool = True) -> Path:
    """Copy the project into ``dest`` with ``params`` as params.yaml; git init and commit."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for relative in project_files():
        target = dest / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / relative, target)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    run(dest, "git", "init", "-q", "-b", "main")
    if commit:
        run(dest, "git", "add", "-A")
        run(dest, "git", "commit", "-q", "-m", "tiny pipeline")
    return dest


def make_preset_repo(dest: Path, preset: str, params: dict) -> tuple[Path, Path]:
    """A copy of the project at ``dest`` whose generated pipeline of ``preset`` is switched on
    (``pipelines/<preset>/dvc.preset.yaml`` copied to ``dvc.yaml`` in its folder, as docs say)
    with ``params`` as its params.yaml, committed: ``(repo, preset folder)``."""
    from conftest import tiny_params_dict

    repo = make_pipeline_repo(dest, tiny_params_dict(), commit=False)
    folder = repo / "pipelines" / preset
    shutil.copy(folder / "dvc.preset.yaml", folder / "dvc.yaml")
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-q", "-m", "preset")
    return repo, folder


def copy_pipeline_repo(source: Path, dest: Path) -> Path:
    """An independent copy of a pipeline repository ``source`` at ``dest``: git history, DVC
    cache and workspace outputs as plain files (DVC's hard links into the cache become
    copies, so a change in one never reaches the other); DVC rehashes them on first use."""
    dvc_dir = Path(source) / ".dvc"

    def _dvc_state(directory: str, names: list[str]) -> list[str]:
        # DVC's locks and hash database describe the source's files (inodes), not the copy's
        return ["tmp"] if Path(directory) == dvc_dir else []

    shutil.copytree(source, dest, symlinks=False, ignore=_dvc_state)
    return Path(dest)


def shared_pipeline_params() -> dict:
    """The tiny pipeline that test_pipeline_dvc, test_determinism and test_tracking_pipeline
    share (``reproduced_tiny``): ``tiny_pipeline_params`` with one checkpoint, so that the
    emergence stages measure a checkpoint too."""
    return tiny_pipeline_params(train={"checkpoint_tokens": [10_000]})


def reproduced_tiny(tmp_path_factory) -> Path:
    """The shared tiny pipeline after its one ``dvc repro`` from scratch (``reproduced_once``:
    made once per session; copy it before changing anything)."""
    return reproduced_once(tmp_path_factory, "tiny", shared_pipeline_params())


def session_root(tmp_path_factory) -> Path:
    """A folder this test session shares across its pytest-xdist workers (their base
    temporary folders' parent, ``pytest-N/``), or the session's own base folder without
    xdist. Never shared with another session."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def reproduced_once(tmp_path_factory, name: str, params: dict) -> Path:
    """A pipeline repository with ``params`` after one real ``dvc repro`` from scratch (then
    committed), made once per test session under a file lock, whichever module or worker asks
    first; later callers get the same folder. Copy it (``copy_pipeline_repo``) before
    changing anything in it."""
    from filelock import FileLock

    root = session_root(tmp_path_factory) / f"reproduced-{name}"
    with FileLock(f"{root}.lock"):
        repo = root / "repo"
        if not (root / "done").is_file():
            shutil.rmtree(root, ignore_errors=True)  # an earlier attempt that failed
            make_pipeline_repo(repo, params)
            run(repo, "dvc", "repro")
            run(repo, "git", "add", "-A")
            run(repo, "git", "commit", "-q", "-m", "reproduce the pipeline")
            (root / "done").write_text(json.dumps(params))
        elif json.loads((root / "done").read_text()) != params:
            raise AssertionError(f"reproduced_once({name!r}) asked with other parameters")
    return repo
