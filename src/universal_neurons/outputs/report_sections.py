"""The report's sections on what universal neurons do and how sure each number is.

| section | inputs |
|---|---|
| What they do | ``results/effects.json``, ``data/effects/seed{s}.parquet`` (the effects stage) |
| How sure | ``results/uncertainty.json`` (the uncertainty stage) |
| One-to-one matching | ``results/one_to_one.json`` (the one_to_one stage) |
| Findings over the group | ``results/stats.json`` (``pooled``), ``results/null_control.json`` |

Each function returns ``(title, html, figures)``: ``figures`` maps a PNG file name (written
into the report's figure folder by the function) to its caption; ``("", "", {})`` when its
inputs are missing.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from universal_neurons.description.effects import effects_summary_rows
from universal_neurons.description.null_control import pooled_rows
from universal_neurons.matching.one_to_one import side_by_side_rows
from universal_neurons.matching.uncertainty import interval_plot_inputs
from universal_neurons.outputs import plots
from universal_neurons.outputs.effects_plot import plot_effects
from universal_neurons.outputs.report_html import html_table, number, percent

Section = tuple[str, str, dict[str, str]]
NOTHING: Section = ("", "", {})


def _rows_table(rows: list[dict]) -> str:
    """An HTML table of dict rows (their keys as headers, numbers to 3 digits)."""
    headers = list(rows[0])
    cells = [
        [html.escape(str(r[h])) if isinstance(r[h], str) else number(r[h]) for h in headers]
        for r in rows
    ]
    return html_table(headers, cells)


def effects_section(results: dict | None, tables: Mapping[str, Path], figures: Path) -> Section:
    """ "What they do": the ablation effects of universal neurons against their controls."""
    found = {name: pd.read_parquet(path) for name, path in tables.items() if path.is_file()}
    if results is None or not found:
        return NOTHING
    group = results["group"]
    if not group["universal"]:
        return "What they do", "<p>No neuron is universal: nothing was ablated.</p>", {}
    plot_effects(found, figures / "effects.png")
    roles = ", ".join(f"{role} {n}" for role, n in group["roles_universal"].items()) or "none"
    text = (
        f"<p>Each universal neuron, {results['ablation']}-ablated on the held-out tokens, "
        f"against matched controls (same layer, same deciles of activation frequency and "
        f"output norm) and its best partners in the other models. Median Δloss: universal "
        f"{number(group['median_delta_loss_universal'])}, control "
        f"{number(group['median_delta_loss_control'])} nats/token; above every one of its "
        f"controls: {percent(100 * group['fraction_exceeding_controls'])} of the universal "
        f"neurons; mean correlation of a neuron's per-token loss effect with its partners': "
        f"{number(group['mean_partner_effect_corr'])}. Roles (from the weights): {roles}.</p>"
    )
    body = text + "{effects.png}" + _rows_table(effects_summary_rows(results))
    return "What they do", body, {"effects.png": "Effect of ablation: universal vs control"}


def uncertainty_section(results: dict | None, figures: Path) -> Section:
    """ "How sure": the bootstrap interval of % universal per model and layer, stability."""
    if results is None:
        return NOTHING
    settings = results["settings"]
    plots.percent_with_intervals(*interval_plot_inputs(results), figures / "uncertainty.png")
    rows = [
        [
            html.escape(name),
            percent(entry["percent_universal"]),
            f"{percent(entry['percent_universal_lo'])} – {percent(entry['percent_universal_hi'])}",
            number(entry["mean_stability_of_universal"]),
        ]
        for name, entry in results["models"].items()
    ]
    level = f"{100 * settings['confidence']:.0f}%"
    text = (
        f"<p>{settings['resamples']} block-bootstrap resamples of the analysis sequences "
        f"({settings['blocks']} blocks) with fresh rotation draws; {level} percentile "
        f"intervals. A neuron's stability is the fraction of resamples in which it is "
        f"universal. Mean over the models: {percent(results['mean_percent_universal'])} "
        f"[{percent(results['mean_percent_universal_lo'])}, "
        f"{percent(results['mean_percent_universal_hi'])}].</p>"
    )
    headers = ["model", "% universal", f"{level} interval", "mean stability of universal"]
    body = text + "{uncertainty.png}" + html_table(headers, rows)
    return "How sure", body, {"uncertainty.png": "% universal per layer with the interval"}


def one_to_one_section(results: dict | None) -> Section:
    """ "One-to-one matching": max correlation beside the stricter one-to-one notion."""
    rows = side_by_side_rows(results) if results else []
    if not rows:
        return NOTHING
    text = (
        "<p>Beside the max-correlation test, each pair of models matched one to one (the "
        "maximum-weight assignment of the correlation matrix): a neuron is one-to-one "
        "universal when its assigned partners' mean correlation exceeds the baseline by τ.</p>"
    )
    return "One-to-one matching", text + _rows_table(rows), {}


def pooled_section(stats: dict | None, null: dict | None, alpha: float) -> Section:
    """ "Findings over the group": each finding pooled over the models and against the null."""
    rows = pooled_rows(stats, null, alpha) if stats else []
    if not rows:
        return NOTHING
    text = (
        "<p>Each of the paper's findings decided once over the whole group (van Elteren's "
        "stratified test: universal against other neurons within each model), with the "
        "stratified rank-biserial effect and its bootstrap interval, and compared with the "
        "same selection on the untrained group (the null control): a finding that selection "
        "alone produces is marked so.</p>"
    )
    cells = [[html.escape(str(cell)) for cell in row] for row in rows[1:]]
    return "Findings over the group", text + html_table(rows[0], cells), {}


def render(section: Section, figure: Any) -> tuple[str, str]:
    """``(title, html)`` with each ``{name.png}`` placeholder replaced by ``figure(name,
    caption)`` (the report's figure markup)."""
    title, body, figures = section
    for name, caption in figures.items():
        body = body.replace("{" + name + "}", figure(name, caption))
    return title, f"<h2>{html.escape(title)}</h2>{body}" if title else ""
