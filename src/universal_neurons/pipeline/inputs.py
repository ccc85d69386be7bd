"""Inputs that several stages read, and the one guard against mixing stale ones.

Every analysis output records what it was made from in its ``summary.json``
(``Layout.summary``): the token set (``token_set``: split, sequences, kept positions,
excluded ids, digest of the token ids; ``analysis.activations.token_set_record``) and the
group (``group``: its model names) or the model (``model``), plus what the stage adds of its
own. ``Provenance`` is that record; ``CorrelateSummary`` the correlate stage's whole summary,
which the stages after it read. A stage that reads two or more upstream outputs hands their
records to ``check_same_inputs`` before it computes anything: outputs of different token sets
or groups (one stage rerun with other parameters, the next not yet) stop the stage with one
line naming both files.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from universal_neurons.errors import UserError
from universal_neurons.io import read_json
from universal_neurons.pipeline.layout import Layout, model_name

if TYPE_CHECKING:
    from universal_neurons.config import Params

TOKEN_SET_KEYS = ("split", "sequences", "kept_positions", "excluded_ids", "tokens_sha256")


class StaleInputError(UserError):
    """Upstream outputs that were made from different token sets or groups."""


@dataclass(frozen=True)
class Provenance:
    """What an analysis output was made from: the token set's record (``token_set_record``)
    and the models (``group``: every model name; ``model``: the one model of a per-model
    output); ``extra``: the stage's own keys of its ``summary.json``."""

    token_set: dict[str, Any]
    group: list[str] | None = None
    model: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def models(self) -> list[str] | None:
        """The model names it is about (None: it names none)."""
        return self.group if self.group is not None else ([self.model] if self.model else None)

    def as_dict(self) -> dict[str, Any]:
        """The ``summary.json`` document: the set keys and ``extra``."""
        named = {"token_set": self.token_set, "group": self.group, "model": self.model}
        return self.extra | {key: value for key, value in named.items() if value is not None}


@dataclass(frozen=True, kw_only=True)
class CorrelateSummary:
    """correlate's ``summary.json``: the group and its ordered pairs (``seed1__seed2``), the
    token set, the pass (kept positions, batches, precision, device), the shape, the dead
    neurons per model, and whether it wrote full pair statistics (``outputs: full_pairs``) or
    per-neuron maxima (``maxima``, with the baseline draws of ``baseline`` taken in its units)."""

    models: list[str]
    pairs: list[str]
    kept_positions: int
    batches: int
    n_layers: int
    d_mlp: int
    products: str
    device: str
    dead: dict[str, int]
    excluded_ids: list[int]
    token_set: dict[str, Any]
    outputs: str = "full_pairs"
    baseline: dict[str, Any] | None = None
    units: dict[str, Any] | None = None

    @property
    def provenance(self) -> Provenance:
        """Its token set and group."""
        return Provenance(self.token_set, group=self.models)

    def as_dict(self) -> dict[str, Any]:
        """The ``summary.json`` document (``group`` repeats ``models``; unset keys left out)."""
        found = {key: value for key, value in asdict(self).items() if value is not None}
        return found | {"group": self.models}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> CorrelateSummary:
        """The record of a ``summary.json`` document."""
        raw = {key: value for key, value in raw.items() if key != "group"}
        return cls(**raw)


def write_summary(path: Path, document: dict[str, Any]) -> None:
    """Write a ``summary.json`` (``Layout.summary``) inside a stage's temporary output."""
    path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")


def _read_summary(path: Path) -> dict[str, Any]:
    summary = read_json(path)
    if not isinstance(summary, dict) or not isinstance(summary.get("token_set"), dict):
        raise StaleInputError(
            f"{path}: records no token set (written by an older version); rerun its stage"
        )
    return summary


def summary_of(path: Path) -> Provenance:
    """An upstream output's ``summary.json``, checked to record its token set."""
    raw = _read_summary(path)
    extra = {k: v for k, v in raw.items() if k not in ("token_set", "group", "model")}
    return Provenance(raw["token_set"], raw.get("group"), raw.get("model"), extra)


