"""A static HTML report of one pipeline state: ``report/index.html`` + ``report/figures/*.png``.

The report stage hands ``build_report`` the paths it reads (``ReportSources``). Sections,
each rendered only when its inputs exist:

| section | inputs |
|---|---|
| Universal neurons (headline) | ``results/universality.json`` |
| Per layer | ``results/universality.json`` (``percent_universal_per_layer``) |
| Correlation vs baseline | ``data/universality/seed{s}.parquet`` (``max_corr``, ``max_baseline``, ``excess_corr``) |
| Universal neuron table | ``data/stats/seed{s}.parquet`` (else ``data/universality/``), ``data/families/seed{s}.parquet``; links to ``neurons/`` when the report stage wrote the pages |
| Neuron statistics | ``results/stats.json`` |
| Families | ``results/families.json``, examples from ``data/families/seed{s}.parquet`` |
| How sure, One-to-one matching, Findings over the group, What they do | ``outputs.report_sections`` |
| Across training | ``metrics/emergence.csv`` (the emergence stage) |
| Training | ``models/seed{s}/curve.csv``, ``models/seed{s}/training.json`` |

Besides the HTML the report writes ``report/curves/seed{s}.csv`` (the evaluation rows of each
training curve: ``step, tokens, train_loss, heldout_loss``) for ``dvc plots show``.
Percentages are printed with two decimals (``4.16%``), counts with thousands separators.
"""

from __future__ import annotations

import csv
import html
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from universal_neurons.description.neuron_profile import universal_rows
from universal_neurons.errors import UserError
from universal_neurons.outputs import neuron_page, plots, report_sections
from universal_neurons.outputs.family_summary import family_stack, family_tables
from universal_neurons.outputs.report_html import (
    count,
    linked_contents,
    number,
    percent,
)
from universal_neurons.outputs.report_html import html_table as _table

FIGURES = "figures"
CURVES = "curves"
DEFAULT_THRESHOLD = 0.5
EXAMPLES_PER_FAMILY = 3


@dataclass(frozen=True)
class ReportSources:
    """The files a report reads; any of them may be missing (its section is left out).

    ``models``: the group's model names in order; ``model_dirs``: per model, the directory
    holding ``curve.csv`` and ``training.json``; ``universality_tables`` / ``family_tables``:
    per model, the universality and family stages' tables; ``emergence_curve``: the
    emergence stage's ``metrics/emergence.csv``; ``stats_tables``: per model, the stats
    stage's table (the universal neuron table prefers it: it adds ``first_universal_tokens``);
    ``effects_tables`` and the ``*_results`` documents: the sections of
    ``outputs.report_sections``; ``alpha``: the findings' significance level.
    """

    models: tuple[str, ...]
    universality_metrics: Path
    stats_metrics: Path
    families_metrics: Path
    universality_tables: Mapping[str, Path]
    family_tables: Mapping[str, Path]
    model_dirs: Mapping[str, Path]
    emergence_curve: Path
    stats_tables: Mapping[str, Path] = field(default_factory=dict)
    effects_tables: Mapping[str, Path] = field(default_factory=dict)
    effects_results: Path | None = None
    uncertainty_results: Path | None = None
    one_to_one_results: Path | None = None
    null_results: Path | None = None
    alpha: float = 0.05


@dataclass(frozen=True)
class ReportResult:
    """What was rendered: section titles, figure paths (relative to the report directory)."""

    sections: list[str] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)


def _read_json(path: Path) -> Any | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None


def _models(data: Any, path: Path) -> dict[str, dict]:
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, dict):
        raise UserError(f"{path}: expected a 'models' mapping of model name -> values")
    return models


def threshold_of(universality_metrics: Path) -> float:
    """τ of the universality test as ``results/universality.json`` gives it (default 0.5)."""
    data = _read_json(universality_metrics)
    if not isinstance(data, dict) or data.get("threshold") is None:
        return DEFAULT_THRESHOLD
    return float(data["threshold"])


