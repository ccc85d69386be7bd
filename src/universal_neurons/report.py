"""A static HTML report of one pipeline state: ``report/index.html`` + ``report/figures/*.png``.

Sections, each rendered only when its inputs exist in the workspace:

| section | inputs |
|---|---|
| Universal neurons (headline) | ``metrics/universality.json`` |
| Per layer | ``metrics/universality.json`` (``percent_universal_per_layer``) |
| Correlation vs baseline | ``data/universality/seed{s}.parquet`` (``max_corr``, ``max_baseline``, ``excess_corr``) |
| Neuron statistics | ``metrics/stats.json`` |
| Families | ``metrics/families.json``, examples from ``data/families/seed{s}.parquet`` |
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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from universal_neurons import plots

FIGURES = "figures"
CURVES = "curves"
DEFAULT_THRESHOLD = 0.5
EXAMPLES_PER_FAMILY = 3


@dataclass
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
        raise ValueError(f"{path}: not valid JSON ({exc})") from None


def _models(data: Any, path: Path) -> dict[str, dict]:
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, dict):
        raise ValueError(f"{path}: expected a 'models' mapping of model name -> values")
    return models


def percent(value: Any) -> str:
    """``4.1621`` -> ``4.16%``; missing -> ``–``."""
    return "–" if value is None else f"{float(value):.2f}%"


def count(value: Any) -> str:
    """``36864`` -> ``36,864``; missing -> ``–``."""
    return "–" if value is None else f"{int(value):,}"


def number(value: Any, digits: int = 3) -> str:
    """A float with ``digits`` significant digits; small p-values in scientific notation."""
    if value is None:
        return "–"
    if isinstance(value, bool | str):
        return html.escape(str(value))
    value = float(value)
    if value != 0 and abs(value) < 1e-3:
        return f"{value:.2e}"
    return f"{value:.{digits}g}"


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


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


def training_summary(models_dir: Path, seeds: Iterable[int]) -> dict:
    """``metrics/training.json``: per seed the final held-out loss (nats/token), the unigram
    entropy of the training tokens (the loss of a context-free model), steps and tokens; plus
    the mean final held-out loss over the seeds."""
    models: dict[str, dict] = {}
    for seed in seeds:
        report = _read_json(Path(models_dir) / f"seed{seed}" / "training.json")
        if report is None:
            continue
        models[f"seed{seed}"] = {
            key: report[key]
            for key in ("heldout_loss", "unigram_entropy", "steps", "tokens")
            if key in report
        }
    losses = [m["heldout_loss"] for m in models.values() if "heldout_loss" in m]
    summary: dict[str, Any] = {"models": models}
    if losses:
        summary["mean_heldout_loss"] = float(np.mean(losses))
    return summary


def _training_section(workdir: Path, seeds: Sequence[int], out: Path, result: ReportResult) -> str:
    curves: dict[str, dict[str, list[tuple[float, float]]]] = {}
    rows = []
    for seed in seeds:
        path = workdir / "models" / f"seed{seed}" / "curve.csv"
        if not path.is_file():
            continue
        model = f"seed{seed}"
        data = read_curve_rows(path)
        curves[model] = {
            column: [(r["tokens"], r[column]) for r in data if r[column] is not None]
            for column in ("train_loss", "heldout_loss")
        }
        evaluated = [r for r in data if r["heldout_loss"] is not None]
        with (out / CURVES / f"{model}.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["step", "tokens", "train_loss", "heldout_loss"])
            for r in evaluated:
                writer.writerow(
                    [int(r["step"]), int(r["tokens"]), r["train_loss"], r["heldout_loss"]]
                )
        info = _read_json(path.parent / "training.json") or {}
        rows.append(
            [
                model,
                count(info.get("tokens")),
                count(info.get("steps")),
                number(info.get("heldout_loss"), 4),
                number(info.get("unigram_entropy"), 4),
            ]
        )
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


def _emergence_section(path: Path, out: Path, result: ReportResult) -> str:
    """Universality at every training checkpoint: figure + table (from the emergence stage)."""
    import pandas as pd

    if not path.is_file():
        return ""
    curve = pd.read_csv(path)
    models = [
        c.removesuffix("_percent_universal")
        for c in curve.columns
        if c.endswith("_percent_universal") and c != "mean_percent_universal"
    ]
    tokens = curve["tokens"].tolist()
    percents = {m: curve[f"{m}_percent_universal"].tolist() for m in models}
    percents["mean"] = curve["mean_percent_universal"].tolist()
    medians = {
        "median correlation": curve["median_corr"].tolist(),
        "median baseline": curve["median_baseline"].tolist(),
    }
    plots.emergence_curves(
        tokens,
        percents,
        medians,
        curve["mean_heldout_loss"].tolist(),
        out / FIGURES / "emergence.png",
    )
    rows = [
        [count(r.tokens), f"<b>{percent(r.mean_percent_universal)}</b>"]
        + [percent(getattr(r, f"{m}_percent_universal")) for m in models]
        + [number(r.median_corr), number(r.median_baseline), number(r.mean_heldout_loss, 4)]
        for r in curve.itertuples(index=False)
    ]
    result.sections.append("Across training")
    return (
        "<h2>Across training</h2>"
        + _figure(
            result,
            "emergence.png",
            "Universal neurons at every training checkpoint of the group (same test, emergence analysis set)",
        )
        + _table(
            [
                "training tokens",
                "% universal (mean)",
                *models,
                "median corr",
                "median baseline",
                "held-out loss",
            ],
            rows,
        )
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
    plots.per_layer_lines(
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


def _distribution_section(
    workdir: Path, seeds: Sequence[int], threshold: float, out: Path, result: ReportResult
) -> str:
    import pandas as pd

    parts = []
    for seed in seeds:
        path = workdir / "data" / "universality" / f"seed{seed}.parquet"
        if not path.is_file():
            continue
        table = pd.read_parquet(path)
        missing = {"max_corr", "max_baseline", "excess_corr"} - set(table.columns)
        if missing:
            raise ValueError(f"{path}: missing columns {sorted(missing)}")
        alive = table.dropna(subset=["max_corr", "max_baseline", "excess_corr"])
        if "dead" in table.columns:
            alive = alive[~alive["dead"].astype(bool)]
        name = f"corr_vs_baseline_seed{seed}.png"
        plots.correlation_vs_baseline(
            alive["max_corr"].to_numpy(float),
            alive["max_baseline"].to_numpy(float),
            alive["excess_corr"].to_numpy(float),
            threshold,
            f"seed{seed}: {len(alive):,} live neurons ({len(table) - len(alive):,} dead)",
            out / FIGURES / name,
        )
        parts.append(_figure(result, name, f"seed{seed}: max correlation vs rotation baseline"))
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
    import pandas as pd

    table = pd.read_parquet(path)
    if "family" not in table.columns:
        raise ValueError(f"{path}: missing column 'family'")
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
    families: dict, path: Path, workdir: Path, out: Path, result: ReportResult
) -> str:
    models = _models(families, path)
    names = sorted({f for m in models.values() for f in (m.get("counts") or {})})
    parts = []
    if names:
        plots.grouped_bars(
            list(models),
            {f: [float((m.get("counts") or {}).get(f, 0)) for m in models.values()] for f in names},
            "universal neurons",
            "Families of universal neurons",
            out / FIGURES / "families.png",
            stacked=True,
        )
        parts.append(_figure(result, "families.png", "Universal neurons per family and model"))
    rows = [
        [
            html.escape(name),
            count(m.get("n_universal")),
            count(m.get("n_explained")),
            percent(m.get("percent_explained")),
        ]
        + [count((m.get("counts") or {}).get(f, 0)) for f in names]
        for name, m in models.items()
    ]
    parts.append(_table(["model", "universal", "explained", "% explained", *names], rows))
    for name in models:
        table_path = workdir / "data" / "families" / f"{name}.parquet"
        if table_path.is_file():
            parts.append(f"<h3>Example neurons: {html.escape(name)}</h3>" + _examples(table_path))
    result.sections.append("Families")
    return "<h2>Families</h2>" + "".join(parts)


# ----------------------------------------------------------------------------- the page

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1000px; color: #222; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f2f2f2; }
td:first-child, th:first-child { text-align: left; }
figure { margin: 1em 0; } img { max-width: 100%; }
figcaption { font-size: 0.85em; color: #555; }
.headline { font-size: 1.3em; }
"""


