"""The report's HTML page of a neuron, one per universal neuron (the report stage;
``write_group_pages``): ``report/neurons/<model>/<layer>.<index>.html`` (+ ``.png``), what the
paper's neuron figures and Neuroscope show, for a researcher who would rather look than read,
from the pipeline's own outputs: top-activating contexts with the activation on every token,
the activation histogram (PNG), the best match in each partner model, the family, the
vocabulary the output weights promote and suppress, the statistics with their within-layer
percentiles (computed by ``analysis.neuron_profile``, which says where each comes from).

Pages are static HTML with their figure beside them: no script, no external resource.
``neurons/index.html`` lists every universal neuron of every model. The token rendering is
the terminal view's (``outputs.token_display``).
"""

from __future__ import annotations

import html
import json
import math
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from universal_neurons.config import AnalysisConfig
from universal_neurons.description import page_store
from universal_neurons.description.effects import effects_section
from universal_neurons.description.neuron_profile import (
    Context,
    NeuronPage,
    group_pages,
    universal_neurons,
    universal_rows,
)
from universal_neurons.matching.activations import load_analysis_set
from universal_neurons.outputs import plots
from universal_neurons.outputs.number_format import beside_threshold
from universal_neurons.outputs.token_display import (
    display_pieces,
    piece_of,
    visible_token,
    window_texts,
)
from universal_neurons.text.tokens import load_tokenizer

NEURONS_DIR = "neurons"
INDEX_ROWS_PER_MODEL = 25
DEFAULT_THRESHOLD = 0.5  # τ of the universality test where no results document gives it


def page_name(layer: int, index: int) -> str:
    """File name of a neuron's page in its model's folder: ``1.17.html``."""
    return f"{layer}.{index}.html"


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _num(value: object, digits: int = 4) -> str:
    """A number with ``digits`` significant digits; whole numbers in full with thousands
    separators (a token count stored as float: ``120,320``, not ``1.203e+05``); ``–`` for
    missing/NaN."""
    if value is None or (isinstance(value, float | np.floating) and math.isnan(value)):
        return "–"
    if isinstance(value, bool | np.bool_ | str):
        return _e(value)
    if isinstance(value, int | np.integer) or float(value).is_integer():
        return f"{int(value):,}"
    return f"{float(value):.{digits}g}"


