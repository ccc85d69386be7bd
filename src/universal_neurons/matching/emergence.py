"""Universality across training: the universality test of a group, run in memory on any
set of models (the training checkpoints of the seed group, or its final models).

``group_measures`` calls exactly the functions the collect, correlate, baseline and
universality stages call, in the same order, without files in between: given the final
models and the stages' analysis set it gives the universality stage's numbers (at a
threshold: ``GroupMeasures.at_threshold``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from transformers import AutoModelForCausalLM

from universal_neurons.config import AnalysisConfig, BaselineConfig, CorrelateConfig
from universal_neurons.matching.baseline import group_baselines
from universal_neurons.matching.collect import collect_model, moments_table
from universal_neurons.matching.pairs import correlate_group, pair_maxima, resolve_products
from universal_neurons.matching.universality import (
    mean_percent_universal,
    median_over_live,
    model_summary,
    universality_table,
)
from universal_neurons.models.training import heldout_loss


@dataclass(frozen=True)
class GroupUniversality:
    """The universality test of one group of models.

    ``tables``: per model, the neuron table (``MEASURE_COLUMNS`` and ``is_universal``, one
    row per neuron); ``summaries``: per model, ``universality.model_summary``; ``kept_positions``:
    token positions the statistics are taken over; ``moments``: per model, the collect
    stage's ``moments_table`` (pre- and post-activation moments, one row per neuron).
    """

    tables: dict[str, pd.DataFrame]
    summaries: dict[str, dict]
    kept_positions: int
    moments: dict[str, pd.DataFrame] = field(default_factory=dict)

    def mean_percent_universal(self) -> float:
        """Mean over the models of the percentage of (live) neurons that are universal."""
        return mean_percent_universal(self.summaries)

    def median(self, column: str) -> float:
        """Median of ``column`` (e.g. ``mean_corr``, ``mean_baseline``) over every live neuron
        of every model."""
        return median_over_live(self.tables.values(), column)


MEASURE_COLUMNS = ["layer", "index", "dead", "mean_corr", "mean_baseline", "excess_corr"]
"""The columns of a neuron table that do not depend on the threshold τ."""


@dataclass(frozen=True)
class GroupMeasures:
    """The τ-independent part of the universality test of one group of models.

    ``tables``: per model, the universality table without ``is_universal`` (one row per
    neuron, layer-major; ``MEASURE_COLUMNS`` are what the emergence stages keep);
    ``n_layers``: MLP layers per model; ``kept_positions``: token positions measured;
    ``moments``: per model, the collect stage's ``moments_table`` (when measured here).
    """

    tables: dict[str, pd.DataFrame]
    n_layers: int
    kept_positions: int
    moments: dict[str, pd.DataFrame] = field(default_factory=dict)

    def at_threshold(self, threshold: float) -> GroupUniversality:
        """The universality test at ``threshold``: ``is_universal`` = excess > threshold
        (never for dead neurons, whose excess is NaN), as ``universality_table`` decides it."""
        tables = {
            name: table.assign(
                is_universal=(table["excess_corr"] > threshold).fillna(False).astype(bool)
            )
            for name, table in self.tables.items()
        }
        summaries = {name: model_summary(t, self.n_layers) for name, t in tables.items()}
        return GroupUniversality(tables, summaries, self.kept_positions, self.moments)


@torch.no_grad()
def group_measures(
    models: dict[str, object],
    partner_ids: dict[str, int],
    tokens: np.ndarray,
    excluded_ids: np.ndarray,
    batch_size: int,
    products: str,
    device: str,
    baseline: BaselineConfig,
    dead_variance: float,
    progress: bool = False,
) -> GroupMeasures:
    """collect + correlate + baseline of ``models`` over ``tokens [sequences, pos]``: every
    neuron's mean correlation with its partners, mean baseline and excess (no threshold).

    ``models``: ``{name: loaded model}`` in the group's order; ``partner_ids``: the integer
    that seeds each model's baseline matrices (its training seed), as in the baseline stage.
    """
    within, moments = {}, {}
    for name, model in models.items():
        collected = collect_model(
            model, name, tokens, excluded_ids, batch_size, device=device, progress=progress
        )
        within[name], moments[name] = collected.within_layer_covariance(), moments_table(collected)
    stats = correlate_group(
        models, tokens, excluded_ids, batch_size, products, device=device, progress=progress
    )
    maxima, _ = pair_maxima(stats, dead_variance)
    baselines = group_baselines(stats.pairs.items(), partner_ids, within, baseline, dead_variance)
    tables = {  # no threshold yet: every column of the universality table but is_universal
        name: universality_table(maxima, baselines, name, np.inf).drop(columns="is_universal")
        for name in models
    }
    return GroupMeasures(tables, stats.n_layers, stats.kept_positions, moments)


def configured_group_measures(
    models: dict[str, object],
    partner_ids: dict[str, int],
    analysis_set: tuple[np.ndarray, np.ndarray],
    analysis: AnalysisConfig,
    correlate: CorrelateConfig,
    baseline: BaselineConfig,
    progress: bool = False,
) -> GroupMeasures:
    """``group_measures`` with the pipeline's settings, as the collect, correlate and baseline
    stages take them: ``analysis_set``: ``(tokens [sequences, pos], excluded ids)``;
    ``analysis``: batch size and device; ``correlate``: products and dead variance."""
    tokens, excluded_ids = analysis_set
    return group_measures(
        models,
        partner_ids,
        tokens,
        excluded_ids,
        analysis.batch_size,
        resolve_products(correlate.products, analysis.device),
        analysis.device,
        baseline,
        correlate.dead_variance,
        progress,
    )


def heldout_losses(model_dirs: Mapping[str, Path], heldout: np.ndarray, device: str) -> dict:
    """Held-out loss (nats/token, the train stage's ``heldout_loss``) of the Hugging Face
    model (GPT-2, GPT-NeoX, ...) in each directory of ``{name: directory}``; ``heldout``:
    ``[sequences, context]``."""
    return {
        name: heldout_loss(
            AutoModelForCausalLM.from_pretrained(directory).to(device), heldout, device
        )
        for name, directory in model_dirs.items()
    }
