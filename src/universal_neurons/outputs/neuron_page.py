"""The page of a neuron: as text in a terminal, and as HTML, one per universal neuron, in the report.

**Text** (``universal-neurons neuron MODEL LAYER.INDEX``, like Neuroscope; ``neuron_page``):
what the pipeline knows about the neuron (stats, universality and family tables when they
exist) and its top-activating contexts in the analysis token set, the activating token
highlighted. Highlighting goes through a ``style(text, role)`` function (roles ``heading``,
``family``, ``token``): the command line colours them, plain text leaves them as they are.

**HTML** (the report stage; ``write_group_pages``): ``report/neurons/<model>/<layer>.<index>.html``
(+ ``.png``), what the paper's neuron figures and Neuroscope show, for a researcher who would
rather look than read, from the pipeline's own outputs:

| part | from |
|---|---|
| top-activating contexts, the activation on every token | one streaming pass per model over the analysis token set |
| activation histogram over the kept positions (PNG) | the same pass (``StreamingHistogram``: exact counts, no activation stored) |
| best-matching neuron in each partner model, its correlation and the baseline | ``data/correlate/max_corr.parquet``, ``data/baseline/baseline.parquet`` (mean over samples) |
| family, best feature and VR, top features | ``data/families/seed{s}.parquet`` |
| top and bottom vocabulary tokens of the output weights | ``W_out[layer][index] @ W_U`` on the processed weights |
| statistics with within-layer percentiles | ``data/stats/seed{s}.parquet`` |

Pages are static HTML with their figure beside them: no script, no external resource.
``neurons/index.html`` lists every universal neuron of every model. Both views share the
token rendering (``render_piece``) and the context window (``context_window``).
"""

from __future__ import annotations

import html
import math
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from universal_neurons.analysis.activations import load_analysis_set
from universal_neurons.analysis.families import FamiliesError, classify_model, parse_neuron
from universal_neurons.analysis.features import FeatureSet, load_analysis_features, token_pieces
from universal_neurons.analysis.universality import CONTRACT_COLUMNS
from universal_neurons.analysis.variance import (
    TopActivations,
    collect_feature_sums,
    iter_neuron_activations,
)
from universal_neurons.config import AnalysisConfig, FamiliesConfig
from universal_neurons.errors import UserError
from universal_neurons.models.loading import load_model, processed_weights
from universal_neurons.outputs import plots
from universal_neurons.text.tokens import load_tokenizer

NEURONS_DIR = "neurons"
TOP_CONTEXTS = 10
BEFORE, AFTER = 20, 4
VOCAB_TOKENS = 12
HISTOGRAM_BINS = 512
DISPLAY_BINS = 80
INDEX_ROWS_PER_MODEL = 25
SPACE, NEWLINE, TAB = "\u2423", "\u23ce", "\u21e5"
INVISIBLE = {"Cc", "Cf", "Co", "Cn", "Zl", "Zp"}  # Unicode categories shown as escapes


# ============================================================================= tokens (both views)


def render_piece(piece: str) -> str:
    """Token text for display: special tokens named, newlines visible."""
    if piece == "":
        return "<|endoftext|>"
    return piece.replace("\n", NEWLINE)


def visible_token(piece: str) -> str:
    """A vocabulary token on its own: spaces, tabs and newlines as visible marks
    (``' the'`` -> ``␣the``), special tokens named."""
    return render_piece(piece).replace(" ", SPACE).replace("\t", TAB)


def piece_of(pieces: Sequence[str], token_id: int) -> str:
    """The text of ``token_id``; ids beyond the tokenizer (a model's padded vocabulary) named."""
    return pieces[token_id] if token_id < len(pieces) else f"<id {token_id}>"


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet inverted: the byte each printable character stands for."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    others = [b for b in range(256) if b not in printable]  # stand-ins from U+0100 on
    decoder = {chr(b): b for b in printable}
    decoder.update({chr(256 + n): b for n, b in enumerate(others)})
    return decoder


def escape_invisible(text: str) -> str:
    """Control and format characters (except newline and tab) as escapes: ``\\x14``, ``\\u200b``."""
    return "".join(
        (f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}")
        if c not in "\n\t" and unicodedata.category(c) in INVISIBLE
        else c
        for c in text
    )


