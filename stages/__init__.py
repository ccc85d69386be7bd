"""The pipeline's stages, one file each: ``dvc.yaml`` runs ``python stages/<name>.py``.

Each file declares its stage as ``COMMAND = Stage(...)`` (parameters, inputs, outputs, ``run``)
and ends with ``stage_main(COMMAND, __doc__)``, its command line. Nothing in the library
(``src/universal_neurons``) imports these files; ``all_stages()`` lists them for the wiring
check (``universal_neurons.pipeline.wiring``), the generated preset pipelines and the tests.
"""

from __future__ import annotations

import importlib
from pathlib import Path

STAGES_DIR = Path(__file__).resolve().parent


def stage_names() -> list[str]:
    """The name of every stage file, sorted."""
    return sorted(p.stem for p in STAGES_DIR.glob("*.py") if p.name != "__init__.py")


def all_stages() -> list:
    """Every stage's ``Stage`` declaration (imports every stage file), sorted by name."""
    return [importlib.import_module(f"stages.{name}").COMMAND for name in stage_names()]
