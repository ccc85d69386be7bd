"""fetch: member ``seed`` of a pretrained group (params.group) -> ``models/seed{seed}``.

Replaces the train stage in the preset pipelines (pipelines/<preset>/dvc.yaml): the
analysis stages then read ``models/seed{s}`` exactly as they read trained models.
"""

from pathlib import Path

from stages.paths import model_dir
from universal_neurons.config import Params
from universal_neurons.group import fetch_model, member
from universal_neurons.io import atomic_path


def run(params: Params, seed: int, output_dir: Path | None = None) -> dict:
    """Fetch member ``seed`` of the group into ``output_dir`` (default ``models/seed{seed}``)."""
    label, source = member(params.group, seed, params.train.seeds)
    with atomic_path(output_dir or model_dir(seed)) as temp:
        return fetch_model(label, source, temp)