def display_pieces(tokenizer) -> list[str]:
    """The text of every token id for display: its decoded text (``""`` for special tokens),
    or, for a byte-level BPE token that is no valid UTF-8 on its own (a piece of a multi-byte
    character), its bytes as escapes, e.g. ``\\xe2\\x80`` instead of ``\ufffd``; control
    characters escaped too (``escape_invisible``)."""
    pieces = token_pieces(tokenizer)
    decoder = _byte_decoder()
    for token_id, piece in enumerate(pieces):
        raw = tokenizer.id_to_token(token_id) if "\ufffd" in piece else None
        if raw and all(char in decoder for char in raw):
            data = bytes(decoder[char] for char in raw)
            piece = data.decode("utf-8", errors="backslashreplace")
        pieces[token_id] = escape_invisible(piece)
    return pieces


def context_window(length: int, position: int, before: int, after: int) -> tuple[int, int]:
    """``(start, stop)`` of the tokens shown around ``position`` in a sequence of ``length``:
    up to ``before`` tokens before it and ``after`` after it, inside the sequence."""
    return max(0, position - before), min(length, position + 1 + after)


# ============================================================================= the text page

Style = Callable[[str, str], str]
UNIVERSALITY_COLUMNS = [c for c in CONTRACT_COLUMNS if c not in ("layer", "index")]


def plain(text: str, role: str) -> str:
    """The ``Style`` that leaves text unstyled."""
    return text


class NeuronPageError(UserError):
    """A neuron that does not exist in its model."""


@dataclass(frozen=True)
class NeuronSources:
    """What the page of one neuron reads. ``label``: the model's name in the tables
    (``seed1``); the tables and ``syntax_dir`` may be missing (their sections say so)."""

    label: str
    model_dir: Path
    tokens_dir: Path
    stats_table: Path
    universality_table: Path
    family_table: Path
    syntax_dir: Path


def check_neuron(text: str, n_layers: int, d_mlp: int, label: str) -> tuple[int, int]:
    """Parse ``LAYER.INDEX`` and check it lies inside the model."""
    try:
        layer, index = parse_neuron(text)
    except FamiliesError as exc:
        raise NeuronPageError(str(exc).replace("neuron:", "NEURON:")) from None
    if not (0 <= layer < n_layers and 0 <= index < d_mlp):
        raise NeuronPageError(
            f"NEURON: {text} is outside {label} ({n_layers} layers x {d_mlp} neurons: "
            f"LAYER 0-{n_layers - 1}, INDEX 0-{d_mlp - 1})"
        )
    return layer, index


def table_row(path: Path, layer: int, index: int) -> pd.Series | None:
    """The row of neuron ``(layer, index)`` in a per-model parquet table, or None."""
    if not path.is_file():
        return None
    table = pd.read_parquet(path)
    rows = table[(table["layer"] == layer) & (table["index"] == index)]
    return None if rows.empty else rows.iloc[0]


def format_value(value) -> str:
    """A table value for display: floats with 4 significant digits, lists comma-separated."""
    if isinstance(value, float | np.floating):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, list | np.ndarray):
        return ", ".join(format_value(v) for v in value)
    return str(value)


def key_values(row: pd.Series, keys: list[str] | None = None, per_line: int = 3) -> list[str]:
    """``key = value`` lines, a few per line."""
    keys = [k for k in (keys or list(row.index)) if k in row.index and k not in ("layer", "index")]
    items = [f"{k} = {format_value(row[k])}" for k in keys]
    return ["  " + "   ".join(items[i : i + per_line]) for i in range(0, len(items), per_line)]


def table_lines(sources: NeuronSources, layer: int, index: int, style: Style) -> list[str]:
    """The universality and statistics sections, from the pipeline's tables."""
    stats = table_row(sources.stats_table, layer, index)
    universality = table_row(sources.universality_table, layer, index)
    if universality is None and stats is not None:
        universality = stats
    lines = [style("universality", "heading")]
    if universality is None:
        lines.append(f"  (no {sources.universality_table}: run the universality stage)")
    else:
        lines += key_values(universality, UNIVERSALITY_COLUMNS)
    lines.append(style("statistics", "heading"))
    if stats is None:
        lines.append(f"  (no {sources.stats_table}: run the stats stage)")
    else:
        lines += key_values(stats, [c for c in stats.index if c not in UNIVERSALITY_COLUMNS])
    return lines