def _value(value: float, digits: int = 4) -> str:
    """A number shown with ``digits`` significant digits, its full value in ``data-value``."""
    return f'<span data-value="{float(value)!r}">{_num(value, digits)}</span>'


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], css: str = "") -> str:
    """An HTML table; ``rows`` hold HTML already escaped."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    klass = f' class="{css}"' if css else ""
    return f"<table{klass}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def token_colour(activation: float, scale: float) -> str:
    """Background of a token: orange for positive, blue for negative activations, the
    opacity ``|activation| / scale`` (1 at the neuron's top activation)."""
    alpha = min(1.0, abs(activation) / scale) if scale > 0 else 0.0
    rgb = "255,120,0" if activation >= 0 else "40,110,255"
    return f"background-color:rgba({rgb},{alpha:.3f})"


def context_html(context: Context, pieces: Sequence[str], scale: float) -> str:
    """One context: the max activation, where it is, then every token as a span coloured by
    its activation, the value in its ``title`` and ``data-act``, the max token marked; a byte
    of a split character shows the character (its ``title``: ``'Ö' (lead byte 0xC3)``)."""
    spans = []
    texts = window_texts(context.token_ids, pieces, context.following)
    for offset, ((text, long), tid, act, kept) in enumerate(
        zip(texts, context.token_ids, context.activations, context.kept, strict=True)
    ):
        label = visible_token(piece_of(pieces, tid)) if text == long else long
        text = text or "◌"  # continuation bytes only: their character is the lead token's
        classes = ["tok"]
        if context.start + offset == context.position:
            classes.append("max")
        if not kept:
            classes.append("excluded")
        note = "" if kept else " (excluded position)"
        spans.append(
            f'<span class="{" ".join(classes)}" data-act="{act:.6g}" '
            f'title="{_e(label)}: {act:.4f}{note}" '
            f'style="{token_colour(act, scale)}">{_e(text)}</span>'
        )
    return (
        f'<div class="context" data-sequence="{context.sequence}" '
        f'data-position="{context.position}" data-value="{context.value:.6g}">'
        f'<span class="where">{context.value:.4f} <small>seq {context.sequence} pos '
        f"{context.position}</small></span>"
        f'<span class="text">{"".join(spans)}</span></div>'
    )


def partners_html(
    matches: pd.DataFrame,
    universal: Mapping[str, set[tuple[int, int]]],
    paged: Mapping | None = None,
) -> str:
    """The best-matching neuron in each partner (marked where it is universal too, a link where
    it has a page: ``paged``, by default every universal neuron)."""
    paged = universal if paged is None else paged
    rows = []
    for r in matches.itertuples(index=False):
        neuron = f"L{r.argmax_layer}.N{r.argmax_index}"
        target = (int(r.argmax_layer), int(r.argmax_index))
        if r.argmax_layer >= 0 and target in universal.get(r.partner, set()):
            if target in paged.get(r.partner, set()):
                neuron = f'<a href="../{_e(r.partner)}/{page_name(*target)}">{neuron}</a>'
            neuron = f"{neuron} (universal)"
        elif r.argmax_layer < 0:
            neuron = "– (dead)"
        rows.append(
            [
                _e(r.partner),
                neuron,
                _value(r.max_corr),
                _value(r.baseline),
                _value(r.max_corr - r.baseline),
            ]
        )
    headers = ["partner", "best-matching neuron", "correlation", "baseline", "excess"]
    return _table(headers, rows, "partners")


def family_html(family: pd.Series | None) -> str:
    """Family, vocabulary family, best feature and runner-up, top features with VR."""
    if family is None:
        return "<p>Not classified (not in the family table).</p>"
    facts = [
        f'<p>Family: <b class="family">{_e(family["family"])}</b>; ',
        f"vocabulary family: <b>{_e(family.get('vocab_family', '–'))}</b></p>",
        f"<p>Best feature: <code>{_e(family['best_feature'])}</code> "
        f"(VR {_num(family['best_vr'], 3)}, {_e(family.get('best_group', ''))})",
    ]
    if "runner_up_feature" in family.index:
        facts.append(
            f"; runner-up: <code>{_e(family['runner_up_feature'])}</code> "
            f"(VR {_num(family['runner_up_vr'], 3)}, {_e(family['runner_up_group'])})"
        )
    facts.append("</p>")
    rows = []
    if "top_features" in family.index:
        for name, vr in zip(family["top_features"], family["top_vrs"], strict=True):
            bar = f'<span class="bar" style="width:{max(0.0, float(vr)) * 100:.1f}px"></span>'
            rows.append([f"<code>{_e(name)}</code>", f"{float(vr):.3f} {bar}"])
    return "".join(facts) + _table(["feature", "variance reduction"], rows, "features")


def vocab_html(ids: np.ndarray, values: np.ndarray, pieces: Sequence[str], css: str) -> str:
    """A vocabulary list: token (spaces shown as ␣), id, ``W_out[i] · W_U[:, v]``."""
    rows = [
        [f"<code>{_e(visible_token(piece_of(pieces, int(t))))}</code>", str(int(t)), f"{v:+.4f}"]
        for t, v in zip(ids, values, strict=True)
    ]
    return _table(["token", "id", "W_out·W_U"], rows, f"vocab {css}")


def stats_html(row: pd.Series) -> str:
    """Every statistic of the neuron table with its within-layer percentile where it has one."""
    rows = []
    for column in row.index:
        if column in ("layer", "index") or column.endswith("_pct"):
            continue
        pct = row.get(f"{column}_pct")
        rows.append([_e(column), _num(row[column]), "" if pct is None else _num(pct, 3)])
    return _table(["statistic", "value", "within-layer percentile"], rows, "stats")


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1100px; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 1.4em; border-bottom: 1px solid #ddd; }
nav { font-size: 0.9em; } .summary { font-size: 1.05em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.88em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.55em; text-align: left; }
th { background: #f2f2f2; }
.context { display: flex; gap: 0.8em; padding: 0.25em 0; border-bottom: 1px solid #eee; }
.where { min-width: 9em; font-family: monospace; white-space: nowrap; }
.text { font-family: monospace; white-space: pre-wrap; word-break: break-word; }
.tok { border-radius: 2px; }
.tok.max { outline: 2px solid #c00; font-weight: bold; }
.tok.excluded { color: #888; font-style: italic; }
.vocabs { display: flex; gap: 2em; flex-wrap: wrap; }
.bar { display: inline-block; height: 0.7em; background: #4a7; vertical-align: middle; }
code { background: #f6f6f6; padding: 0 0.2em; white-space: pre; }
"""


def summary_html(page: NeuronPage, threshold: float = DEFAULT_THRESHOLD) -> str:
    """One paragraph: excess correlation (digits enough to show it exceeds ``threshold``, τ),
    mean correlation and baseline, family."""
    s = page.stats
    family = "" if page.family is None else f"; family <b>{_e(page.family['family'])}</b>"
    emerged = s.get("first_universal_tokens")
    since = (
        "" if emerged is None or pd.isna(emerged) else f"; universal from {_num(emerged)} tokens"
    )
    return (
        f'<p class="summary">Universal: excess correlation '
        f"<b>{beside_threshold(s['excess_corr'], threshold)}</b> (τ = {_num(threshold)}; "
        f"mean over partners of the max correlation {_num(s['mean_corr'], 3)} − rotation "
        f"baseline {_num(s['mean_baseline'], 3)}){family}{since}.</p>"
    )


def effects_html(row: Mapping[str, Any] | None, pieces: Sequence[str]) -> str:
    """The "What it does" section: the effects stage's row of this neuron (None: not run)."""
    if row is None:
        return ""
    lines = [line for line in effects_section(dict(row)) if not line.startswith("tokens moved")]
    moved = ", ".join(
        f"<code>{_e(pieces[t] if 0 <= t < len(pieces) else t)}</code> {d:+.4f}"
        for t, d in json.loads(row["top_tokens"])
    )
    items = "".join(f"<li>{_e(line)}</li>" for line in lines)
    return (
        '<section id="effects"><h2>What it does</h2><p>Ablated on the held-out tokens '
        "(docs/effects.md): loss, KL and entropy changes, its role, and the later neurons "
        f"and heads it drives.</p><ul>{items}<li>tokens whose log-probability moves most: "
        f"{moved}</li></ul></section>"
    )


def stability_html(row: Mapping[str, Any] | None) -> str:
    """The "How sure" section: the neuron's bootstrap stability (None: not run)."""
    if row is None:
        return ""
    return (
        '<section id="sure"><h2>How sure</h2><p>Universal in '
        f"<b>{100 * float(row['stability']):.0f}%</b> of the block-bootstrap resamples; "
        f"excess correlation interval [{_num(row['excess_lo'])}, {_num(row['excess_hi'])}] "
        "(docs/uncertainty.md).</p></section>"
    )


def render_page(
    page: NeuronPage,
    pieces: Sequence[str],
    universal: Mapping[str, set[tuple[int, int]]],
    threshold: float = DEFAULT_THRESHOLD,
    extras: tuple[Mapping | None, Mapping | None] = (None, None),
    paged: Mapping | None = None,
) -> str:
    """The HTML of one neuron's page (its histogram is ``<layer>.<index>.png`` beside it;
    ``threshold``: τ of the universality test; ``extras``: its rows of the effects and the
    uncertainty tables, or None; ``paged``: per model the neurons with a page)."""
    title = f"{page.model} L{page.layer}.N{page.index}"
    scale = max((c.value for c in page.contexts), default=0.0)
    contexts = "".join(context_html(c, pieces, scale) for c in page.contexts)
    edges, counts = page.histogram
    kept = int(counts.sum())
    top_ids, top_values, bottom_ids, bottom_values = page.vocab
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>"
        f'<nav><a href="../../index.html">report</a> · <a href="../index.html">all universal '
        f"neurons</a></nav><h1>{_e(title)}</h1>{summary_html(page, threshold)}"
        f"{stability_html(extras[1])}"
        f'<section id="contexts"><h2>Top-activating contexts</h2><p>The {len(page.contexts)} '
        f"sequences of the analysis token set where the neuron fires most (one per sequence); "
        f"colour: activation (orange positive, blue negative; the title of a token gives its "
        f"value); boxed: the max token.</p>{contexts}</section>"
        f'<section id="histogram"><h2>Activation histogram</h2>'
        f'<img src="{page_store.histogram_file(page.layer, page.index)}" alt="activation histogram of {_e(title)}">'
        f"<p>{kept:,} kept positions, activations from {_num(edges[0])} to {_num(edges[-1])}"
        f" (bin edges).</p></section>"
        f'<section id="partners"><h2>Best match in each partner model</h2>'
        f"{partners_html(page.partners, universal, paged)}</section>"
        f'<section id="family"><h2>Family</h2>{family_html(page.family)}</section>'
        f"{effects_html(extras[0], pieces)}"
        f'<section id="vocab"><h2>Output weights: vocabulary</h2><p>Tokens whose logit the '
        f"neuron raises (top) and lowers (bottom) most: W_out[{page.index}] · W_U of layer "
        f"{page.layer} on the processed weights.</p>"
        f'<div class="vocabs"><div><h3>top</h3>{vocab_html(top_ids, top_values, pieces, "top")}'
        f"</div><div><h3>bottom</h3>{vocab_html(bottom_ids, bottom_values, pieces, 'bottom')}"
        f"</div></div></section>"
        f'<section id="stats"><h2>Statistics</h2>{stats_html(page.stats)}</section>'
        "</body></html>\n"
    )


def index_html(
    rows: pd.DataFrame,
    prefix: str | None,
    threshold: float = DEFAULT_THRESHOLD,
    paged: Mapping | None = None,
) -> str:
    """A table of universal neurons (``universal_rows``), each linked to its page
    (``prefix``: the path from the page holding the table to ``neurons/``; None: no links;
    ``threshold``: τ, the excess printed with the digits to show it above; ``paged``: per
    model the neurons with a page, None: all)."""
    cells = []
    for r in rows.itertuples(index=False):
        neuron = f"L{r.layer}.N{r.index}"
        if prefix is not None and (paged is None or (r.layer, r.index) in paged.get(r.model, ())):
            neuron = f'<a href="{prefix}{_e(r.model)}/{page_name(r.layer, r.index)}">{neuron}</a>'
        cells.append(
            [
                _e(r.model),
                neuron,
                beside_threshold(r.excess_corr, threshold),
                _e(r.family) if isinstance(r.family, str) else "–",
                f"<code>{_e(r.best_feature)}</code> ({_num(r.best_vr, 2)})"
                if isinstance(r.best_feature, str)
                else "–",
                _num(r.first_universal_tokens),
            ]
        )
    headers = ["model", "neuron", "excess corr", "family", "best feature (VR)"]
    return _table([*headers, "first universal (tokens)"], cells, "universal")


def write_page(
    page: NeuronPage,
    pieces: Sequence[str],
    universal,
    folder: Path,
    threshold: float = DEFAULT_THRESHOLD,
    extras: tuple[Mapping | None, Mapping | None] = (None, None),
    paged: Mapping | None = None,
) -> Path:
    """Write ``folder/<layer>.<index>.html`` and its histogram ``.png``; return the HTML path
    (``paged``: per model the neurons with a page, None: every universal neuron)."""
    folder.mkdir(parents=True, exist_ok=True)
    picture = folder / page_store.histogram_file(page.layer, page.index)
    if page.histogram_png is not None:  # drawn by the classify_candidates stage
        shutil.copyfile(page.histogram_png, picture)
    else:
        plots.neuron_histogram(page.model, page.layer, page.index, *page.histogram, picture)
    path = folder / page_name(page.layer, page.index)
    html_text = render_page(page, pieces, universal, threshold, extras, paged)
    path.write_text(html_text, encoding="utf-8")
    return path


def index_page(
    rows: pd.DataFrame, threshold: float = DEFAULT_THRESHOLD, paged: Mapping | None = None
) -> str:
    """``neurons/index.html``: every universal neuron (``universal_rows``), linked to its page
    (``paged``: per model the neurons with one, None: all)."""
    count = sum(len(neurons) for neurons in paged.values()) if paged is not None else len(rows)
    note = "" if count == len(rows) else (
        f"<p>Pages for the {count:,} most universal ({page_store.PAGES_PER_MODEL} per model "
        "at most, by "
        "excess correlation); the others are listed with their numbers, unlinked: "
        "<code>universal-neurons neuron MODEL LAYER.INDEX</code> describes any neuron.</p>"
    )  # fmt: skip
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>Universal neurons</title><style>{_STYLE}</style></head><body>"
        '<nav><a href="../index.html">report</a></nav>'
        f"<h1>Universal neurons ({len(rows):,})</h1>{note}"
        f"{index_html(rows, '', threshold, paged)}</body></html>\n"
    )


def _only_paged(table: pd.DataFrame, neurons: set) -> pd.DataFrame:
    """``table`` with ``is_universal`` kept for ``neurons`` only (which neurons get a page)."""
    keys = zip(table["layer"].astype(int), table["index"].astype(int), strict=True)
    keep = np.fromiter(((layer, index) in neurons for layer, index in keys), bool, len(table))
    return table.assign(is_universal=table["is_universal"].astype(bool) & keep)


def write_group_pages(
    out_dir: Path,
    model_dirs: Mapping[str, Path],
    tokens_dir: Path,
    analysis: AnalysisConfig,
    stats_tables: Mapping[str, pd.DataFrame],
    family_tables: Mapping[str, pd.DataFrame],
    max_corr: pd.DataFrame,
    baseline: pd.DataFrame,
    threshold: float = DEFAULT_THRESHOLD,
    extras: Mapping[str, Mapping[tuple[int, int], tuple]] | None = None,
    stored: Mapping[str, Path] | None = None,
) -> pd.DataFrame:
    """Write the page of every universal neuron of every model (its
    ``page_store.PAGES_PER_MODEL`` most
    universal) into ``out_dir/<model>/`` and the list of them all into ``out_dir/index.html``;
    return ``universal_rows``.

    ``analysis``: ``params.analysis`` (the token set, excluded positions, batch size,
    device); ``model_dirs``: per model name its Hugging Face directory; the tables as in
    ``analysis.neuron_profile.model_pages``. One streaming pass per model with universal
    neurons. ``threshold``: τ of the universality test (``results/universality.json``);
    ``extras``: per model, per ``(layer, index)``, its effects and uncertainty rows;
    ``stored``: per model the candidates' pass of the classify_candidates stage (the pass is
    made here for a model without one, or whose universal neurons it does not cover).
    """
    out_dir = Path(out_dir)
    universal = {name: set(universal_neurons(table)) for name, table in stats_tables.items()}
    rows = universal_rows(stats_tables, family_tables)
    paged = page_store.paged_neurons(rows)
    capped = {name: _only_paged(t, paged.get(name, set())) for name, t in stats_tables.items()}
    tokens, excluded, _ = load_analysis_set(tokens_dir, analysis)
    token_set = (np.asarray(tokens), excluded)
    pieces = display_pieces(load_tokenizer(tokens_dir))
    tables = (capped, family_tables, max_corr, baseline)
    for page in group_pages(model_dirs, token_set, analysis, *tables, stored):
        found = (extras or {}).get(page.model, {}).get((page.layer, page.index), (None, None))
        write_page(page, pieces, universal, out_dir / page.model, threshold, found, paged)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "index.html").write_text(index_page(rows, threshold, paged), encoding="utf-8")
    return rows
