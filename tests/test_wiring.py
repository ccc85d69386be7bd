"""dvc.yaml says what the stage declarations and the stage files' imports say.

``dvc.yaml`` is written and read by people; the declarations in ``stages/<name>.py`` are the
truth it must agree with (``universal_neurons.pipeline.wiring``): ``cmd``, outputs,
``params``, data deps, and code deps = the stage file and the library files it imports,
directly or not. The same holds for the preset pipelines' ``pipelines/<preset>/dvc.preset.yaml``
(paths relative to their folder, code as ``../../src/...``), where a stage may read more data
than declared (e.g. tokenize reading a model's tokenizer that params.yaml points at).
"""

from __future__ import annotations

import ast
import importlib.util
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import REPO_ROOT

from stages import all_stages
from universal_neurons.pipeline.wiring import (
    PACKAGE,
    code_closure,
    dvc_params,
    missing_params,
    wiring_problems,
)

PRESETS = sorted(REPO_ROOT.glob("pipelines/*/dvc.preset.yaml"))
STAGES_DIR = REPO_ROOT / "stages"


def problems_of(dvc_yaml: Path, root: Path = REPO_ROOT, preset: bool = False) -> list[str]:
    """``wiring_problems`` of ``dvc_yaml`` against the stage files and library under ``root``."""
    return wiring_problems(dvc_yaml, all_stages(), root / "stages", root / "src", preset)


# --------------------------------------------------------------------------- tests


def test_dvc_yaml_agrees_with_the_registry_and_the_imports():
    problems = problems_of(REPO_ROOT / "dvc.yaml")
    assert not problems, "dvc.yaml disagrees with the stages:\n" + "\n".join(problems)


@pytest.mark.parametrize("preset", PRESETS, ids=[p.parent.name for p in PRESETS])
def test_preset_pipelines_agree_with_the_registry_and_the_imports(preset):
    problems = problems_of(preset, preset=True)
    assert not problems, f"{preset} disagrees with the stages:\n" + "\n".join(problems)


