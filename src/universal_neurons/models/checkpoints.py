"""Training checkpoints of a fetched group: where member ``i`` was after ``T`` training tokens.

The emergence stages read a group's checkpoints at ``models/seed{i}/checkpoints/tokens_{T}/``
(one per ``train.checkpoint_tokens``) and the tokens of the final model from
``models/seed{i}/training.json``, whether the train stage wrote them or the fetch stage. For a
pretrained member the fetch stage finds checkpoint ``T`` here:

- a hub model of a family that publishes checkpoints as revisions (``SCHEDULES``: the Stanford
  CRFM GPT-2 seeds, ``checkpoint-{step}``; Pythia and PolyPythia, ``step{step}``): the revision
  of step ``T / tokens_per_step``, which must be a published step;
- a member given as a local directory ``D``: ``D/checkpoints/<that revision>`` for such a
  family (e.g. ``huggingface-cli download EleutherAI/pythia-14m-seed1 --revision step1000
  --local-dir D/checkpoints/step1000``), and ``D/checkpoints/tokens_{T}`` for any other model
  (the train stage's own layout, so another project's trained group is a custom group).

The null group of a pretrained group (``uncertainty.null_group: untrained``) is its members at
step 0, ``T = 0``: fetched the same way into ``models/seed{i}/checkpoints/tokens_0/`` (``INITIAL``).

The published steps are TransformerLens's (``get_checkpoint_labels``); the tokens per step are
the families' batch sizes: GPT-2 (Mistral) 512 sequences x 1,024 tokens, Pythia 1,024 x 2,048.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from universal_neurons.errors import UserError
from universal_neurons.io import read_json


class CheckpointError(UserError):
    """A checkpoint that cannot be found; the message names the parameter."""


@dataclass(frozen=True)
class Schedule:
    """A model family's published checkpoints: ``steps`` (optimizer steps with a checkpoint,
    increasing, the last one the final model), ``tokens_per_step`` (training tokens per step)
    and ``revision`` (the hub revision of a step, ``{step}`` in it)."""

    family: str
    tokens_per_step: int
    steps: tuple[int, ...]
    revision: str

    @property
    def total_tokens(self) -> int:
        """Training tokens of the final model."""
        return self.steps[-1] * self.tokens_per_step

    def revision_at(self, tokens: int) -> str:
        """The revision of the checkpoint after ``tokens`` training tokens (a published step)."""
        step, rest = divmod(tokens, self.tokens_per_step)
        if rest or step not in self.steps:
            around = [max((s for s in self.steps if s <= step), default=None)]
            around.append(min((s for s in self.steps if s > step), default=None))
            shown = [f"{s * self.tokens_per_step:,} (step {s:,})" for s in around if s is not None]
            raise CheckpointError(
                f"train.checkpoint_tokens: {tokens:,} is not a published {self.family} checkpoint "
                f"(steps of {self.tokens_per_step:,} tokens); the published checkpoints around "
                f"it are {' and '.join(shown)}"
            )
        return self.revision.format(step=step)


def _schedules() -> dict[str, Schedule]:
    from transformer_lens.tools.model_registry.checkpoints import (
        PYTHIA_CHECKPOINTS,
        STANFORD_CRFM_CHECKPOINTS,
    )

    return {
        "stanford-crfm/": Schedule(
            "Stanford CRFM GPT-2", 512 * 1024, tuple(STANFORD_CRFM_CHECKPOINTS), "checkpoint-{step}"
        ),
        "EleutherAI/pythia-": Schedule(
            "Pythia", 1024 * 2048, tuple(PYTHIA_CHECKPOINTS), "step{step}"
        ),
    }


def schedule(hub_id: str | None) -> Schedule | None:
    """The published checkpoints of the hub model ``hub_id`` (None: not a known family)."""
    if hub_id is None:
        return None
    return next((s for prefix, s in _schedules().items() if hub_id.startswith(prefix)), None)


def checkpoint_dir(tokens: int) -> str:
    """A checkpoint's directory below a model directory, as the train stage names it."""
    return f"checkpoints/tokens_{tokens}"


INITIAL = checkpoint_dir(0)
"""A fetched member at initialisation (step 0), below its model directory: the null group."""


@dataclass(frozen=True)
class CheckpointSource:
    """Where one member's checkpoint is: a local ``directory``, or ``hub_id`` at ``revision``."""

    tokens: int
    directory: Path | None = None
    hub_id: str | None = None
    revision: str | None = None

    @property
    def where(self) -> str:
        """The directory or hub id to load the checkpoint from (at ``revision``)."""
        return str(self.directory) if self.directory is not None else str(self.hub_id)

    def record(self) -> dict:
        """``checkpoint.json`` of the fetched checkpoint (the train stage's key ``tokens``): the
        tokens the source's own ``checkpoint.json`` records when it has one (the train stage
        saves after whole steps: 60,416 for 60,000 asked), else the tokens asked for."""
        own = self.directory / "checkpoint.json" if self.directory is not None else None
        seen = read_json(own).get("tokens", self.tokens) if own and own.is_file() else self.tokens
        return {"tokens": int(seen), "source": self.where, "revision": self.revision}


def checkpoint_source(
    label: str, source: str, hub_id: str | None, tokens: int, key: str = "train.checkpoint_tokens"
) -> CheckpointSource:
    """Where member ``label`` (given as ``source``: a local directory or a hub id; ``hub_id``:
    the preset's hub id of the member, if any) was after ``tokens`` training tokens (``key``:
    the parameter that asks for it, named in the errors)."""
    local = Path(source).expanduser()
    family = schedule(hub_id or (None if local.exists() else source))
    if local.is_dir():
        below = f"checkpoints/{family.revision_at(tokens)}" if family else checkpoint_dir(tokens)
        directory = local / below
        if not directory.is_dir():
            raise CheckpointError(
                f"{key}: member {label} has no checkpoint at {tokens:,} tokens: "
                f"{directory} does not exist (a local member holds its checkpoints as {below})"
            )
        return CheckpointSource(tokens, directory=directory)
    if family is None:
        raise CheckpointError(
            f"{key}: member {label} ({source}) is not of a family with "
            "published checkpoints (Stanford CRFM GPT-2, Pythia): give it as a local directory "
            f"holding {checkpoint_dir(tokens)}"
        )
    return CheckpointSource(tokens, hub_id=source, revision=family.revision_at(tokens))


def final_tokens(label: str, source: str, hub_id: str | None, tokens_per_model: int) -> int:
    """Training tokens of member ``label``'s final model: for a family with published checkpoints
    ``train.tokens_per_model``, which must be the family's total (a wrong x-axis otherwise); for
    a local folder with the train stage's ``training.json``, the tokens it records; else
    ``train.tokens_per_model``."""
    local = Path(source).expanduser()
    family = schedule(hub_id or (None if local.exists() else source))
    if family is not None:
        if tokens_per_model != family.total_tokens:
            raise CheckpointError(
                f"train.tokens_per_model: member {label} is a {family.family} model, trained on "
                f"{family.total_tokens:,} tokens ({family.steps[-1]:,} steps of "
                f"{family.tokens_per_step:,}), got {tokens_per_model:,}"
            )
        return tokens_per_model
    own = local / "training.json"
    return (
        int(read_json(own).get("tokens", tokens_per_model)) if own.is_file() else tokens_per_model
    )
