"""Every figure of the project (matplotlib, drawn off-screen with Agg, saved as PNG).

Every function takes plain numbers or tables, draws one figure, writes it to ``path`` and
closes it, so a long run does not pile up open figures.

- The report (``report/figures``): ``per_layer_bars``, ``correlation_vs_baseline``,
  ``grouped_bars``, ``training_curves``, ``emergence_curves``; saved without a timestamp
  (``save``).
- The neuron statistics (``data/stats/plots``): ``plot_percentile_boxen``, the paper's
  figure: for each metric, the distribution of the within-layer percentiles of the universal
  neurons, pooled over the models, as a letter-value ("boxen") plot: the innermost box spans
  the quartiles, each further box the next pair of letter values (12.5-87.5 %,
  6.25-93.75 %, ...), the line is the median, points beyond the last box are drawn singly. A
  random set of neurons would sit around 50; a metric whose boxes sit high (low) is one where
  universal neurons have larger (smaller) values than the other neurons of their layer.
  ``plot_per_layer``: one panel per metric, the median per layer of the universal and of
  the other live neurons, one line per model.
- The families (``metrics/families_per_layer.png``): ``plot_family_counts``.
- The neuron pages (``report/neurons``, drawn once per candidate by the classify_candidates
  stage): ``neuron_histogram``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

# ----------------------------------------------------------------------------- the report

DPI = 110


def save(fig: plt.Figure, path: str | Path) -> Path:
    """Write ``fig`` as PNG (no timestamp in the file, so equal inputs give equal bytes)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, format="png", metadata={"Software": None})
    plt.close(fig)
    return path


def neuron_histogram(
    model: str, layer: int, index: int, edges: np.ndarray, counts: np.ndarray, path: str | Path
) -> Path:
    """A neuron page's activation histogram (``edges [m + 1]``, ``counts [m]`` positions per
    bin; log count axis: most positions sit near 0), titled with the neuron and its positions."""
    fig, ax = plt.subplots(figsize=(6.4, 2.6))
    if len(counts):
        ax.stairs(counts, edges, fill=True, color="#e07020")
        ax.set_yscale("log")
    ax.set_xlabel("activation (post-GELU)")
    ax.set_ylabel("positions")
    ax.set_title(f"{model} L{layer}.N{index}: {int(counts.sum()):,} positions", fontsize="medium")
    ax.grid(alpha=0.3)
    return save(fig, path)


def draw_per_layer(ax: plt.Axes, values: Mapping[str, Sequence[float]]) -> None:
    """Bars per layer on ``ax``, one per model side by side (dodged, so that equal values of
    two models both show): ``values[model][layer]``."""
    n_layers = max((len(v) for v in values.values()), default=0)
    groups = {
        model: [*per_layer, *([np.nan] * (n_layers - len(per_layer)))]
        for model, per_layer in values.items()
    }
    draw_bars(ax, [f"layer {i}" for i in range(n_layers)], groups)


def per_layer_bars(
    values: Mapping[str, Sequence[float]], ylabel: str, title: str, path: str | Path
) -> Path:
    """The figure of ``draw_per_layer``: ``values[model][layer]``."""
    n_layers = max((len(v) for v in values.values()), default=0)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * n_layers + 2), 3.6))
    draw_per_layer(ax, values)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
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


def draw_bars(
    ax: plt.Axes,
    categories: Sequence[str],
    groups: Mapping[str, Sequence[float]],
    stacked: bool = False,
) -> None:
    """Bars per category on ``ax``, one bar (or one stacked segment) per group:
    ``groups[g][category]``; side by side (dodged) unless ``stacked``."""
    x = np.arange(len(categories))
    names = list(groups)
    width = 0.8 if stacked else 0.8 / max(1, len(names))
    bottom = np.zeros(len(categories))
    for i, name in enumerate(names):
        heights = np.asarray(groups[name], dtype=float)
        if stacked:
            ax.bar(x, heights, width, bottom=bottom, label=name)
            bottom += np.nan_to_num(heights)
        else:
            ax.bar(x - 0.4 + width * (i + 0.5), heights, width, label=name)
    ax.set_xticks(x, categories, rotation=30, ha="right")
    ax.axhline(0, color="black", linewidth=0.6)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small")


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
    draw_bars(ax, categories, groups, stacked)
    if stacked:  # counts
        ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    ax.set_title(title)
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


def percent_with_intervals(
    points: Mapping[str, Sequence[float | None]],
    intervals: Mapping[str, Sequence[tuple[float | None, float | None]]],
    path: str | Path,
    title: str = "Universal neurons per layer, with the bootstrap interval",
) -> Path:
    """% universal per layer with its interval: ``points[model][layer]`` (a marker) and
    ``intervals[model][layer] = (lo, hi)`` (an error bar), the models dodged side by side
    within each layer so that no model hides behind another; None is left out."""
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    names = list(points)
    width = 0.7 / max(1, len(names))
    for i, model in enumerate(names):
        offset = -0.35 + width * (i + 0.5)
        for layer, (point, (lo, hi)) in enumerate(
            zip(points[model], intervals[model], strict=True)
        ):
            if point is None or lo is None or hi is None:
                continue
            below, above = max(0.0, point - lo), max(0.0, hi - point)
            ax.errorbar(
                layer + offset,
                point,
                yerr=[[below], [above]],
                fmt="o",
                color=f"C{i % 10}",
                capsize=3,
                label=model if layer == 0 else None,
            )
    ax.set_xticks(range(max((len(v) for v in points.values()), default=0)))
    ax.set_xlabel("layer")
    ax.set_ylabel("% universal (of live neurons)")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small")
    return save(fig, path)


# ----------------------------------------------------------------------------- neuron statistics