def family_lines(row: pd.Series, computed_now: bool, style: Style = plain) -> list[str]:
    """The family section from a family-table row."""
    lines = []
    if computed_now:
        lines.append("  (computed now over the analysis token set: not in the family table)")
    family = style(str(row["family"]), "family")
    vocab = f"   vocabulary family: {row['vocab_family']}" if "vocab_family" in row.index else ""
    lines.append(f"  family: {family}{vocab}")
    lines.append(
        f"  best feature: {row['best_feature']} (VR {format_value(row['best_vr'])}, "
        f"{row['best_group']})"
    )
    lines.append(
        f"  runner-up:    {row['runner_up_feature']} (VR {format_value(row['runner_up_vr'])}, "
        f"{row['runner_up_group']})"
    )
    lines.append("  top features:")
    for name, vr in zip(row["top_features"], row["top_vrs"], strict=True):
        lines.append(f"    {vr:7.4f}  {name}")
    return lines


def context_line(
    tokens: np.ndarray,
    pieces: list[str],
    sequence: int,
    position: int,
    before: int,
    after: int,
    style: Style = plain,
) -> str:
    """The text around ``tokens[sequence, position]`` with that token highlighted."""
    row = tokens[sequence]
    start, stop = context_window(len(row), position, before, after)
    left = "".join(render_piece(pieces[t]) for t in row[start:position])
    right = "".join(render_piece(pieces[t]) for t in row[position + 1 : stop])
    token = style(f"[{render_piece(pieces[row[position]])}]", "token")
    return f"{left}{token}{right}"


def context_lines(
    best: TopActivations, tokens: np.ndarray, pieces: list[str], window: tuple[int, int], style
) -> list[str]:
    """One line per top activation of the (single) neuron of ``best``: value, where, context;
    ``window``: tokens shown (before, after)."""
    lines = [style(f"top-activating contexts ({len(tokens)} sequences)", "heading")]
    for rank in range(best.values.shape[1]):
        value = float(best.values[0, rank])
        if not math.isfinite(value):
            break
        seq, pos = int(best.sequence[0, rank]), int(best.position[0, rank])
        where = f"seq {seq} pos {pos}"
        text = context_line(tokens, pieces, seq, pos, *window, style)
        lines.append(f"  {value:8.4f}  {where:>16}  {text}")
    return lines


@dataclass(frozen=True)
class PageSettings:
    """How much of the token set the page shows: ``top`` contexts of ``before`` / ``after``
    tokens around the activating one, found in the analysis token set of ``analysis``."""

    analysis: AnalysisConfig
    families: FamiliesConfig
    top: int = 8
    before: int = 12
    after: int = 4


def _top_activations(
    model, analysis_set: tuple[np.ndarray, np.ndarray], neuron, settings: PageSettings, desc: str
) -> TopActivations:
    """The neuron's ``settings.top`` activations over ``(tokens, excluded ids)``, one pass."""
    tokens, excluded = analysis_set
    batch_size, device = settings.analysis.batch_size, settings.analysis.device
    no_features = FeatureSet(variables=[], codes={})
    return collect_feature_sums(
        model, tokens, no_features, [neuron], excluded, batch_size, device, settings.top, desc
    )[1]


def _family_and_top(
    sources: NeuronSources, neuron: tuple[int, int], settings: PageSettings, style: Style
) -> tuple[list[str], TopActivations, np.ndarray, list[str]]:
    """The family section (from the family table, or computed now) and the neuron's top
    activations over the analysis token set: ``(lines, top, tokens, token strings)``."""
    family = table_row(sources.family_table, *neuron)
    analysis = settings.analysis
    tokens, features, excluded, pieces = load_analysis_features(
        sources.tokens_dir, analysis, settings.families, sources.syntax_dir, syntax_prefix=True
    )
    model = load_model(str(sources.model_dir), device=analysis.device)
    desc = f"{sources.label} L{neuron[0]}.N{neuron[1]}"
    lines = [style("family", "heading")]
    if family is not None:  # the family is known: the pass only looks for top contexts
        best = _top_activations(model, (tokens, excluded), neuron, settings, desc)
        return lines + family_lines(family, False, style), best, tokens, pieces
    stats = pd.read_parquet(sources.stats_table) if sources.stats_table.is_file() else None
    table, best = classify_model(
        model,
        tokens,
        features,
        [neuron],
        excluded,
        analysis,
        settings.families,
        stats,
        desc=desc,
        top_k=settings.top,
    )
    if not sources.syntax_dir.exists():
        lines.append("  (no syntax labels: run the syntax stage for part-of-speech features)")
    return lines + family_lines(table.iloc[0], True, style), best, tokens, pieces


