"""Model groups: the paper's pretrained seed groups as presets, resolved to hub ids or local dirs.

Member ``i`` (1-based) of a group becomes ``models/seed{i}`` (the fetch stage), so every
analysis stage runs on it unchanged; ``models/seed{i}/source.json`` records what it is.
Hub ids are those TransformerLens lists in ``transformer_lens.supported_models``
(TransformerLens aliases ``stanford-gpt2-small-a`` ... ``-e``, ``stanford-gpt2-medium-a``
... ``-e``, ``pythia-160m-seed1`` ... ``-seed3``).
"""

from __future__ import annotations

import json
from pathlib import Path

from universal_neurons.config import GroupConfig, TrainConfig
from universal_neurons.errors import UserError
from universal_neurons.models.checkpoints import (
    INITIAL,
    CheckpointError,
    CheckpointSource,
    checkpoint_dir,
    checkpoint_source,
    final_tokens,
)
from universal_neurons.models.loading import ModelLoadError, resolve_model_source
from universal_neurons.text.tokens import MIN_VOCAB

PRESETS: dict[str, list[str]] = {
    "gpt2-small": [  # the paper's GPT2-small seeds a-e (Mistral / stanford-crfm)
        "stanford-crfm/alias-gpt2-small-x21",
        "stanford-crfm/battlestar-gpt2-small-x49",
        "stanford-crfm/caprica-gpt2-small-x81",
        "stanford-crfm/darkmatter-gpt2-small-x343",
        "stanford-crfm/expanse-gpt2-small-x777",
    ],
    "gpt2-medium": [  # GPT2-medium seeds a-e
        "stanford-crfm/arwen-gpt2-medium-x21",
        "stanford-crfm/beren-gpt2-medium-x49",
        "stanford-crfm/celebrimbor-gpt2-medium-x81",
        "stanford-crfm/durin-gpt2-medium-x343",
        "stanford-crfm/eowyn-gpt2-medium-x777",
    ],
    "pythia-160m": [  # Pythia-160m trained with seeds 1-3
        "EleutherAI/pythia-160m-seed1",
        "EleutherAI/pythia-160m-seed2",
        "EleutherAI/pythia-160m-seed3",
    ],
    # PolyPythia (van der Wal et al., 2025): nine seeds per size, the same data
    **{
        f"polypythia-{size}": [f"EleutherAI/pythia-{size}-seed{seed}" for seed in range(1, 10)]
        for size in ("14m", "31m", "70m", "160m", "410m")
    },
    # Pythia-160m with only the data order (data-seed) or only the initialisation
    # (weight-seed) changed: which of the two makes a neuron universal
    "polypythia-160m-data-seed": [f"EleutherAI/pythia-160m-data-seed{s}" for s in (1, 2, 3)],
    "polypythia-160m-weight-seed": [f"EleutherAI/pythia-160m-weight-seed{s}" for s in (1, 2, 3)],
}


class GroupError(UserError):
    """A group that cannot be resolved; the message names the parameter."""


def group_members(config: GroupConfig) -> list[tuple[str, str]]:
    """``[(label, source)]`` in seed order (member i is seed i): source = local dir or hub id.

    For a preset, a member's source is, in order: ``group.models[repo name or hub id]``,
    ``<group.local_dir>/<repo name>`` when ``local_dir`` is set, else the hub id.
    """
    if config.preset == "trained":
        raise GroupError("group.preset=trained: the models come from the train stage, not fetch")
    if config.preset == "custom":
        return list(config.models.items())
    members = []
    known = set()
    for hub_id in PRESETS[config.preset]:
        repo = hub_id.split("/", 1)[1]
        known.update((repo, hub_id))
        source = config.models.get(repo) or config.models.get(hub_id)
        if source is None:
            source = str(Path(config.local_dir) / repo) if config.local_dir else hub_id
        members.append((repo, source))
    unknown = sorted(set(config.models) - known)
    if unknown:
        raise GroupError(
            f"group.models: {unknown} are not members of the {config.preset} preset "
            f"({', '.join(hub.split('/', 1)[1] for hub in PRESETS[config.preset])})"
        )
    return members


def member(config: GroupConfig, seed: int, seeds: list[int]) -> tuple[str, str]:
    """``(label, source)`` of seed ``seed`` (1-based member number); checks ``train.seeds``."""
    members = group_members(config)
    bad = [s for s in seeds if not 1 <= s <= len(members)]
    if bad:
        raise GroupError(
            f"train.seeds: {bad} are not members of group {config.preset} "
            f"(seeds 1..{len(members)} = {', '.join(label for label, _ in members)})"
        )
    if seed not in seeds:
        raise GroupError(f"--seed: {seed} is not one of train.seeds {seeds}")
    return members[seed - 1]