def test_an_unlisted_import_fails_naming_the_missing_file(tmp_path):
    """A stage that starts importing a module dvc.yaml does not list: the check names it."""
    shutil.copytree(REPO_ROOT / "src", tmp_path / "src")
    shutil.copytree(REPO_ROOT / "stages", tmp_path / "stages")
    shutil.copy(REPO_ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    assert problems_of(tmp_path / "dvc.yaml", tmp_path) == []
    stage = tmp_path / "stages" / "syntax.py"
    stage.write_text(
        stage.read_text()
        + "\n\ndef _later():\n    from universal_neurons.matching import baseline  # noqa: F401\n"
    )
    problems = problems_of(tmp_path / "dvc.yaml", tmp_path)
    assert (
        "syntax: deps lack src/universal_neurons/matching/baseline.py (imported by the stage)"
        in problems
    )
    assert all(problem.startswith("syntax: deps lack src/") for problem in problems)


def test_the_command_line_is_no_code_dep_but_what_it_calls_would_be(tmp_path):
    """Every stage file calls ``runner.stage_main``; its imports (config.py ...) are not
    followed, while the same import written in a stage is."""
    module = tmp_path / "stages" / "probe.py"
    module.parent.mkdir(parents=True)
    package = tmp_path / "src" / PACKAGE
    (package / "pipeline").mkdir(parents=True)
    (package / "config.py").write_text('"""x"""\n')
    (package / "pipeline" / "runner.py").write_text("from universal_neurons import config\n")
    module.write_text("from universal_neurons.pipeline.runner import stage_main\n")
    assert {p.name for p in code_closure(module, tmp_path / "src")} == {"probe.py"}
    module.write_text("from universal_neurons import config\n")
    assert {p.name for p in code_closure(module, tmp_path / "src")} == {"probe.py", "config.py"}


def test_type_checking_imports_are_not_dependencies(tmp_path):
    module = tmp_path / "stages" / "probe.py"
    module.parent.mkdir(parents=True)
    (tmp_path / "src" / PACKAGE).mkdir(parents=True)
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
    module = STAGES_DIR / "train.py"
    closure = sorted(
        p.relative_to(src / PACKAGE).as_posix() for p in code_closure(module, src) if p != module
    )
    assert closure == [
        "errors.py",
        "io.py",
        "models/gpt2.py",
        "models/training.py",
        "pipeline/command.py",
        "pipeline/layout.py",
        "resources.py",
        "text/tokens.py",
    ]


def test_no_library_module_imports_a_stage_file():
    """``src/universal_neurons`` is a library usable without the repository: nothing in it
    imports ``stages`` (the stage files import the library, never the other way)."""
    for path in (REPO_ROOT / "src" / PACKAGE).rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = (
                [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            ) + ([node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n == "stages" or n.startswith("stages.") for n in names), path


def _pipelines_script():
    spec = importlib.util.spec_from_file_location(
        "pipelines", REPO_ROOT / "scripts" / "pipelines.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_preset_pipelines_are_generated_from_dvc_yaml():
    """``scripts/pipelines.py --check``: each dvc.preset.yaml is what the generator writes from
    dvc.yaml and the stage files, so a change there reaches the presets or fails here."""
    pipelines = _pipelines_script()
    assert [path.name for path in pipelines.presets()] == [p.parent.name for p in PRESETS]
    for preset in PRESETS:
        assert preset.read_text() == pipelines.preset_text(preset.parent), preset
    assert pipelines.main(check=True) == 0


def test_a_preset_follows_dvc_yaml(monkeypatch, tmp_path):
    """An edit of dvc.yaml's stats entry (a new plot) shows in every generated preset."""
    pipelines = _pipelines_script()
    raw = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())
    raw["stages"]["stats"].setdefault("plots", []).append({"metrics/extra.csv": {"cache": False}})
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    preset = PRESETS[0].parent
    before = pipelines.preset_text(preset)
    monkeypatch.setattr(pipelines, "ROOT", tmp_path)
    (tmp_path / "stages").symlink_to(REPO_ROOT / "stages")
    (tmp_path / "src").symlink_to(REPO_ROOT / "src")
    after = pipelines.preset_text(preset)
    assert "metrics/extra.csv" in after and "metrics/extra.csv" not in before


@pytest.mark.parametrize("preset", PRESETS, ids=[p.parent.name for p in PRESETS])
def test_every_parameter_a_preset_stage_lists_is_in_its_params_file(preset):
    """DVC reads the parameter file itself: a section that only has defaults in config.py
    (the presets lacked ``stats``) stops ``dvc repro`` at that stage."""
    raw = yaml.safe_load((preset.parent / "params.yaml").read_text())
    assert missing_params(preset, raw) == []


def test_validate_names_a_listed_parameter_the_file_lacks(tmp_path):
    """The validate stage, first in the pipeline, finds it before any stage runs."""
    from conftest import invoke_command

    preset = PRESETS[0].parent
    shutil.copy(preset / "dvc.preset.yaml", tmp_path / "dvc.yaml")
    raw = yaml.safe_load((preset / "params.yaml").read_text())
    del raw["stats"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    result = invoke_command(["validate", "--params", str(tmp_path / "params.yaml")])
    assert result.exit_code == 2
    assert result.stderr == (
        f"error: {tmp_path / 'params.yaml'}: stats.neuron_chunk is missing, but stage "
        f"'weight_stats' of "
        f"{tmp_path / 'dvc.yaml'} lists it (DVC reads the file, not the defaults): add it, "
        "e.g. a stats: section as in the default params.yaml\n"
    )
    assert not (tmp_path / "data").exists()


def test_only_a_preset_of_full_pair_statistics_reruns_correlate_for_the_candidates():
    """correlate takes uncertainty_resamples' candidate links only for a group of at most
    correlate.full_pairs_max_neurons neurons per model (``wiring.FULL_PAIRS_PARAMS``): the
    presets of such groups list those keys under correlate, the larger ones do not (a new
    uncertainty.candidates must not rerun GPT2-small's pass), and both pass the check."""
    from universal_neurons.matching.preset_plan import ALL_PRESET_SHAPES
    from universal_neurons.pipeline.wiring import FULL_PAIRS_PARAMS

    keys = set(FULL_PAIRS_PARAMS["correlate"])
    default = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]["correlate"]
    assert keys < dvc_params(default)
    full = {}
    for preset in PRESETS:
        entry = yaml.safe_load(preset.read_text())["stages"]["correlate"]
        n_layers, d_mlp = ALL_PRESET_SHAPES[preset.parent.name][:2]
        full[preset.parent.name] = n_layers * d_mlp <= 8192
        assert (keys <= dvc_params(entry)) == full[preset.parent.name], preset
        assert "baseline" in dvc_params(entry)
    assert full["polypythia-14m"] and not full["gpt2-small"]
