"""Inputs that several stages read, and the one guard against mixing stale ones.

Every analysis output records the token set it was made from (``token_set`` in its
``summary.json``: split, sequences, kept positions, excluded ids, digest of the token ids;
``analysis.activations.token_set_record``) and the group (``group``: its model names). A stage
that reads two or more upstream outputs hands their summaries to ``check_same_inputs``
before it computes anything: outputs of different token sets or groups (one stage rerun
with other parameters, the next not yet) stop the stage with one line naming both files.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from universal_neurons.errors import UserError
from universal_neurons.io import read_json
from universal_neurons.pipeline.layout import Layout, model_name

if TYPE_CHECKING:
    from universal_neurons.config import Params

TOKEN_SET_KEYS = ("split", "sequences", "kept_positions", "excluded_ids", "tokens_sha256")


class StaleInputError(UserError):
    """Upstream outputs that were made from different token sets or groups."""


def summary_of(path: Path) -> dict:
    """An upstream output's ``summary.json``, checked to record its token set."""
    summary = read_json(path)
    if not isinstance(summary, dict) or not isinstance(summary.get("token_set"), dict):
        raise StaleInputError(
            f"{path}: records no token set (written by an older version); rerun its stage"
        )
    return summary


def _first_difference(a: dict, b: dict) -> str | None:
    """The first key of the token-set record where ``a`` and ``b`` differ."""
    return next((key for key in TOKEN_SET_KEYS if a.get(key) != b.get(key)), None)


def check_same_inputs(summaries: dict[Path, dict], group: list[str] | None = None) -> None:
    """Every summary (``{file: summary}``) records the same token set, and every one that
    names a group (``group``) or a model (``model``) belongs to ``group`` (default: the first
    one's group); else one line naming the two files and what differs."""
    (first_path, first), *rest = summaries.items()
    group = group if group is not None else first.get("group")
    for path, summary in summaries.items():
        key = _first_difference(first["token_set"], summary["token_set"])
        if key is not None:
            raise StaleInputError(
                f"{path}: made from another token set than {first_path} ({key} "
                f"{summary['token_set'].get(key)!r} vs {first['token_set'].get(key)!r}); "
                "rerun the stages between them (dvc repro)"
            )
        names = summary.get("group", [summary["model"]] if "model" in summary else None)
        if group is not None and names is not None and not set(names) <= set(group):
            raise StaleInputError(
                f"{path}: made for models {names}, but {first_path} is about {group}; "
                "rerun the stages between them (dvc repro)"
            )


def group_names(params: Params) -> list[str]:
    """The model names of ``train.seeds``."""
    return [model_name(seed) for seed in params.train.seeds]


def correlate_summary(params: Params, layout: Layout) -> dict:
    """correlate's ``summary.json``, checked to be about the models of ``train.seeds``."""
    path = layout.stage_dir("correlate") / "summary.json"
    summary = summary_of(path)
    if summary["models"] != group_names(params):
        raise StaleInputError(
            f"{path}: models {summary['models']} do not match "
            f"train.seeds {params.train.seeds}; rerun correlate"
        )
    return summary


def collect_summaries(params: Params, layout: Layout) -> dict[Path, dict]:
    """``{file: summary}`` of collect's output of every model of ``train.seeds``."""
    paths = [layout.model_dir("collect", seed) / "summary.json" for seed in params.train.seeds]
    return {path: summary_of(path) for path in paths}
