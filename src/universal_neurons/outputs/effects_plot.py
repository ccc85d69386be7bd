"""The effects stage's figure: universal vs control vs partner ablation effects per layer."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

KIND_COLOURS = {"universal": "tab:red", "control": "tab:grey", "partner": "tab:blue"}
MEASURE_LABELS = {
    "delta_loss": "Δloss (nats/token)",
    "kl": "KL(p || p_ablated) (nats)",
    "delta_entropy": "Δentropy (nats)",
}


def plot_effects(tables: dict[str, pd.DataFrame], path: str | Path) -> Path:
    """One panel per measure (``MEASURE_LABELS``): per layer, every measured neuron of every
    model of ``tables`` (effects tables by model) as a point, universal / control / partner
    side by side, with each kind's median as a bar. Writes a PNG to ``path``."""
    rows = pd.concat(list(tables.values()), ignore_index=True)
    layers = sorted(rows["layer"].unique()) if len(rows) else [0]
    fig, axes = plt.subplots(1, len(MEASURE_LABELS), figsize=(4.2 * len(MEASURE_LABELS), 3.6))
    rng = np.random.default_rng(0)  # horizontal jitter of the points only
    for ax, (measure, label) in zip(axes, MEASURE_LABELS.items(), strict=True):
        for shift, (kind, colour) in zip((-0.25, 0.0, 0.25), KIND_COLOURS.items(), strict=True):
            for position, layer in enumerate(layers):
                values = rows.loc[(rows["kind"] == kind) & (rows["layer"] == layer), measure]
                x = position + shift + rng.uniform(-0.06, 0.06, len(values))
                ax.scatter(
                    x, values, s=10, color=colour, alpha=0.7, label=kind if position == 0 else None
                )
                if len(values):
                    median = float(values.median())
                    ax.plot(
                        [position + shift - 0.1, position + shift + 0.1],
                        [median] * 2,
                        color=colour,
                        lw=2,
                    )
        ax.axhline(0, color="black", lw=0.5)
        ax.set_xticks(range(len(layers)), [f"L{layer}" for layer in layers])
        ax.set_ylabel(label)
    axes[0].legend(fontsize=7)
    fig.suptitle("Ablation effect of universal neurons, matched controls and partners")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