def preset_hub_id(config: GroupConfig, seed: int) -> str | None:
    """The hub id of member ``seed`` of a preset (None for a custom group)."""
    return PRESETS[config.preset][seed - 1] if config.preset in PRESETS else None


def _usable_tokenizer(auto_tokenizer, source: str):
    """The tokenizer saved with the model ``source``, or None when it has none or an unusable
    one (fewer than ``MIN_VOCAB`` entries): then ``tokenizer.path`` must name another."""
    try:
        tokenizer = auto_tokenizer.from_pretrained(source)
    except Exception as exc:  # transformers and tokenizers raise many kinds for a broken file
        tokenizer_file = Path(source) / "tokenizer.json"
        if tokenizer_file.is_file():
            if tokenizer_file.is_relative_to(Path.cwd()):  # named as the user gave it
                tokenizer_file = tokenizer_file.relative_to(Path.cwd())
            raise ModelLoadError(
                f"{tokenizer_file}: not a usable tokenizer ({type(exc).__name__}: "
                f"{str(exc)[:120]}); repair or remove it (a member without one needs "
                "tokenizer.path)"
            ) from None
        return None
    return tokenizer if len(tokenizer) >= MIN_VOCAB else None


def fetch_model(label: str, source: str, output_dir: Path, revision: str | None = None) -> dict:
    """Write the model ``source`` (local dir or hub id, at ``revision`` if given) to
    ``output_dir`` in Hugging Face format.

    Weights as safetensors (converted from ``*.bin`` if needed), config and tokenizer
    files, and ``source.json`` (``label, source``). Nothing is downloaded when ``source``
    is a local directory; a hub id needs the hub (else a clear ``ModelLoadError``).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    resolved = resolve_model_source(source)
    at = {"revision": revision} if revision else {}
    model = AutoModelForCausalLM.from_pretrained(resolved, **at)
    output_dir.mkdir(parents=True)
    model.save_pretrained(output_dir, safe_serialization=True)
    tokenizer = _usable_tokenizer(AutoTokenizer, resolved)
    if tokenizer is not None:
        tokenizer.save_pretrained(output_dir)
    info = {
        "label": label,
        "source": source,
        "architecture": type(model).__name__,
        "tokenizer": tokenizer is not None,
    }
    if revision:
        info["revision"] = revision
    (output_dir / "source.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return info


def fetch_member(
    config: GroupConfig, train: TrainConfig, seed: int, output_dir: Path, initial: bool = False
) -> dict:
    """Member ``seed`` of the group into ``output_dir``, as the train stage lays out a model:
    the final model, one ``checkpoints/tokens_{T}/`` (with ``checkpoint.json``) per
    ``train.checkpoint_tokens``, with ``initial`` also the member at step 0 (``INITIAL``, the
    null group), and ``training.json`` (its seed and training tokens). Every checkpoint is
    located before anything is written: a missing one stops the stage at once."""
    label, source = member(config, seed, train.seeds)
    hub_id = preset_hub_id(config, seed)
    total = final_tokens(label, source, hub_id, train.tokens_per_model)
    points = [
        (checkpoint_dir(t), checkpoint_source(label, source, hub_id, t))
        for t in train.checkpoint_tokens
    ]
    if initial:
        points.append((INITIAL, _initial_source(label, source, hub_id)))
    info = fetch_model(label, source, output_dir)
    for below, point in points:
        _fetch_checkpoint(label, point, output_dir / below)
    training = {"seed": seed, "tokens": total, "source": source}
    (output_dir / "training.json").write_text(json.dumps(training, indent=2, sort_keys=True) + "\n")
    return info | {"checkpoints": [below for below, _ in points], "tokens": total}


def _initial_source(label: str, source: str, hub_id: str | None) -> CheckpointSource:
    """Where member ``label`` was at step 0 (the null group); the error says how to do without."""
    try:
        return checkpoint_source(label, source, hub_id, 0, key="uncertainty.null_group")
    except CheckpointError as exc:
        raise CheckpointError(
            f"{exc}; or set uncertainty.null_group: none (no null control)"
        ) from None


def _fetch_checkpoint(label: str, point: CheckpointSource, target: Path) -> None:
    """One checkpoint into ``target``, with its ``checkpoint.json``."""
    fetch_model(label, point.where, target, point.revision)
    (target / "checkpoint.json").write_text(json.dumps(point.record(), sort_keys=True) + "\n")
