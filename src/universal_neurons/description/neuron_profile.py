"""What the pipeline knows about a neuron, computed for its views (``outputs.neuron_view``, the
terminal; ``outputs.neuron_page``, the report's HTML page per universal neuron).

**One neuron** (``neuron_profile``): its family (the family table's row, or ``classify_model``
now over the analysis token set) and its top activations over that token set: those the
classify stage stored in the family table's row (``families.with_top_contexts``) when they
cover what is asked, else one pass over the token set.

**The universal neurons of a group** (``group_pages``, one model loaded at a time):

| part | from |
|---|---|
| top-activating contexts, the activation on every token | one streaming pass per model over the analysis token set (``activation_pass``), made by the classify_candidates stage for the candidates and stored (``page_store``); made here for neurons it does not cover |
| activation histogram over the kept positions | the same pass (``analysis.histogram.StreamingHistogram``: exact counts, no activation stored) |
| best-matching neuron in each partner model, its correlation and the baseline | ``data/correlate/max_corr.parquet``, ``data/baseline/baseline.parquet`` (mean over samples; ``partner_matches``) |
| family, best feature and VR, top features | ``data/families/seed{s}.parquet`` |
| top and bottom vocabulary tokens of the output weights | ``W_out[layer][index] @ W_U`` on the processed weights (``vocab_extremes``) |
| statistics with within-layer percentiles | ``data/stats/seed{s}.parquet`` |

Both views share the context window (``context_window``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from universal_neurons.config import AnalysisConfig, FamiliesConfig
from universal_neurons.description.families import (
    TOP_COLUMNS,
    FamiliesError,
    classify_model,
    parse_neuron,
)
from universal_neurons.description.features import (
    FeatureSet,
    load_analysis_features,
    token_pieces,
)
from universal_neurons.description.histogram import StreamingHistogram
from universal_neurons.description.page_store import (
    NeuronActivations,
    histogram_file,
    histograms_dir,
    load_activations,
    select_activations,
)
from universal_neurons.description.variance import (
    TopActivations,
    collect_feature_sums,
    iter_neuron_activations,
)
from universal_neurons.errors import UserError
from universal_neurons.matching.activations import load_analysis_set
from universal_neurons.models.loading import load_model, processed_weights
from universal_neurons.text.tokens import load_tokenizer

TOP_CONTEXTS = 10
BEFORE, AFTER = 20, 4
VOCAB_TOKENS = 12


def context_window(length: int, position: int, before: int, after: int) -> tuple[int, int]:
    """``(start, stop)`` of the tokens shown around ``position`` in a sequence of ``length``:
    up to ``before`` tokens before it and ``after`` after it, inside the sequence."""
    return max(0, position - before), min(length, position + 1 + after)


# ============================================================================= one neuron


class NeuronPageError(UserError):
    """A neuron that does not exist in its model."""


@dataclass(frozen=True)
class NeuronSources:
    """What the page of one neuron reads. ``label``: the model's name in the tables
    (``seed1``); the tables and ``syntax_dir`` may be missing (their sections say so);
    ``effects_table``: the effects stage's table, shown where it exists."""

    label: str
    model_dir: Path
    tokens_dir: Path
    stats_table: Path
    universality_table: Path
    family_table: Path
    syntax_dir: Path
    effects_table: Path | None = None


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


@dataclass(frozen=True)
class PageSettings:
    """How much of the token set the page shows: ``top`` contexts of ``before`` / ``after``
    tokens around the activating one, found in the analysis token set of ``analysis``;
    ``precomputed``: the family table's stored top contexts were found over this token set
    (False when ``analysis`` differs from the pipeline's: they are then looked for again);
    ``threshold``: τ of the universality test (the excess is printed to show its side of it)."""

    analysis: AnalysisConfig
    families: FamiliesConfig
    top: int = 8
    before: int = 12
    after: int = 4
    precomputed: bool = True
    threshold: float = 0.5


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