def letter_values(values: np.ndarray) -> tuple[list[tuple[float, float]], float, np.ndarray]:
    """Letter-value boxes of a sample: ``(boxes, median, outliers)``.

    ``boxes[k]`` = the quantiles ``(2^-(k+2), 1 - 2^-(k+2))``: quartiles first, then
    eighths, ... The depth is Tukey's rule ``max(1, floor(log2 n) - 3)``.
    """
    values = np.sort(np.asarray(values, dtype=np.float64))
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return [], float("nan"), values
    depth = max(1, int(np.floor(np.log2(len(values)))) - 3)
    boxes = [
        (float(np.quantile(values, 0.5 ** (k + 2))), float(np.quantile(values, 1 - 0.5 ** (k + 2))))
        for k in range(depth)
    ]
    low, high = boxes[-1]
    outliers = values[(values < low) | (values > high)]
    return boxes, float(np.median(values)), outliers


def _boxen_row(ax: plt.Axes, y: int, values: np.ndarray, cmap) -> None:
    """The letter-value boxes, median line and outliers of one sample at height ``y``."""
    boxes, median, outliers = letter_values(values)
    for k, (low, high) in enumerate(boxes):
        height = 0.8 * (1 - k / (len(boxes) + 1))
        shade = cmap(0.75 - 0.5 * k / max(1, len(boxes)))
        ax.add_patch(
            Rectangle(
                (low, y - height / 2),
                high - low,
                height,
                facecolor=shade,
                edgecolor="k",
                lw=0.5,
            )
        )
    if boxes:
        ax.plot([median, median], [y - 0.4, y + 0.4], color="k", lw=1.5)
        ax.plot(outliers, np.full(len(outliers), y), "k.", ms=3)


def plot_percentile_boxen(
    percentiles: Mapping[str, np.ndarray], n_models: int, path: str | Path
) -> None:
    """Boxen plot of the universal neurons' within-layer percentiles per metric, pooled over
    models: ``percentiles[metric]`` ``[universal neurons]`` (NaN allowed), top row first."""
    metrics = list(percentiles)
    n_neurons = len(next(iter(percentiles.values()))) if percentiles else 0
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(metrics) + 1.5))
    cmap = plt.get_cmap("Blues")
    for row, metric in enumerate(metrics):
        _boxen_row(ax, len(metrics) - 1 - row, percentiles[metric], cmap)
    ax.axvline(50, color="grey", ls="--", lw=1)
    ax.set_yticks(range(len(metrics)), list(reversed(metrics)))
    ax.set_ylim(-0.7, len(metrics) - 0.3)
    ax.set_xlim(0, 100)
    ax.set_xlabel("within-layer percentile of universal neurons")
    ax.set_title(f"Universal neurons ({n_neurons}, {n_models} models) vs their layer")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _median_lines(axes, medians: pd.DataFrame, metrics: Sequence[str], model: str, colour) -> None:
    """One model's per-layer medians: universal (solid) and other (dashed), one panel per metric."""
    for ax, metric in zip(axes.flat, metrics, strict=False):
        for group, style in (("universal", "-"), ("other", "--")):
            part = medians[medians["group"] == group]
            if part.empty:
                continue
            ax.plot(
                part["layer"],
                part[metric],
                style,
                marker="o",
                ms=3,
                color=colour,
                label=f"{model} {group}",
            )


def plot_per_layer(
    medians: Mapping[str, pd.DataFrame], metrics: Sequence[str], path: str | Path
) -> None:
    """Per metric: median per layer of universal (solid) and other (dashed) live neurons, one
    line per model; ``medians[model]``: rows ``layer, group`` (``universal``/``other``) with a
    column per metric (``statistics.per_layer_medians``)."""
    columns = 4
    rows = int(np.ceil(len(metrics) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.4 * rows), squeeze=False)
    colours = plt.get_cmap("tab10")
    for number, (model, table) in enumerate(medians.items()):
        _median_lines(axes, table, metrics, model, colours(number % 10))
    for ax, metric in zip(axes.flat, metrics, strict=False):
        ax.set_title(metric, fontsize=9)
        ax.set_xlabel("layer", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    for ax in list(axes.flat)[len(metrics) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower right", fontsize=7, ncol=2)
    fig.suptitle("Median per layer: universal (solid) vs other (dashed) neurons")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- families


def _family_bars(ax: plt.Axes, entry: dict, model: str, names: list[str], colours) -> None:
    """One model's universal neurons per family (one bar each) and layer."""
    per_layer = entry["counts_per_layer"]
    n_layers = max((len(counts) for counts in per_layer.values()), default=0)
    width = 0.8 / len(names)
    for j, name in enumerate(names):
        ax.bar(
            np.arange(n_layers) + (j - len(names) / 2 + 0.5) * width,
            per_layer.get(name, [0] * n_layers),
            width,
            label=name,
            color=colours[j],
        )
    ax.set_title(f"{model}: {entry['n_universal']} universal neurons")
    ax.set_xlabel("layer")
    ax.set_xticks(range(n_layers))
    ax.set_ylabel("neurons")
    ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))


def plot_family_counts(metrics: dict, names: Sequence[str], path: str | Path) -> None:
    """Bar chart per model: universal neurons of each family in ``names`` per layer (PNG).

    ``metrics``: the ``metrics/families.json`` document (``families.family_metrics`` per model).
    """
    models = list(metrics["models"])
    fig, axes = plt.subplots(
        1, max(len(models), 1), figsize=(4.5 * max(len(models), 1), 3.6), squeeze=False
    )
    names = list(names)
    colours = plt.get_cmap("tab20")(np.linspace(0, 1, len(names)))
    for ax, model in zip(axes[0], models, strict=False):
        _family_bars(ax, metrics["models"][model], model, names, colours)
    axes[0][0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
