"""Figures of the neuron statistics (matplotlib only, written as PNG).

- ``plot_percentile_boxen``: the paper's figure. For each metric, the distribution of the
  within-layer percentiles of the universal neurons, pooled over the models, as a
  letter-value ("boxen") plot: the innermost box spans the quartiles, each further box
  the next pair of letter values (12.5-87.5 %, 6.25-93.75 %, ...), the line is the
  median, points beyond the last box are drawn singly. A random set of neurons would sit
  around 50; a metric whose boxes sit high (low) is one where universal neurons have
  larger (smaller) values than the other neurons of their layer.
- ``plot_per_layer``: one panel per metric, the median per layer of the universal and of
  the other live neurons, one line per model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from universal_neurons.statistics import METRICS, per_layer_medians, percentile_column  # noqa: E402


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


def plot_percentile_boxen(
    tables: Mapping[str, pd.DataFrame], path: str | Path, metrics: Sequence[str] = METRICS
) -> None:
    """Boxen plot of the universal neurons' within-layer percentiles per metric, pooled over models."""
    pooled = pd.concat(
        [t[(~t["dead"].astype(bool)) & t["is_universal"].astype(bool)] for t in tables.values()]
    )
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(metrics) + 1.5))
    cmap = plt.get_cmap("Blues")
    for row, metric in enumerate(metrics):
        y = len(metrics) - 1 - row
        boxes, median, outliers = letter_values(pooled[percentile_column(metric)].to_numpy())
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
    ax.axvline(50, color="grey", ls="--", lw=1)
    ax.set_yticks(range(len(metrics)), list(reversed(metrics)))
    ax.set_ylim(-0.7, len(metrics) - 0.3)
    ax.set_xlim(0, 100)
    ax.set_xlabel("within-layer percentile of universal neurons")
    ax.set_title(f"Universal neurons ({len(pooled)}, {len(tables)} models) vs their layer")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_per_layer(
    tables: Mapping[str, pd.DataFrame], path: str | Path, metrics: Sequence[str] = METRICS
) -> None:
    """Per metric: median per layer of universal (solid) and other (dashed) live neurons, per model."""
    columns = 4
    rows = int(np.ceil(len(metrics) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.4 * rows), squeeze=False)
    colours = plt.get_cmap("tab10")
    for number, (model, table) in enumerate(tables.items()):
        medians = per_layer_medians(table, metrics)
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
                    color=colours(number % 10),
                    label=f"{model} {group}",
                )
    for ax, metric in zip(axes.flat, metrics, strict=False):
        ax.set_title(metric, fontsize=9)
        ax.set_xlabel("layer", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in list(axes.flat)[len(metrics) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower right", fontsize=7, ncol=2)
    fig.suptitle("Median per layer: universal (solid) vs other (dashed) neurons")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