@dataclass(frozen=True)
class NeuronProfile:
    """What one pass finds about a neuron: its family (``family``: the family table's row, or,
    ``computed_now``, the row ``classify_model`` gives; ``no_syntax``: computed without syntax
    labels), its ``top`` activations and the token set they index (``tokens``, ``pieces``);
    ``stored_top``: the top activations are the classify stage's, read from the family table."""

    family: pd.Series
    computed_now: bool
    no_syntax: bool
    top: TopActivations
    tokens: np.ndarray
    pieces: list[str]
    stored_top: bool = False


def stored_top(family: pd.Series, k: int) -> TopActivations | None:
    """The ``k`` best activations the classify stage stored in a family-table row
    (``families.TOP_COLUMNS``), or None when the row has none or fewer than ``k``."""
    if not all(column in family.index for column in TOP_COLUMNS):
        return None
    values, sequences, positions = (np.asarray(family[c]) for c in TOP_COLUMNS)
    if len(values) < k:
        return None
    return TopActivations(
        torch.as_tensor(values[None, :k].astype(np.float64)),
        torch.as_tensor(sequences[None, :k].astype(np.int64)),
        torch.as_tensor(positions[None, :k].astype(np.int64)),
    )


def _known_family_profile(
    sources: NeuronSources, neuron: tuple[int, int], settings: PageSettings, family: pd.Series
) -> NeuronProfile:
    """The profile of a neuron in the family table: no features; its stored top contexts when
    they cover ``settings`` (no model loaded), else one pass for them."""
    tokens, excluded, _ = load_analysis_set(sources.tokens_dir, settings.analysis)
    pieces = token_pieces(load_tokenizer(sources.tokens_dir))
    best = stored_top(family, settings.top) if settings.precomputed else None
    if best is not None:
        return NeuronProfile(family, False, False, best, tokens, pieces, stored_top=True)
    model = load_model(str(sources.model_dir), device=settings.analysis.device)
    desc = f"{sources.label} L{neuron[0]}.N{neuron[1]}"
    best = _top_activations(model, (tokens, excluded), neuron, settings, desc)
    return NeuronProfile(family, False, False, best, tokens, pieces)


def neuron_profile(
    sources: NeuronSources, neuron: tuple[int, int], settings: PageSettings
) -> NeuronProfile:
    """The family of ``neuron`` ``(layer, index)`` (from the family table, or computed now)
    and its top activations over the analysis token set."""
    family = table_row(sources.family_table, *neuron)
    if family is not None:  # the family is known: at most a pass for the top contexts
        return _known_family_profile(sources, neuron, settings, family)
    analysis = settings.analysis
    tokens, features, excluded, pieces = load_analysis_features(
        sources.tokens_dir, analysis, settings.families, sources.syntax_dir, syntax_prefix=True
    )
    model = load_model(str(sources.model_dir), device=analysis.device)
    desc = f"{sources.label} L{neuron[0]}.N{neuron[1]}"
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
    no_syntax = not sources.syntax_dir.exists()
    return NeuronProfile(table.iloc[0], True, no_syntax, best, tokens, pieces)


# ============================================================================= universal neurons