def _figure(result: ReportResult, name: str, caption: str) -> str:
    src = f"{FIGURES}/{name}"
    result.figures.append(src)
    return (
        f'<figure><img src="{html.escape(src)}" alt="{html.escape(caption)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


# ----------------------------------------------------------------------------- training


def read_curve_rows(path: Path) -> list[dict[str, float | None]]:
    """Rows of ``curve.csv``: ``step, tokens, train_loss, heldout_loss`` (None where empty)."""
    rows = []
    with Path(path).open(newline="") as handle:
        for row in csv.DictReader(handle):
            rows.append(
                {
                    key: (float(row[key]) if (row.get(key) or "").strip() else None)
                    for key in ("step", "tokens", "train_loss", "heldout_loss")
                }
            )
    return rows


def training_summary(model_dirs: Mapping[str, Path]) -> dict:
    """``results/training.json``: per model (``{name: model directory}``) whose
    ``training.json`` exists, the final held-out loss (nats/token), the unigram entropy of
    the training tokens (the loss of a context-free model), steps and tokens; plus the mean
    final held-out loss over the models."""
    models: dict[str, dict] = {}
    for name, directory in model_dirs.items():
        report = _read_json(Path(directory) / "training.json")
        if report is None:
            continue
        models[name] = {
            key: report[key]
            for key in ("heldout_loss", "unigram_entropy", "steps", "tokens")
            if key in report
        }
    losses = [m["heldout_loss"] for m in models.values() if "heldout_loss" in m]
    summary: dict[str, Any] = {"models": models}
    if losses:
        summary["mean_heldout_loss"] = float(np.mean(losses))
    return summary


def training_headline(summary: Mapping[str, Any]) -> dict:
    """``metrics/training.json``: the mean final held-out loss (nats/token) of
    ``training_summary`` (empty if no model has one)."""
    return {key: summary[key] for key in ("mean_heldout_loss",) if key in summary}


def _write_curve_csv(rows: list[dict], path: Path) -> None:
    """The evaluation rows of a training curve (those with a held-out loss), for DVC plots."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["step", "tokens", "train_loss", "heldout_loss"])
        for r in rows:
            if r["heldout_loss"] is not None:
                writer.writerow(
                    [int(r["step"]), int(r["tokens"]), r["train_loss"], r["heldout_loss"]]
                )


def _training_row(model: str, directory: Path) -> list[str]:
    """The training table's row of one model, from its ``training.json``."""
    info = _read_json(directory / "training.json") or {}
    return [
        model,
        count(info.get("tokens")),
        count(info.get("steps")),
        number(info.get("heldout_loss"), 4),
        number(info.get("unigram_entropy"), 4),
    ]


def _training_section(sources: ReportSources, out: Path, result: ReportResult) -> str:
    curves: dict[str, dict[str, list[tuple[float, float]]]] = {}
    rows = []
    for model in sources.models:
        directory = Path(sources.model_dirs[model])
        if not (directory / "curve.csv").is_file():
            continue
        data = read_curve_rows(directory / "curve.csv")
        curves[model] = {
            column: [(r["tokens"], r[column]) for r in data if r[column] is not None]
            for column in ("train_loss", "heldout_loss")
        }
        _write_curve_csv(data, out / CURVES / f"{model}.csv")
        rows.append(_training_row(model, directory))
    if not curves:
        return ""
    plots.training_curves(curves, out / FIGURES / "training_curves.png")
    result.sections.append("Training")
    return (
        "<h2>Training</h2>"
        + _figure(result, "training_curves.png", "Loss over training tokens, per seed")
        + _table(
            ["model", "tokens", "steps", "final held-out loss", "unigram entropy"],
            rows,
        )
    )


def _emergence_figure(curve: pd.DataFrame, models: list[str], path: Path) -> None:
    """The emergence curves: % universal per model and their mean, medians, held-out loss."""
    percents = {m: curve[f"{m}_percent_universal"].tolist() for m in models}
    percents["mean"] = curve["mean_percent_universal"].tolist()
    medians = {
        "median correlation": curve["median_corr"].tolist(),
        "median baseline": curve["median_baseline"].tolist(),
    }
    tokens, losses = curve["tokens"].tolist(), curve["mean_heldout_loss"].tolist()
    plots.emergence_curves(tokens, percents, medians, losses, path)


def _emergence_table(curve: pd.DataFrame, models: list[str]) -> str:
    """One row per training point: tokens, % universal (mean and per model), medians, loss."""
    rows = [
        [count(r.tokens), f"<b>{percent(r.mean_percent_universal)}</b>"]
        + [percent(getattr(r, f"{m}_percent_universal")) for m in models]
        + [number(r.median_corr), number(r.median_baseline), number(r.mean_heldout_loss, 4)]
        for r in curve.itertuples(index=False)
    ]
    headers = ["training tokens", "% universal (mean)", *models]
    return _table([*headers, "median corr", "median baseline", "held-out loss"], rows)


def _emergence_section(path: Path, out: Path, result: ReportResult) -> str:
    """Universality at every training checkpoint: figure + table (from the emergence stage)."""
    if not Path(path).is_file():
        return ""
    curve = pd.read_csv(path)
    models = [
        c.removesuffix("_percent_universal")
        for c in curve.columns
        if c.endswith("_percent_universal") and c != "mean_percent_universal"
    ]
    _emergence_figure(curve, models, out / FIGURES / "emergence.png")
    result.sections.append("Across training")
    caption = (
        "Universal neurons at every training checkpoint of the group "
        "(same test, emergence analysis set)"
    )
    return (
        "<h2>Across training</h2>"
        + _figure(result, "emergence.png", caption)
        + _emergence_table(curve, models)
    )


# ----------------------------------------------------------------------------- universality


def _headline_section(universality: dict, path: Path, result: ReportResult) -> str:
    models = _models(universality, path)
    rows = [
        [
            html.escape(name),
            f"<b>{percent(m.get('percent_universal'))}</b>",
            count(m.get("n_universal")),
            count(m.get("n_neurons")),
            count(m.get("n_dead")),
        ]
        for name, m in models.items()
    ]
    facts = []
    if universality.get("mean_percent_universal") is not None:
        facts.append(
            f'<p class="headline">Universal neurons: '
            f"<b>{percent(universality['mean_percent_universal'])}</b> on average over "
            f"{len(models)} models</p>"
        )
    details = []
    if universality.get("threshold") is not None:
        details.append(f"threshold τ = {number(universality['threshold'])} on excess correlation")
    if universality.get("kept_positions") is not None:
        details.append(f"{count(universality['kept_positions'])} kept token positions")
    if details:
        facts.append(f"<p>{'; '.join(details)}.</p>")
    result.sections.append("Universal neurons")
    return (
        "<h2>Universal neurons</h2>"
        + "".join(facts)
        + _table(["model", "% universal", "universal", "neurons", "dead"], rows)
    )


def _per_layer_section(universality: dict, path: Path, out: Path, result: ReportResult) -> str:
    per_layer = {
        name: m["percent_universal_per_layer"]
        for name, m in _models(universality, path).items()
        if isinstance(m.get("percent_universal_per_layer"), list)
    }
    if not per_layer:
        return ""
    plots.per_layer_bars(
        per_layer,
        "% universal",
        "Universal neurons per layer",
        out / FIGURES / "universal_per_layer.png",
    )
    n_layers = max(len(v) for v in per_layer.values())
    rows = [
        [html.escape(name)] + [percent(v) for v in values] for name, values in per_layer.items()
    ]
    result.sections.append("Per layer")
    return (
        "<h2>Per layer</h2>"
        + _figure(result, "universal_per_layer.png", "Percentage of universal neurons per layer")
        + _table(["model"] + [f"layer {i}" for i in range(n_layers)], rows)
    )


def _live_table(path: Path) -> tuple[pd.DataFrame, int]:
    """The live neurons of a universality table with ``max_corr``, ``max_baseline`` and
    ``excess_corr``, and the number of neurons in the table."""
    table = pd.read_parquet(path)
    missing = {"max_corr", "max_baseline", "excess_corr"} - set(table.columns)
    if missing:
        raise UserError(f"{path}: missing columns {sorted(missing)}")
    alive = table.dropna(subset=["max_corr", "max_baseline", "excess_corr"])
    if "dead" in table.columns:
        alive = alive[~alive["dead"].astype(bool)]
    return alive, len(table)


def _distribution_section(
    sources: ReportSources, threshold: float, out: Path, result: ReportResult
) -> str:
    parts = []
    for model in sources.models:
        path = Path(sources.universality_tables[model])
        if not path.is_file():
            continue
        alive, total = _live_table(path)
        name = f"corr_vs_baseline_{model}.png"
        plots.correlation_vs_baseline(
            alive["max_corr"].to_numpy(float),
            alive["max_baseline"].to_numpy(float),
            alive["excess_corr"].to_numpy(float),
            threshold,
            f"{model}: {len(alive):,} live neurons ({total - len(alive):,} dead)",
            out / FIGURES / name,
        )
        parts.append(_figure(result, name, f"{model}: max correlation vs rotation baseline"))
    if not parts:
        return ""
    result.sections.append("Correlation vs baseline")
    return "<h2>Correlation vs baseline</h2>" + "".join(parts)


# ----------------------------------------------------------------------------- stats, families


def _stats_section(stats: dict, path: Path, out: Path, result: ReportResult) -> str:
    models = _models(stats, path)
    metrics = sorted({metric for m in models.values() for metric in m})
    if not metrics:
        return ""
    columns = ["median_universal", "median_other", "effect_size", "p_value"]
    effect = {
        name: [float((m.get(metric) or {}).get("effect_size") or 0.0) for metric in metrics]
        for name, m in models.items()
    }
    plots.grouped_bars(
        metrics,
        effect,
        "effect size",
        "Universal vs other neurons: effect size per statistic",
        out / FIGURES / "stats_effect_sizes.png",
    )
    tables = []
    for name, m in models.items():
        rows = [
            [html.escape(metric)] + [number((m.get(metric) or {}).get(c)) for c in columns]
            for metric in metrics
        ]
        tables.append(f"<h3>{html.escape(name)}</h3>" + _table(["statistic", *columns], rows))
    result.sections.append("Neuron statistics")
    return (
        "<h2>Neuron statistics</h2>"
        + _figure(result, "stats_effect_sizes.png", "Effect size of universal vs other neurons")
        + "".join(tables)
    )


def _examples(path: Path) -> str:
    """A table of the best example neurons of each family in a family table."""
    table = pd.read_parquet(path)
    if "family" not in table.columns:
        raise UserError(f"{path}: missing column 'family'")
    score = next(
        (c for c in table.columns if "vr" in c.lower() and pd.api.types.is_numeric_dtype(table[c])),
        None,
    )
    shown = [c for c in ("layer", "index", "family") if c in table.columns]
    shown += [
        c for c in table.columns if c not in shown and ("feature" in c.lower() or "vr" in c.lower())
    ][:4]
    if score is not None:
        table = table.sort_values(score, ascending=False, kind="stable")
    examples = table.groupby("family", sort=True, group_keys=False).head(EXAMPLES_PER_FAMILY)
    examples = examples.sort_values("family", kind="stable")
    rows = [
        [number(v, 3) if isinstance(v, float) else html.escape(str(v)) for v in row]
        for row in examples[shown].itertuples(index=False)
    ]
    return _table(shown, rows)


def _families_section(
    families: dict, path: Path, tables: Mapping[str, Path], out: Path, result: ReportResult
) -> str:
    models = _models(families, path)
    stack = family_stack(models)
    parts = []
    if stack:
        plots.grouped_bars(
            list(models),
            stack,
            "universal neurons",
            "Activation families of universal neurons",
            out / FIGURES / "families.png",
            stacked=True,
        )
        caption = "Universal neurons per activation family and model (one family each)"
        parts.append(_figure(result, "families.png", caption))
    parts.append(family_tables(models))
    for name in models:
        table_path = tables.get(name)
        if table_path is not None and Path(table_path).is_file():
            parts.append(f"<h3>Example neurons: {html.escape(name)}</h3>" + _examples(table_path))
    result.sections.append("Families")
    return "<h2>Families</h2>" + "".join(parts)


# ----------------------------------------------------------------------------- the page

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1000px; color: #222; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
table { display: block; max-width: 100%; overflow-x: auto; }  /* never wider than the page */
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f2f2f2; }
td:first-child, th:first-child { text-align: left; }
figure { margin: 1em 0; } img { max-width: 100%; }
figcaption { font-size: 0.85em; color: #555; }
.headline { font-size: 1.3em; }
"""


def _read_tables(*choices: Mapping[str, Path], models: Sequence[str]) -> dict[str, pd.DataFrame]:
    """Per model, the first of its tables in ``choices`` that exists (models without one
    are left out)."""
    tables = {}
    for model in models:
        path = next((c[model] for c in choices if model in c and c[model].is_file()), None)
        if path is not None:
            tables[model] = pd.read_parquet(path)
    return tables


def _universal_neurons_section(
    sources: ReportSources, out: Path, result: ReportResult, threshold: float
) -> str:
    """The most universal neurons of every model, each linked to its page when the report
    stage wrote the pages (``neurons/<model>/<layer>.<index>.html``, ``outputs.neuron_page``)."""
    models = sources.models
    tables = _read_tables(sources.stats_tables, sources.universality_tables, models=models)
    rows = universal_rows(tables, _read_tables(sources.family_tables, models=models))
    if rows.empty:
        return ""
    limit = neuron_page.INDEX_ROWS_PER_MODEL
    shown = rows.groupby("model", sort=False, group_keys=False).head(limit)
    folder = neuron_page.NEURONS_DIR
    linked = (out / folder / "index.html").is_file()
    note = f"<p>{len(shown):,} of {len(rows):,} universal neurons (at most {limit} per model)"
    if linked:
        note += f'; <a href="{folder}/index.html">all of them</a>. Each links to its page'
    result.sections.append("Universal neuron table")
    table = neuron_page.index_html(
        shown, f"{folder}/" if linked else None, threshold, _with_page(shown, out / folder)
    )
    return f"<h2>Universal neuron table</h2>{note}.</p>{table}"


def _with_page(rows: pd.DataFrame, folder: Path) -> dict[str, set]:
    """Per model the neurons of ``rows`` whose page exists in ``folder`` (the report stage
    writes pages for the ``page_store.PAGES_PER_MODEL`` most universal of each model only)."""
    paged: dict[str, set] = {}
    for r in rows.itertuples(index=False):
        if (folder / r.model / neuron_page.page_name(r.layer, r.index)).is_file():
            paged.setdefault(r.model, set()).add((r.layer, r.index))
    return paged


def _new_documents(sources: ReportSources) -> list[Any]:
    """The uncertainty, one-to-one, null-control and effects documents (None if missing)."""
    paths = (
        sources.uncertainty_results,
        sources.one_to_one_results,
        sources.null_results,
        sources.effects_results,
    )
    return [None if path is None else _read_json(path) for path in paths]


def _extra(section: report_sections.Section, result: ReportResult) -> str:
    """A section of ``outputs.report_sections`` as HTML, its title and figures recorded."""
    title, body = report_sections.render(section, lambda name, cap: _figure(result, name, cap))
    if title:
        result.sections.append(title)
    return body


def _result_sections(sources: ReportSources, out: Path, result: ReportResult) -> list[str]:
    """Every section whose inputs exist, in the order of the page."""
    body = []
    universality = _read_json(sources.universality_metrics)
    threshold = DEFAULT_THRESHOLD
    if universality is not None:
        threshold = float(universality.get("threshold", DEFAULT_THRESHOLD))
        body.append(_headline_section(universality, sources.universality_metrics, result))
        body.append(_per_layer_section(universality, sources.universality_metrics, out, result))
    documents = _new_documents(sources)
    body.append(_extra(report_sections.uncertainty_section(documents[0], out / FIGURES), result))
    body.append(_distribution_section(sources, threshold, out, result))
    body.append(_universal_neurons_section(sources, out, result, threshold))
    body.append(_extra(report_sections.one_to_one_section(documents[1]), result))
    stats = _read_json(sources.stats_metrics)
    if stats is not None:
        body.append(_stats_section(stats, sources.stats_metrics, out, result))
    pooled = report_sections.pooled_section(stats, documents[2], sources.alpha)
    body.append(_extra(pooled, result))
    families = _read_json(sources.families_metrics)
    if families is not None:
        body.append(
            _families_section(
                families, sources.families_metrics, sources.family_tables, out, result
            )
        )
    effects = report_sections.effects_section(documents[3], sources.effects_tables, out / FIGURES)
    body.append(_extra(effects, result))
    body.append(_emergence_section(sources.emergence_curve, out, result))
    body.append(_training_section(sources, out, result))
    return [section for section in body if section]


def build_report(sources: ReportSources, out: str | Path) -> ReportResult:
    """Render the report of the files of ``sources`` into the directory ``out``
    (``index.html``, ``figures/*.png``, ``curves/{model}.csv``)."""
    out = Path(out)
    (out / FIGURES).mkdir(parents=True, exist_ok=True)
    (out / CURVES).mkdir(parents=True, exist_ok=True)
    result = ReportResult()
    sections = _result_sections(sources, out, result)
    if not sections:
        sections = ["<p>No results yet: run the pipeline (<code>dvc repro</code>).</p>"]
    sections, contents = linked_contents(sections, result.sections)
    page = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>Universal neurons report</title><style>{_STYLE}</style></head><body>"
        "<h1>Universal neurons report</h1>"
        f"<p>Models: {', '.join(sources.models)}.</p><ul>{contents}</ul>"
        + "\n".join(sections)
        + "</body></html>\n"
    )
    (out / "index.html").write_text(page, encoding="utf-8")
    return result
