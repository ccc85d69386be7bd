"""Print the headline metrics, one per line: what `dvc metrics show` holds, readable in a terminal.

`dvc metrics show` puts every key of every metrics file in a column of one table (385 columns
wide here: each model's percentage is a column of its own). This prints the same numbers from
the metrics files that `dvc.yaml` declares, a file at a time, ``key  value`` per line, numbers
to 4 significant digits. `dvc metrics diff --md` compares them with another revision.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import yaml

from universal_neurons.errors import UserError
from universal_neurons.pipeline.command import Command
from universal_neurons.pipeline.layout import Layout


def declared_metrics(dvc_yaml: Path) -> list[str]:
    """The files listed under ``metrics`` by the stages of ``dvc_yaml``, in its order."""
    if not dvc_yaml.is_file():
        raise UserError(f"{dvc_yaml}: not found (run this in the project's folder)")
    stages = (yaml.safe_load(dvc_yaml.read_text(encoding="utf-8")) or {}).get("stages") or {}
    found = []
    for entry in stages.values():
        for item in entry.get("do", entry).get("metrics") or []:
            found.append(next(iter(item)) if isinstance(item, dict) else item)
    return found


def flat_items(value: object, prefix: str = "") -> Iterator[tuple[str, object]]:
    """``(dotted key, value)`` of every leaf of a JSON document."""
    if isinstance(value, dict):
        for key, child in value.items():
            yield from flat_items(child, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, value


def shown_value(value: object) -> str:
    """A metric as text: 4 significant digits for a float, JSON for a list."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return json.dumps(value) if isinstance(value, list) else str(value)


def metrics_text(root: Path) -> str:
    """Every declared metrics file under ``root``: its name, then ``key  value`` lines."""
    blocks = []
    for name in declared_metrics(root / "dvc.yaml"):
        path = root / name
        if not path.is_file():
            blocks.append(f"{name}: not written yet (dvc repro)")
            continue
        items = list(flat_items(json.loads(path.read_text(encoding="utf-8"))))
        width = max((len(key) for key, _ in items), default=0)
        lines = [f"  {key:<{width}}  {shown_value(value)}" for key, value in items]
        blocks.append("\n".join([name, *lines]))
    return "\n\n".join(blocks)


def run(layout: Layout) -> str:
    """The metrics of the project at ``layout.root``."""
    return metrics_text(layout.root)


COMMAND = Command(name="metrics", run=run, needs_params=False)