def with_vocab(found: NeuronActivations, model) -> NeuronActivations:
    """``found`` with the ``vocab_extremes`` of its neurons' output weights in ``model``
    (its processed weights, as the neuron pages show them)."""
    weights = processed_weights(model)
    w_out = np.stack([weights["W_out"][layer, index].numpy() for layer, index in found.neurons])
    vocab = vocab_extremes(w_out, weights["W_U"].numpy())
    return NeuronActivations(found.neurons, found.top, found.histogram, vocab)


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
    neuron's activation on each token, whether each position is kept; the max at ``position``;
    ``following``: up to 3 tokens after the window (to finish a character split at its edge)."""

    value: float
    sequence: int
    position: int
    start: int
    token_ids: list[int]
    activations: list[float]
    kept: list[bool]
    following: list[int] = field(default_factory=list)


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
                [int(t) for t in tokens[seq, stop : stop + 3]],
            )
        )
    return contexts


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
        universal = table.loc[table["is_universal"].astype(bool)]
        if universal.empty:  # (assigning a column to an empty frame would take its rows)
            continue
        rows = universal[["layer", "index", "excess_corr"]]
        rows = rows.assign(first_universal_tokens=universal.get("first_universal_tokens"))
        family = families.get(model)
        if family is not None:
            columns = ["layer", "index", "family", "best_feature", "best_vr"]
            rows = rows.merge(family.reindex(columns=columns), on=["layer", "index"], how="left")
        rows = rows.assign(model=model).reindex(columns=ROW_COLUMNS)
        frames.append(rows.sort_values("excess_corr", ascending=False, kind="stable"))
    if not frames:
        return pd.DataFrame(columns=ROW_COLUMNS)
    return pd.concat(frames, ignore_index=True)


@dataclass(frozen=True)
class NeuronPage:
    """Everything one page shows (``stats``: the neuron table row; ``family``: the family
    table row or None; ``partners``: rows of ``partner_matches``; ``vocab``: top ids, values,
    bottom ids, values; ``histogram``: ``(edges, counts)``; ``histogram_png``: the stored
    picture of that histogram (``histograms_dir``), or None: draw it)."""

    model: str
    layer: int
    index: int
    stats: pd.Series
    family: pd.Series | None
    partners: pd.DataFrame
    contexts: list[Context]
    histogram: tuple[np.ndarray, np.ndarray]
    vocab: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
    histogram_png: Path | None = None


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
    stored: NeuronActivations | None = None,
) -> list[NeuronPage]:
    """The pages of ``model``'s universal neurons (``stats``: its neuron table; ``family``:
    its family table or None; ``partners``: ``partner_matches`` of the model). ``stored``:
    the classify_candidates stage's pass over the same token set (``load_activations``);
    used when it covers every neuron, else one pass here. ``model``: None when ``stored``
    covers every neuron and holds their ``vocab``."""
    neurons = universal_neurons(stats)
    if not neurons:
        return []
    found = None if stored is None else select_activations(stored, neurons)
    if found is None:
        found = activation_pass(model, tokens, neurons, excluded_ids, batch_size, device)
    if found.vocab is None:
        found = with_vocab(found, model)
    vocab = found.vocab
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


def group_pages(
    model_dirs: Mapping[str, Path],
    token_set: tuple[np.ndarray, np.ndarray],
    analysis: AnalysisConfig,
    stats_tables: Mapping[str, pd.DataFrame],
    family_tables: Mapping[str, pd.DataFrame],
    max_corr: pd.DataFrame,
    baseline: pd.DataFrame,
    stored: Mapping[str, Path] | None = None,
) -> Iterator[NeuronPage]:
    """The pages of the universal neurons of every model, model after model (one loaded at a
    time; ``token_set``: ``(tokens, excluded ids)``; ``model_dirs``: per model name its
    Hugging Face directory; the tables as in ``model_pages``; ``stored``: per model the file
    of its candidates' pass (``save_activations``), used where it exists)."""
    tokens, excluded = token_set
    for name, stats in stats_tables.items():
        neurons = universal_neurons(stats)
        if not neurons:
            continue
        path = (stored or {}).get(name)
        found = load_activations(path) if path is not None and path.is_file() else None
        found = None if found is None else select_activations(found, neurons)
        model = None  # the stored pass with its vocabulary extremes needs no model
        if found is None or found.vocab is None:
            model = load_model(str(model_dirs[name]), device=analysis.device)
        partners = partner_matches(max_corr, baseline, name)
        family = family_tables.get(name)
        pages = model_pages(
            model, name, tokens, excluded, stats, family, partners, analysis.batch_size,
            analysis.device, found,
        )  # fmt: skip
        pictures = None if found is None else path.parent / histograms_dir(name)
        yield from (_with_stored_histogram(page, pictures) for page in pages)
        del model


def _with_stored_histogram(page: NeuronPage, folder: Path | None) -> NeuronPage:
    """``page`` with ``histogram_png`` set when ``folder`` holds its picture."""
    path = None if folder is None else folder / histogram_file(page.layer, page.index)
    return page if path is None or not path.is_file() else replace(page, histogram_png=path)
