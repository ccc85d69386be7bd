"""Stage fetch: member SEED of params.group (a preset or custom group) -> models/seed{SEED}.

Replaces the train stage in the preset pipelines (``pipelines/<preset>/dvc.preset.yaml``): the
analysis stages then read ``models/seed{s}`` exactly as they read trained models, the emergence
stages included: each ``train.checkpoint_tokens`` checkpoint (a hub revision or a local
directory, ``models.checkpoints``) goes to ``models/seed{s}/checkpoints/tokens_{T}/``, and
``training.json`` records ``train.tokens_per_model`` as the final model's training tokens.
With ``uncertainty.null_group: untrained`` the member at step 0 goes to
``models/seed{s}/checkpoints/tokens_0/``: the null stages' untrained group.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from universal_neurons.io import atomic_path, check_not_output
from universal_neurons.models.group import fetch_member, member
from universal_neurons.pipeline.command import Out, Stage
from universal_neurons.pipeline.layout import Layout
from universal_neurons.pipeline.runner import stage_main

if TYPE_CHECKING:
    from universal_neurons.config import Params


def run(params: Params, layout: Layout, seed: int) -> dict:
    """Fetch member ``seed`` of the group into ``models/seed{seed}``."""
    label, source = member(params.group, seed, params.train.seeds)
    check_not_output(source, layout.model(seed), f"group.models: member {seed} ({label})")
    with atomic_path(layout.model(seed)) as temp:
        initial = params.uncertainty.null_group == "untrained"
        return fetch_member(params.group, params.train, seed, temp, initial)


COMMAND = Stage(
    name="fetch",
    params=(
        "group",
        "train.seeds",
        "train.checkpoint_tokens",
        "train.tokens_per_model",
        "uncertainty.null_group",
    ),
    outputs=lambda layout, seed: [Out(layout.model(seed))],
    run=run,
    per_seed=True,
    seed_help="Member number of the group (1-based).",
)

if __name__ == "__main__":
    stage_main(COMMAND, __doc__)
