"""Matplotlib figures of the report, drawn off-screen (Agg) and saved as PNG.

Every function takes plain numbers (lists, dicts, numpy arrays), draws one figure, writes it
to ``path`` and closes it, so a long report does not pile up open figures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

DPI = 110


def save(fig: plt.Figure, path: str | Path) -> Path:
    """Write ``fig`` as PNG (no timestamp in the file, so equal inputs give equal bytes)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, format="png", metadata={"Software": None})
    plt.close(fig)
    return path


def per_layer_lines(
    values: Mapping[str, Sequence[float]], ylabel: str, title: str, path: str | Path
) -> Path:
    """One line per model over layers: ``values[model][layer]``."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for model, per_layer in values.items():
        ax.plot(range(len(per_layer)), per_layer, marker="o", label=model)
    ax.set_xlabel("layer")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return save(fig, path)


def correlation_vs_baseline(
    corr: np.ndarray,
    baseline: np.ndarray,
    excess: np.ndarray,
    threshold: float,
    title: str,
    path: str | Path,
) -> Path:
    """Left: histograms of max correlation and max rotation baseline ``[neurons]``;
    right: histogram of excess correlation with the universality threshold."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    bins = np.linspace(-0.1, 1.0, 45)
    left.hist(corr, bins=bins, alpha=0.6, label="max correlation")
    left.hist(baseline, bins=bins, alpha=0.6, label="max baseline (rotated)")
    left.set_xlabel("correlation")
    left.set_ylabel("neurons")
    left.set_yscale("log")
    left.legend(fontsize="small")
    right.hist(excess, bins=45, color="tab:green", alpha=0.8)
    right.axvline(threshold, color="black", linestyle="--", label=f"τ = {threshold:g}")
    right.set_xlabel("excess correlation (mean corr − mean baseline)")
    right.set_yscale("log")
    right.legend(fontsize="small")
    fig.suptitle(title)
    return save(fig, path)


def grouped_bars(
    categories: Sequence[str],
    groups: Mapping[str, Sequence[float]],
    ylabel: str,
    title: str,
    path: str | Path,
    stacked: bool = False,
) -> Path:
    """Bars per category, one bar (or one stacked segment) per group: ``groups[g][category]``."""
    fig, ax = plt.subplots(figsize=(max(5.0, 0.7 * len(categories) + 2), 3.8))
    x = np.arange(len(categories))
    names = list(groups)
    width = 0.8 if stacked else 0.8 / max(1, len(names))
    bottom = np.zeros(len(categories))
    for i, name in enumerate(names):
        heights = np.asarray(groups[name], dtype=float)
        if stacked:
            ax.bar(x, heights, width, bottom=bottom, label=name)
            bottom += heights
        else:
            ax.bar(x - 0.4 + width * (i + 0.5), heights, width, label=name)
    ax.set_xticks(x, categories, rotation=30, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.axhline(0, color="black", linewidth=0.6)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small")
    return save(fig, path)


def training_curves(
    curves: Mapping[str, Mapping[str, Sequence[tuple[float, float]]]], path: str | Path
) -> Path:
    """Loss (nats/token) over training tokens: ``curves[model][column] = [(tokens, loss)]``,
    columns ``train_loss`` (thin) and ``heldout_loss`` (thick, markers)."""
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for i, (model, columns) in enumerate(curves.items()):
        color = f"C{i % 10}"
        train = columns.get("train_loss") or []
        heldout = columns.get("heldout_loss") or []
        if train:
            ax.plot(*zip(*train, strict=True), color=color, alpha=0.35, linewidth=0.8)
        if heldout:
            ax.plot(*zip(*heldout, strict=True), color=color, marker=".", label=model)
    ax.set_xlabel("training tokens")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title("Training: train loss (thin) and held-out loss (markers)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return save(fig, path)


def emergence_curves(
    tokens: Sequence[float],
    percent_universal: Mapping[str, Sequence[float]],
    medians: Mapping[str, Sequence[float]],
    heldout_loss: Sequence[float],
    path: str | Path,
) -> Path:
    """Universality across training, tokens on a log x axis. Left: % universal per model
    (thin) and their mean (thick); middle: ``medians[label]`` (median correlation and median
    baseline); right: mean held-out loss (nats/token)."""
    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(11, 3.4))
    for model, values in percent_universal.items():
        thick = model == "mean"
        left.plot(
            tokens,
            values,
            marker="o",
            linewidth=2.5 if thick else 0.9,
            color="black" if thick else None,
            label=model,
        )
    left.set_ylabel("% universal (τ)")
    left.legend(fontsize="x-small")
    for label, values in medians.items():
        middle.plot(tokens, values, marker="o", label=label)
    middle.set_ylabel("median over live neurons")
    middle.legend(fontsize="small")
    right.plot(tokens, heldout_loss, marker="o", color="C3")
    right.set_ylabel("held-out loss (nats/token)")
    for ax in (left, middle, right):
        ax.set_xscale("log")
        ax.set_xlabel("training tokens per model")
        ax.grid(alpha=0.3)
    fig.suptitle("Universal neurons across training")
    return save(fig, path)