def neuron_page(
    sources: NeuronSources,
    neuron: tuple[int, int],
    settings: PageSettings,
    style: Style = plain,
) -> list[str]:
    """The lines of the page of ``neuron`` ``(layer, index)`` of the model of ``sources``."""
    layer, index = neuron
    lines = [
        style(f"{sources.label} neuron L{layer}.N{index}", "heading") + f"   ({sources.model_dir})"
    ]
    lines += table_lines(sources, layer, index, style)
    family, best, tokens, pieces = _family_and_top(sources, neuron, settings, style)
    window = (settings.before, settings.after)
    return lines + family + context_lines(best, tokens, pieces, window, style)


# ============================================================================= HTML pages

# ----------------------------------------------------------------------------- the pass


@dataclass
class StreamingHistogram:
    """Exact histograms of ``n`` neurons' activations, streamed, without storing activations.

    Neuron n's bins have width ``width[n]`` (a power of two) with edges at integer multiples
    of it: ``counts[n, j]`` counts values in ``[(low[n] + j) w, (low[n] + j + 1) w)``. When a
    batch falls outside the ``bins`` bins, the width doubles (neighbouring bins merge exactly,
    the new edges being edges of the old bins) and the window moves until everything fits.
    """

    width: np.ndarray  # float64 [n]; 0 before the first value
    low: np.ndarray  # int64 [n]: bin index of counts[:, 0]
    counts: np.ndarray  # int64 [n, bins]

    @classmethod
    def empty(cls, n: int, bins: int = HISTOGRAM_BINS) -> StreamingHistogram:
        """No value seen yet: ``n`` neurons of ``bins`` bins each."""
        return cls(np.zeros(n), np.zeros(n, np.int64), np.zeros((n, bins), np.int64))

    def update(self, values: np.ndarray) -> None:
        """Add ``values`` ``[positions, n]`` (activations, any float dtype)."""
        values = np.asarray(values, dtype=np.float64)
        if values.shape[0] == 0:
            return
        lo, hi = values.min(axis=0), values.max(axis=0)
        self._start(lo, hi)
        self._fit(np.floor(lo / self.width).astype(np.int64), np.floor(hi / self.width))
        n, bins = self.counts.shape
        k = np.floor(values / self.width).astype(np.int64) - self.low  # [positions, n]
        flat = (k + np.arange(n) * bins).ravel()
        self.counts += np.bincount(flat, minlength=n * bins).reshape(n, bins)

    def _start(self, lo: np.ndarray, hi: np.ndarray) -> None:
        """First values of a neuron: a power-of-two width so the batch fills a quarter of the bins."""
        new = self.width == 0
        if not new.any():
            return
        span = hi[new] - lo[new]
        span = np.where(span > 0, span, np.maximum(np.abs(lo[new]), 1.0))
        self.width[new] = 2.0 ** np.ceil(np.log2(span / (self.counts.shape[1] / 4)))
        self.low[new] = np.floor(lo[new] / self.width[new]).astype(np.int64)

    def _fit(self, need_lo: np.ndarray, need_hi: np.ndarray) -> None:
        """Widen/move the bins of neurons whose bin range ``[need_lo, need_hi]`` does not fit."""
        bins = self.counts.shape[1]
        occupied = self.counts > 0
        used = occupied.any(axis=1)
        first = np.where(used, self.low + occupied.argmax(axis=1), need_lo)
        last = np.where(used, self.low + bins - 1 - occupied[:, ::-1].argmax(axis=1), need_hi)
        k_lo = np.minimum(first, need_lo).astype(np.int64)
        k_hi = np.maximum(last, need_hi).astype(np.int64)
        for n in np.nonzero((k_lo < self.low) | (k_hi >= self.low + bins))[0]:
            shift = 0
            while (int(k_hi[n]) >> shift) - (int(k_lo[n]) >> shift) + 1 > bins:
                shift += 1
            new_low = int(k_lo[n]) >> shift
            rows = np.nonzero(occupied[n])[0]
            rebinned = np.zeros(bins, np.int64)
            np.add.at(rebinned, ((self.low[n] + rows) >> shift) - new_low, self.counts[n, rows])
            self.counts[n], self.low[n] = rebinned, new_low
            self.width[n] *= 2.0**shift

    def display(self, n: int, max_bins: int = DISPLAY_BINS) -> tuple[np.ndarray, np.ndarray]:
        """Neuron ``n``'s histogram in at most ``max_bins`` bins: ``(edges [m + 1], counts [m])``.

        Groups of ``g`` stored bins merge exactly (edges at multiples of ``g * width``).
        """
        rows = np.nonzero(self.counts[n])[0]
        if len(rows) == 0:
            return np.zeros(1), np.zeros(0, np.int64)
        k = self.low[n] + np.arange(rows[0], rows[-1] + 1)
        group = -(-len(k) // max_bins)
        while k[-1] // group - k[0] // group + 1 > max_bins:  # groups aligned to multiples
            group += 1
        g0, g1 = k[0] // group, k[-1] // group
        counts = np.bincount(k // group - g0, self.counts[n, rows[0] : rows[-1] + 1])
        edges = np.arange(g0, g1 + 2) * group * self.width[n]
        return edges, counts.astype(np.int64)


@dataclass
class NeuronActivations:
    """What one pass over the analysis token set gives for ``neurons`` (``(layer, index)``):
    their top contexts (one per sequence, with the whole sequence's activations) and
    their histograms over the kept positions."""

    neurons: list[tuple[int, int]]
    top: TopActivations
    histogram: StreamingHistogram


def activation_pass(
    model,
    tokens: np.ndarray,
    neurons: Sequence[tuple[int, int]],
    excluded_ids: np.ndarray,
    batch_size: int,
    device: str = "cpu",
    top_k: int = TOP_CONTEXTS,
    desc: str = "neuron pages",
) -> NeuronActivations:
    """One streaming pass of ``tokens [sequences, context]`` capturing only ``neurons``."""
    neurons = list(neurons)
    top = TopActivations.empty(len(neurons), top_k, context=tokens.shape[1], per_sequence=True)
    histogram = StreamingHistogram.empty(len(neurons))
    for start, kept, acts in iter_neuron_activations(
        model, tokens, neurons, excluded_ids, batch_size, device, desc
    ):
        top.update(acts, kept, start)
        histogram.update(acts[kept].numpy())
    return NeuronActivations(neurons, top, histogram)


@dataclass(frozen=True)
class Context:
    """One top-activating context: ``tokens[sequence, start:start + len(token_ids)]``, the
    neuron's activation on each token, whether each position is kept; the max at ``position``."""

    value: float
    sequence: int
    position: int
    start: int
    token_ids: list[int]
    activations: list[float]
    kept: list[bool]


def neuron_contexts(
    found: NeuronActivations,
    n: int,
    tokens: np.ndarray,
    excluded_ids: np.ndarray,
    before: int = BEFORE,
    after: int = AFTER,
) -> list[Context]:
    """The top contexts of neuron number ``n`` of ``found``, highest first."""
    contexts = []
    rows = found.top.rows
    assert rows is not None
    for rank in range(found.top.values.shape[1]):
        value = float(found.top.values[n, rank])
        if not math.isfinite(value):
            break
        seq, pos = int(found.top.sequence[n, rank]), int(found.top.position[n, rank])
        start, stop = context_window(tokens.shape[1], pos, before, after)
        ids = [int(t) for t in tokens[seq, start:stop]]
        contexts.append(
            Context(
                value,
                seq,
                pos,
                start,
                ids,
                [float(a) for a in rows[n, rank, start:stop]],
                [bool(t not in excluded_ids) for t in ids],
            )
        )
    return contexts


# ----------------------------------------------------------------------------- tables


def universal_neurons(table: pd.DataFrame) -> list[tuple[int, int]]:
    """``(layer, index)`` of the universal neurons of a stats/universality table, in order."""
    rows = table[table["is_universal"].astype(bool)].sort_values(["layer", "index"])
    return [(int(r.layer), int(r.index)) for r in rows.itertuples(index=False)]


def partner_matches(max_corr: pd.DataFrame, baseline: pd.DataFrame, model: str) -> pd.DataFrame:
    """Per neuron of ``model`` and partner: ``partner, layer, index, max_corr, argmax_layer,
    argmax_index, baseline`` (the baseline averaged over its samples)."""
    mine = max_corr[max_corr["model"] == model]
    columns = ["partner", "layer", "index", "max_corr", "argmax_layer", "argmax_index"]
    base = (
        baseline[baseline["model"] == model]
        .groupby(["partner", "layer", "index"], as_index=False, sort=False)["baseline"]
        .mean()
    )
    return mine[columns].merge(base, on=["partner", "layer", "index"], how="left")


def vocab_extremes(
    w_out: np.ndarray, w_u: np.ndarray, k: int = VOCAB_TOKENS, chunk: int = 256
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The ``k`` vocabulary tokens each output weight vector promotes and suppresses most.

    ``w_out``: ``[n, d_model]`` rows ``W_out[layer][index]``; ``w_u``: ``[d_model, vocab]``.
    Returns ``(top ids [n, k], top values, bottom ids [n, k], bottom values)``, values
    ``w_out @ w_u`` in float64, top descending, bottom ascending (ties: lower id first).
    """
    w_u = np.asarray(w_u, dtype=np.float64)
    k = min(k, w_u.shape[1])
    parts: tuple[list[np.ndarray], ...] = ([], [], [], [])
    for start in range(0, len(w_out), chunk):
        logits = np.asarray(w_out[start : start + chunk], dtype=np.float64) @ w_u
        top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
        bottom = np.argsort(logits, axis=1, kind="stable")[:, :k]
        for part, ids in ((0, top), (2, bottom)):
            parts[part].append(ids)
            parts[part + 1].append(np.take_along_axis(logits, ids, axis=1))
    if not parts[0]:
        empty = np.zeros((0, k))
        return empty.astype(np.int64), empty, empty.astype(np.int64), empty
    top_ids, top_values, bottom_ids, bottom_values = (np.concatenate(p) for p in parts)
    return top_ids, top_values, bottom_ids, bottom_values


ROW_COLUMNS = [
    "model",
    "layer",
    "index",
    "excess_corr",
    "family",
    "best_feature",
    "best_vr",
    "first_universal_tokens",
]


def universal_rows(
    tables: Mapping[str, pd.DataFrame], families: Mapping[str, pd.DataFrame]
) -> pd.DataFrame:
    """The universal neurons of every model (columns ``ROW_COLUMNS``), most universal first
    within each model.

    ``tables``: per model its stats table (or its universality table, which has no
    ``first_universal_tokens``); ``families``: per model its family table, if any.
    """
    frames = []
    for model, table in tables.items():
        rows = table.loc[table["is_universal"].astype(bool), ["layer", "index", "excess_corr"]]
        rows = rows.assign(first_universal_tokens=table.get("first_universal_tokens"))
        family = families.get(model)
        if family is not None:
            columns = ["layer", "index", "family", "best_feature", "best_vr"]
            rows = rows.merge(family.reindex(columns=columns), on=["layer", "index"], how="left")
        rows = rows.assign(model=model).reindex(columns=ROW_COLUMNS)
        frames.append(rows.sort_values("excess_corr", ascending=False, kind="stable"))
    if not frames:
        return pd.DataFrame(columns=ROW_COLUMNS)
    return pd.concat(frames, ignore_index=True)


# ----------------------------------------------------------------------------- HTML


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
    its activation, the value in its ``title`` and ``data-act``, the max token marked."""
    spans = []
    for offset, (tid, act, kept) in enumerate(
        zip(context.token_ids, context.activations, context.kept, strict=True)
    ):
        text = render_piece(piece_of(pieces, tid))
        classes = ["tok"]
        if context.start + offset == context.position:
            classes.append("max")
        if not kept:
            classes.append("excluded")
        note = "" if kept else " (excluded position)"
        spans.append(
            f'<span class="{" ".join(classes)}" data-act="{act:.6g}" '
            f'title="{_e(visible_token(piece_of(pieces, tid)))}: {act:.4f}{note}" '
            f'style="{token_colour(act, scale)}">{_e(text)}</span>'
        )
    return (
        f'<div class="context" data-sequence="{context.sequence}" '
        f'data-position="{context.position}" data-value="{context.value:.6g}">'
        f'<span class="where">{context.value:.4f} <small>seq {context.sequence} pos '
        f"{context.position}</small></span>"
        f'<span class="text">{"".join(spans)}</span></div>'
    )


def partners_html(matches: pd.DataFrame, universal: Mapping[str, set[tuple[int, int]]]) -> str:
    """The best-matching neuron in each partner (a link where it is universal too)."""
    rows = []
    for r in matches.itertuples(index=False):
        neuron = f"L{r.argmax_layer}.N{r.argmax_index}"
        target = (int(r.argmax_layer), int(r.argmax_index))
        if r.argmax_layer >= 0 and target in universal.get(r.partner, set()):
            href = f"../{_e(r.partner)}/{page_name(*target)}"
            neuron = f'<a href="{href}">{neuron}</a> (universal)'
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


@dataclass(frozen=True)
class NeuronPage:
    """Everything one page shows (``stats``: the neuron table row; ``family``: the family
    table row or None; ``partners``: rows of ``partner_matches``; ``vocab``: top ids, values,
    bottom ids, values; ``histogram``: ``(edges, counts)``)."""

    model: str
    layer: int
    index: int
    stats: pd.Series
    family: pd.Series | None
    partners: pd.DataFrame
    contexts: list[Context]
    histogram: tuple[np.ndarray, np.ndarray]
    vocab: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def summary_html(page: NeuronPage) -> str:
    """One paragraph: excess correlation, mean correlation and baseline, family."""
    s = page.stats
    family = "" if page.family is None else f"; family <b>{_e(page.family['family'])}</b>"
    emerged = s.get("first_universal_tokens")
    since = (
        "" if emerged is None or pd.isna(emerged) else f"; universal from {_num(emerged)} tokens"
    )
    return (
        f'<p class="summary">Universal: excess correlation <b>{_num(s["excess_corr"], 3)}</b> '
        f"(mean over partners of the max correlation {_num(s['mean_corr'], 3)} − rotation "
        f"baseline {_num(s['mean_baseline'], 3)}){family}{since}.</p>"
    )


def render_page(
    page: NeuronPage, pieces: Sequence[str], universal: Mapping[str, set[tuple[int, int]]]
) -> str:
    """The HTML of one neuron's page (its histogram is ``<layer>.<index>.png`` beside it)."""
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
        f"neurons</a></nav><h1>{_e(title)}</h1>{summary_html(page)}"
        f'<section id="contexts"><h2>Top-activating contexts</h2><p>The {len(page.contexts)} '
        f"sequences of the analysis token set where the neuron fires most (one per sequence); "
        f"colour: activation (orange positive, blue negative; the title of a token gives its "
        f"value); boxed: the max token.</p>{contexts}</section>"
        f'<section id="histogram"><h2>Activation histogram</h2>'
        f'<img src="{page.layer}.{page.index}.png" alt="activation histogram of {_e(title)}">'
        f"<p>{kept:,} kept positions, activations from {_num(edges[0])} to {_num(edges[-1])}"
        f" (bin edges).</p></section>"
        f'<section id="partners"><h2>Best match in each partner model</h2>'
        f"{partners_html(page.partners, universal)}</section>"
        f'<section id="family"><h2>Family</h2>{family_html(page.family)}</section>'
        f'<section id="vocab"><h2>Output weights: vocabulary</h2><p>Tokens whose logit the '
        f"neuron raises (top) and lowers (bottom) most: W_out[{page.index}] · W_U of layer "
        f"{page.layer} on the processed weights.</p>"
        f'<div class="vocabs"><div><h3>top</h3>{vocab_html(top_ids, top_values, pieces, "top")}'
        f"</div><div><h3>bottom</h3>{vocab_html(bottom_ids, bottom_values, pieces, 'bottom')}"
        f"</div></div></section>"
        f'<section id="stats"><h2>Statistics</h2>{stats_html(page.stats)}</section>'
        "</body></html>\n"
    )


def histogram_png(edges: np.ndarray, counts: np.ndarray, title: str, path: Path) -> Path:
    """The activation histogram as a PNG (log count axis: most positions sit near 0)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 2.6))
    if len(counts):
        ax.stairs(counts, edges, fill=True, color="#e07020")
        ax.set_yscale("log")
    ax.set_xlabel("activation (post-GELU)")
    ax.set_ylabel("positions")
    ax.set_title(title, fontsize="medium")
    ax.grid(alpha=0.3)
    return plots.save(fig, path)


def index_html(rows: pd.DataFrame, prefix: str | None) -> str:
    """A table of universal neurons (``universal_rows``), each linked to its page
    (``prefix``: the path from the page holding the table to ``neurons/``; None: no links)."""
    cells = []
    for r in rows.itertuples(index=False):
        neuron = f"L{r.layer}.N{r.index}"
        if prefix is not None:
            neuron = f'<a href="{prefix}{_e(r.model)}/{page_name(r.layer, r.index)}">{neuron}</a>'
        cells.append(
            [
                _e(r.model),
                neuron,
                _num(r.excess_corr, 3),
                _e(r.family) if isinstance(r.family, str) else "–",
                f"<code>{_e(r.best_feature)}</code> ({_num(r.best_vr, 2)})"
                if isinstance(r.best_feature, str)
                else "–",
                _num(r.first_universal_tokens),
            ]
        )
    headers = ["model", "neuron", "excess corr", "family", "best feature (VR)"]
    return _table([*headers, "first universal (tokens)"], cells, "universal")


# ----------------------------------------------------------------------------- writing


def model_pages(
    model,
    name: str,
    tokens: np.ndarray,
    excluded_ids: np.ndarray,
    stats: pd.DataFrame,
    family: pd.DataFrame | None,
    partners: pd.DataFrame,
    batch_size: int,
    device: str = "cpu",
) -> list[NeuronPage]:
    """The pages of ``model``'s universal neurons (``stats``: its neuron table; ``family``:
    its family table or None; ``partners``: ``partner_matches`` of the model)."""
    neurons = universal_neurons(stats)
    if not neurons:
        return []
    found = activation_pass(model, tokens, neurons, excluded_ids, batch_size, device)
    weights = processed_weights(model)
    w_out = np.stack([weights["W_out"][layer, index].numpy() for layer, index in neurons])
    vocab = vocab_extremes(w_out, weights["W_U"].numpy())
    by_neuron = stats.set_index(["layer", "index"])
    families = pd.DataFrame() if family is None else family.set_index(["layer", "index"])
    matches = partners.set_index(["layer", "index"]).sort_index()
    pages = []
    for n, (layer, index) in enumerate(neurons):
        classified = (layer, index) in families.index
        pages.append(
            NeuronPage(
                name,
                layer,
                index,
                by_neuron.loc[(layer, index)],
                families.loc[(layer, index)] if classified else None,
                matches.loc[[(layer, index)]].reset_index(),
                neuron_contexts(found, n, tokens, excluded_ids),
                found.histogram.display(n),
                tuple(part[n] for part in vocab),  # type: ignore[arg-type]
            )
        )
    return pages


def write_page(page: NeuronPage, pieces: Sequence[str], universal, folder: Path) -> Path:
    """Write ``folder/<layer>.<index>.html`` and its histogram ``.png``; return the HTML path."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{page.layer}.{page.index}"
    title = f"{page.model} L{page.layer}.N{page.index}: {int(page.histogram[1].sum()):,} positions"
    histogram_png(*page.histogram, title, folder / f"{stem}.png")
    path = folder / page_name(page.layer, page.index)
    path.write_text(render_page(page, pieces, universal), encoding="utf-8")
    return path


def write_group_pages(
    out_dir: Path,
    model_dirs: Mapping[str, Path],
    tokens_dir: Path,
    analysis: AnalysisConfig,
    stats_tables: Mapping[str, pd.DataFrame],
    family_tables: Mapping[str, pd.DataFrame],
    max_corr: pd.DataFrame,
    baseline: pd.DataFrame,
) -> pd.DataFrame:
    """Write the page of every universal neuron of every model into ``out_dir/<model>/`` and
    the list of them all into ``out_dir/index.html``; return ``universal_rows``.

    ``analysis``: ``params.analysis`` (the token set, excluded positions, batch size,
    device); ``model_dirs``: per model name its Hugging Face directory; the tables as in
    ``model_pages``. One streaming pass per model with universal neurons.
    """
    out_dir = Path(out_dir)
    universal = {name: set(universal_neurons(table)) for name, table in stats_tables.items()}
    tokens, excluded, _ = load_analysis_set(tokens_dir, analysis)
    tokens = np.asarray(tokens)
    pieces = display_pieces(load_tokenizer(tokens_dir))
    for name, stats in stats_tables.items():
        if not universal[name]:
            continue
        model = load_model(str(model_dirs[name]), device=analysis.device)
        partners = partner_matches(max_corr, baseline, name)
        pages = model_pages(
            model,
            name,
            tokens,
            excluded,
            stats,
            family_tables.get(name),
            partners,
            analysis.batch_size,
            analysis.device,
        )
        for page in pages:
            write_page(page, pieces, universal, out_dir / name)
        del model
    rows = universal_rows(stats_tables, family_tables)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "index.html").write_text(
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>Universal neurons</title><style>{_STYLE}</style></head><body>"
        '<nav><a href="../index.html">report</a></nav>'
        f"<h1>Universal neurons ({len(rows):,})</h1>{index_html(rows, '')}</body></html>\n",
        encoding="utf-8",
    )
    return rows