def _first_difference(a: dict, b: dict) -> str | None:
    """The first key of the token-set record where ``a`` and ``b`` differ."""
    return next((key for key in TOKEN_SET_KEYS if a.get(key) != b.get(key)), None)


def check_same_inputs(summaries: dict[Path, Provenance], group: list[str] | None = None) -> None:
    """Every record (``{file: Provenance}``) has the same token set, and every one that
    names a group or a model belongs to ``group`` (default: the first one's group); else one
    line naming the two files and what differs."""
    (first_path, first), *rest = summaries.items()
    group = group if group is not None else first.group
    for path, summary in summaries.items():
        key = _first_difference(first.token_set, summary.token_set)
        if key is not None:
            raise StaleInputError(
                f"{path}: made from another token set than {first_path} ({key} "
                f"{summary.token_set.get(key)!r} vs {first.token_set.get(key)!r}); "
                "rerun the stages between them (dvc repro)"
            )
        names = summary.models()
        if group is not None and names is not None and not set(names) <= set(group):
            raise StaleInputError(
                f"{path}: made for models {names}, but {first_path} is about {group}; "
                "rerun the stages between them (dvc repro)"
            )


def group_names(params: Params) -> list[str]:
    """The model names of ``train.seeds``."""
    return [model_name(seed) for seed in params.train.seeds]


def correlate_summary(params: Params, layout: Layout) -> CorrelateSummary:
    """correlate's ``summary.json``, checked to be about the models of ``train.seeds``."""
    path = layout.summary("correlate")
    raw = _read_summary(path)
    unknown = sorted(set(raw) - {f.name for f in fields(CorrelateSummary)} - {"group"})
    missing = sorted(
        f.name for f in fields(CorrelateSummary) if f.default is MISSING and f.name not in raw
    )
    if unknown or missing:
        raise StaleInputError(
            f"{path}: written by another version (keys {unknown} unknown, {missing} missing); "
            "rerun correlate"
        )
    summary = CorrelateSummary.from_dict(raw)
    if summary.models != group_names(params):
        raise StaleInputError(
            f"{path}: models {summary.models} do not match "
            f"train.seeds {params.train.seeds}; rerun correlate"
        )
    return summary


def check_model_of_folder(path: Path, summary: Provenance, name: str) -> None:
    """A per-model output (``data/collect/seed1``) must name the model of its folder: an
    output copied or moved from another model's folder is refused, not read as this one's.
    (The check is by name: the outputs record the model's name, not a hash of its weights.)"""
    if summary.model != name:
        raise StaleInputError(
            f"{path}: made for model {summary.model!r}, but it lies in the folder of {name}; "
            f"rerun its stage for {name} (was another model's output copied here?)"
        )


def check_trained_model_of_folder(layout: Layout, seed: int) -> None:
    """A trained model's folder (``models/seed1``) must hold the model of its seed, as its
    ``training.json`` records it: a model copied from another seed's folder is refused."""
    path = layout.model(seed) / "training.json"
    if not path.is_file():
        return  # a fetched member, or no model at all: the model's loader names that
    recorded = read_json(path)
    trained = recorded.get("seed") if isinstance(recorded, dict) else None
    if trained != seed:
        raise StaleInputError(
            f"{path}: the model was trained with seed {trained!r}, but it lies in the folder "
            f"of seed {seed}; retrain {model_name(seed)} (was another seed's model copied here?)"
        )


def collect_summaries(params: Params, layout: Layout) -> dict[Path, Provenance]:
    """``{file: Provenance}`` of collect's output of every model of ``train.seeds``, each
    checked to be about the model of its folder (``check_model_of_folder``)."""
    found = {}
    for seed in params.train.seeds:
        path = layout.summary("collect", seed)
        found[path] = summary_of(path)
        check_model_of_folder(path, found[path], model_name(seed))
    return found