def build_report(workdir: str | Path, out: str | Path, seeds: Sequence[int]) -> ReportResult:
    """Render the report of the pipeline state in ``workdir`` into the directory ``out``.

    ``seeds``: the models of the group (``models/seed{s}``, tables ``seed{s}.parquet``).
    """
    workdir, out = Path(workdir), Path(out)
    (out / FIGURES).mkdir(parents=True, exist_ok=True)
    (out / CURVES).mkdir(parents=True, exist_ok=True)
    result = ReportResult()
    body = []

    universality_path = workdir / "metrics" / "universality.json"
    universality = _read_json(universality_path)
    threshold = DEFAULT_THRESHOLD
    if universality is not None:
        threshold = float(universality.get("threshold", DEFAULT_THRESHOLD))
        body.append(_headline_section(universality, universality_path, result))
        body.append(_per_layer_section(universality, universality_path, out, result))
    body.append(_distribution_section(workdir, seeds, threshold, out, result))
    stats_path = workdir / "metrics" / "stats.json"
    stats = _read_json(stats_path)
    if stats is not None:
        body.append(_stats_section(stats, stats_path, out, result))
    families_path = workdir / "metrics" / "families.json"
    families = _read_json(families_path)
    if families is not None:
        body.append(_families_section(families, families_path, workdir, out, result))
    body.append(_emergence_section(workdir / "metrics" / "emergence.csv", out, result))
    body.append(_training_section(workdir, seeds, out, result))

    sections = [s for s in body if s]
    if not sections:
        sections = ["<p>No results yet: run the pipeline (<code>dvc repro</code>).</p>"]
    contents = "".join(f"<li>{html.escape(title)}</li>" for title in result.sections)
    page = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>Universal neurons report</title><style>{_STYLE}</style></head><body>"
        "<h1>Universal neurons report</h1>"
        f"<p>Models: {', '.join(f'seed{s}' for s in seeds)}.</p><ul>{contents}</ul>"
        + "\n".join(sections)
        + "</body></html>\n"
    )
    (out / "index.html").write_text(page, encoding="utf-8")
    return result
