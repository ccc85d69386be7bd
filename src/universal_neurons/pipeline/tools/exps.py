"""Compare the DVC experiments: `dvc exp show --only-changed` without hash columns.

Once a parameter changes, every intermediate output that a later stage reads gets a new hash,
and `dvc exp show` gives each of them a column of hashes (about twenty here), which pushes the
table far past a terminal's width. This prints the same table without them: the changed
parameters and the headline metrics (`metrics/*.json`).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import click
import yaml

from universal_neurons.errors import UserError
from universal_neurons.pipeline.command import Command
from universal_neurons.pipeline.layout import Layout

OUTPUT_COLUMNS = r"^(data|models|report|results|metrics|tracking)(/[^:]*)?$"
"""The columns `dvc exp show` adds for data dependencies (paths of stage outputs). Not a
metric that DVC names with its file (``metrics/universality.json:mean_percent_universal``,
when another metrics file has the same key)."""
DETAIL_COLUMNS = (
    r"^(mean_percent_mutual_all|mean_percent_one_to_one_universal|universal_also_one_to_one"
    r"|available|roles_.*|median_delta_loss_.*|fraction_exceeding_controls"
    r"|mean_partner_effect_corr|(seed\d+\.)?(mean_)?percent_universal_(lo|hi)"
    r"|metrics/one_to_one\.json:.*)$"
)
"""The headline keys of the one-to-one, effects and uncertainty stages: in `dvc exp show`,
`dvc metrics show` and MLflow, left out of this compact comparison (it fits 200 columns)."""


def exp_show_command(output_format: str | None) -> list[str]:
    """The ``dvc exp show`` command line (``output_format``: ``csv``, ``md`` or None)."""
    drop = f"{OUTPUT_COLUMNS}|{DETAIL_COLUMNS}"
    command = ["dvc", "exp", "show", "--only-changed", "--drop", drop, "--no-pager"]
    return command + ([f"--{output_format}"] if output_format else [])


def check_lock(lock: Path) -> None:
    """``dvc.lock``, where it exists, is a YAML mapping: DVC shows a corrupt one as a blank
    row and exits 0."""
    if not lock.is_file():
        return
    try:
        content = yaml.safe_load(lock.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise UserError(f"{lock}: not valid YAML{at}; restore it: git checkout {lock}") from None
    if not isinstance(content, dict) or "stages" not in content:
        raise UserError(f"{lock}: holds no stages; restore it: git checkout {lock}")


def run(layout: Layout, output_format: str | None) -> None:
    """Print the experiments table of the repository at ``layout.root``."""
    check_lock(layout.dvc_files[1])
    if shutil.which("dvc") is None:
        raise UserError("exps: the dvc command is not on PATH (activate the project's .venv)")
    done = subprocess.run(exp_show_command(output_format), cwd=layout.root)
    if done.returncode != 0:
        raise UserError(f"exps: dvc exp show failed with status {done.returncode}")


COMMAND = Command(
    name="exps",
    run=run,
    render=lambda _: None,
    options=[
        click.option("--csv", "output_format", flag_value="csv", help="CSV instead of a table."),
        click.option("--md", "output_format", flag_value="md", help="Markdown instead of a table."),
    ],
    needs_params=False,
)
