"""Stage collect: per-neuron moments and within-layer covariance of one model.

One model, one streaming pass -> per-neuron moments + within-layer covariance.

Writes ``data/collect/seed{s}/``: ``moments.parquet`` (one row per neuron) and ``summary.json``;
above ``correlate.full_pairs_max_neurons`` neurons per model also ``within_layer_cov.npy``
(float64 ``[layers, d_mlp, d_mlp]``, population covariance of post-activations over the kept
positions), which correlate's units and uncertainty_resamples' slabs read there. Below it
correlate takes the covariances by this same pass in its own process (``correlate.
within_covariances``): 4 MB a model that every change of ``analysis.*`` would add to git
(docs/sharing.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from universal_neurons.errors import UserError
from universal_neurons.io import atomic_path
from universal_neurons.matching.activations import (
    activation_memory,
    load_analysis_set,
    token_set_record,
)
from universal_neurons.matching.collect import CollectResult, collect_model, moments_table
from universal_neurons.models.loading import (
    check_device,
    check_fits_tokens,
    load_model,
    model_spec,
)
from universal_neurons.pipeline.command import Out, Stage
from universal_neurons.pipeline.inputs import check_trained_model_of_folder, write_summary
from universal_neurons.pipeline.layout import SUMMARY_FILE, Layout, model_name
from universal_neurons.pipeline.runner import stage_main
from universal_neurons.resources import check_memory
from universal_neurons.text.tokens import tokenizer_vocab

if TYPE_CHECKING:
    from universal_neurons.config import Params


def _summary(result: CollectResult, name: str, sequences: int, excluded: np.ndarray) -> dict:
    """``summary.json`` of one model's pass (its token set is added by ``run``)."""
    return {
        "model": name,
        "kept_positions": int(result.kept_positions),
        "sequences": int(sequences),
        "batches": result.batches,
        "excluded_ids": [int(i) for i in excluded],
        "n_layers": result.n_layers,
        "d_mlp": result.d_mlp,
        "zero_variance_post": int((result.moments["post"].var == 0).sum()),
    }


def _check_memory(cfg, layout: Layout, seed: int, spec, shape: tuple[int, int]) -> None:
    """Stop before the pass if its within-layer covariance and one batch's activations need
    more memory than there is."""
    n_layers, d_mlp = spec.n_layers, spec.d_mlp
    within = (f"{layout.model(seed)} (d_mlp={d_mlp})", 3 * 8 * n_layers * d_mlp * d_mlp)
    batch = activation_memory(cfg, shape, n_layers, d_mlp)
    check_memory(
        {"within-layer covariance": within, "activations of one batch": batch},
        f"collecting {model_name(seed)}",
    )


def writes_within(params: Params, n_layers: int, d_mlp: int) -> bool:
    """Whether collect writes the within-layer covariances: only above
    ``correlate.full_pairs_max_neurons`` neurons per model (see the module's docstring)."""
    return not params.correlate.full_pairs(n_layers * d_mlp)


def run(params: Params, layout: Layout, seed: int, progress: bool = True) -> dict:
    """Collect the statistics of the model of ``seed``; return the summary."""
    if seed not in params.train.seeds:
        raise UserError(f"--seed: {seed} is not one of train.seeds {params.train.seeds}")
    cfg = params.analysis
    name = model_name(seed)
    check_device(cfg.device)
    tokens, excluded, kept = load_analysis_set(layout.tokens, cfg)
    check_trained_model_of_folder(layout, seed)
    model = load_model(str(layout.model(seed)), device=cfg.device)
    spec = model_spec(model)
    check_fits_tokens(spec, name, tokens, *tokenizer_vocab(layout.tokens))
    _check_memory(cfg, layout, seed, spec, tokens.shape)
    result = collect_model(
        model, name, tokens, excluded, cfg.batch_size, device=cfg.device, progress=progress
    )
    assert result.kept_positions == kept, (result.kept_positions, kept)
    summary = _summary(result, name, len(tokens), excluded)
    summary["token_set"] = token_set_record(tokens, excluded, kept, cfg.split)
    with atomic_path(layout.model_dir("collect", seed)) as temp:
        temp.mkdir()
        moments_table(result).to_parquet(temp / "moments.parquet", index=False)
        if writes_within(params, spec.n_layers, spec.d_mlp):
            with (temp / "within_layer_cov.npy").open("wb") as handle:
                np.save(handle, result.within_layer_covariance(), allow_pickle=False)
        write_summary(temp / SUMMARY_FILE, summary)
    return summary


COMMAND = Stage(
    name="collect",
    params=("analysis", "correlate.full_pairs_max_neurons", "train.seeds"),
    inputs=lambda layout, seed: [layout.tokens, layout.model(seed)],
    outputs=lambda layout, seed: [Out(layout.model_dir("collect", seed))],
    run=run,
    per_seed=True,
    seed_help="Which seed of train.seeds to collect.",
)

if __name__ == "__main__":
    stage_main(COMMAND, __doc__)
