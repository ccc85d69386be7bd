"""Neuron families: planted activations on the real tiny token set give the planted answers.

Activations are written directly as functions of the tokens (current token, previous
token, position, first letter, domain) and fed through the same streaming accumulator
the classify stage uses; the variance reductions are checked against the planted
structure (VR = 1) and against a direct pandas computation of the SPEC's definition.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_params

from universal_neurons.config import FamiliesConfig
from universal_neurons.description.families import (
    GroupThresholds,
    assign_family,
    classify_neurons,
    parse_neuron,
    parse_neurons,
    vocab_family,
)
from universal_neurons.description.features import (
    build_features,
    build_topic_words,
    normalise,
    token_class,
    token_pieces,
    token_table,
    word_codes,
    word_starts,
)
from universal_neurons.description.syntax import load_spacy, parse_syntax
from universal_neurons.description.variance import FeatureSums
from universal_neurons.matching.activations import (
    analysis_tokens,
    excluded_token_ids,
    iter_batches,
    kept_mask,
)
from universal_neurons.text.tokens import load_domains, load_tokenizer, load_tokens


@pytest.fixture(scope="module")
def token_set(tiny_tokens_dir):
    params = tiny_params()
    tokenizer = load_tokenizer(tiny_tokens_dir)
    tokens = np.asarray(analysis_tokens(load_tokens(tiny_tokens_dir), params.analysis))
    domains, names = load_domains(tiny_tokens_dir)
    domains = domains[: len(tokens)]
    excluded = excluded_token_ids(tokenizer, params.analysis)
    kept = kept_mask(tokens, excluded).numpy()
    pieces = token_pieces(tokenizer)
    features = build_features(
        tokens, pieces, domains, names, kept, syntax=None, topic_words=20, topic_min_count=5
    )
    return {
        "tokens": tokens,
        "domains": domains,
        "excluded": excluded,
        "kept": kept,
        "pieces": pieces,
        "features": features,
        "tokenizer": tokenizer,
    }


def _stream(token_set, activation_fn, n_neurons, batch_size=37):
    """Feed ``activation_fn(tokens [b, p], first_sequence) -> [b, p, N]`` through FeatureSums."""
    features = token_set["features"]
    sums = FeatureSums(features.variables, n_neurons)
    for number, batch in iter_batches(token_set["tokens"], batch_size):
        start = number * batch_size
        kept = kept_mask(batch, token_set["excluded"])
        acts = torch.as_tensor(activation_fn(batch.numpy(), start), dtype=torch.float32)
        sums.update(acts[kept], features.batch_codes(start, start + len(batch), kept))
    return sums


def _most_common(values: np.ndarray) -> int:
    ids, counts = np.unique(values, return_counts=True)
    return int(ids[np.argmax(counts)])


@pytest.fixture(scope="module")
def planted(token_set):
    """Eight planted neurons and their family table."""
    tokens, kept, features = token_set["tokens"], token_set["kept"], token_set["features"]
    unigram = features.codes["unigram"]
    letter = features.codes["first_letter"]
    # the most common kept word token, a word unigram covering several ids, a first letter
    pieces = token_set["pieces"]
    wordy = np.array([p.strip().isalpha() for p in pieces])[tokens] & kept
    t = _most_common(tokens[wordy])
    labels = features.variable("unigram").labels
    multi = [
        u
        for u in np.unique(unigram[wordy])
        if labels[u].isalpha() and len(np.unique(tokens[kept][unigram[kept] == u])) > 1
    ]
    u = max(multi, key=lambda c: int((unigram[kept] == c).sum()))
    letter_t = features.variable("first_letter").labels.index("t")
    none = features.variable("first_letter").labels.index("none")
    rng = np.random.default_rng(0)
    per_token = rng.normal(size=len(token_set["pieces"]))
    per_position = rng.normal(size=tokens.shape[1])

    def activations(batch: np.ndarray, start: int) -> np.ndarray:
        stop = start + len(batch)
        prev = np.concatenate([np.full((len(batch), 1), -1), batch[:, :-1]], axis=1)
        pos = np.broadcast_to(np.arange(batch.shape[1]), batch.shape)
        dom = np.broadcast_to(token_set["domains"][start:stop, None], batch.shape)
        return np.stack(
            [
                2.0 * (batch == t) + 0.5,  # current token
                per_token[batch],  # any function of the current token
                -1.5 * (prev == t),  # previous token
                per_position[pos],  # position
                3.0 * (unigram[start:stop] == u),  # normalised unigram (several ids)
                1.0 * (letter[start:stop] == letter_t),  # first letter of the word
                1.0 * (dom == 1),  # domain
                1.0 * (letter[start:stop] == none),  # not a word: no alphabet feature
            ],
            axis=-1,
        )

    sums = _stream(token_set, activations, 8)
    config = FamiliesConfig()
    table = classify_neurons(sums, features, [(0, i) for i in range(8)], config)
    return {"sums": sums, "table": table, "t": t, "u": u, "letter_t": letter_t}


def test_current_token_function_gives_token_vr_one_and_unigram_family(planted):
    sums, table, t = planted["sums"], planted["table"], planted["t"]
    assert sums.variance_reduction("token")[t, 0] == pytest.approx(1.0, abs=1e-9)
    row = table.iloc[0]
    assert row["family"] == "unigram"
    assert row["unigram_vr"] == pytest.approx(1.0, abs=1e-9)
    assert row["best_group"] == "unigram"
    # a feature of another group (the token's first letter, its class, ...) is the runner-up
    assert row["runner_up_group"] != "unigram" and row["runner_up_vr"] < 1.0 - 1e-6
    # an arbitrary function of the current token: eta^2(token) = 1, and of nothing else
    assert table.loc[1, "eta2_token"] == pytest.approx(1.0, abs=1e-9)
    assert table.loc[1, "eta2_position"] < 0.2


def test_normalised_unigram_covers_several_ids(planted, token_set):
    sums, u = planted["sums"], planted["u"]
    assert sums.variance_reduction("unigram")[u, 4] == pytest.approx(1.0, abs=1e-9)
    assert np.nanmax(sums.variance_reduction("token")[:, 4]) < 1.0 - 1e-3
    assert planted["table"].loc[4, "family"] == "unigram"


def test_previous_token_family(planted):
    sums, table, t = planted["sums"], planted["table"], planted["t"]
    assert sums.variance_reduction("prev_token")[t, 2] == pytest.approx(1.0, abs=1e-9)
    assert table.loc[2, "family"] == "previous_token"
    assert table.loc[2, "previous_token_vr"] == pytest.approx(1.0, abs=1e-9)
    assert table.loc[2, "unigram_vr"] < 0.5


def test_position_family(planted):
    table = planted["table"]
    assert table.loc[3, "eta2_position"] == pytest.approx(1.0, abs=1e-9)
    assert table.loc[3, "position_vr"] == pytest.approx(1.0, abs=1e-9)
    assert table.loc[3, "family"] == "position"
    assert table.loc[3, "best_feature"] == "position"


def test_alphabet_and_semantic_families(planted):
    sums, table = planted["sums"], planted["table"]
    assert sums.variance_reduction("first_letter")[planted["letter_t"], 5] == pytest.approx(
        1.0, abs=1e-9
    )
    assert table.loc[5, "family"] == "alphabet"
    assert table.loc[5, "alphabet_feature"] == "first_letter=t"
    assert sums.variance_reduction("domain")[1, 6] == pytest.approx(1.0, abs=1e-9)
    assert table.loc[6, "family"] == "semantic"
    assert table.loc[6, "eta2_domain"] == pytest.approx(1.0, abs=1e-9)


def test_vr_equals_pandas_on_stored_activations(token_set):
    """Noisy planted activations: streaming VR and eta^2 equal SPEC's formulas on stored values."""
    features, tokens = token_set["features"], token_set["tokens"]
    rng = np.random.default_rng(1)
    noise = rng.normal(size=tokens.shape + (2,))
    per_token = rng.normal(size=len(token_set["pieces"]))

    def activations(batch, start):
        stop = start + len(batch)
        a = per_token[batch] + 0.5 * noise[start:stop, :, 0]
        b = 0.01 * np.arange(batch.shape[1])[None, :] + noise[start:stop, :, 1] + 100.0
        return np.stack([a, b], axis=-1)

    sums = _stream(token_set, activations, 2, batch_size=23)
    kept = token_set["kept"]
    stored = activations(tokens, 0)[kept]  # [positions, 2]
    frame = pd.DataFrame({v.name: features.codes[v.name][kept] for v in features.variables})
    for neuron in range(2):
        a = pd.Series(stored[:, neuron].astype(np.float32).astype(np.float64))
        var = a.var(ddof=0)
        for name in (
            "token",
            "unigram",
            "first_letter",
            "prev_token",
            "position",
            "domain",
            "topic",
        ):
            groups = a.groupby(frame[name])
            eta2 = (groups.count() * (groups.mean() - a.mean()) ** 2).sum() / (var * len(a))
            assert sums.eta_squared(name)[neuron] == pytest.approx(eta2, abs=1e-10)
            vr = sums.variance_reduction(name)[:, neuron]
            for category in frame[name].value_counts().index[:3]:
                inside = frame[name] == category
                p = inside.mean()
                within = p * a[inside].var(ddof=0) + (1 - p) * a[~inside].var(ddof=0)
                assert vr[category] == pytest.approx((var - within) / var, abs=1e-10)


def test_token_level_feature_definitions():
    assert normalise(" The") == normalise("the") == "the"
    assert normalise("  ") == "<space>" and normalise("") == "<special>"
    assert [token_class(p) for p in [" The", "dog", " 1,000", "!?", "\n", "", " _x"]] == [
        "capitalized",
        "lowercase",
        "numeric",
        "punctuation",
        "whitespace",
        "special",
        "other",
    ]
    pieces = ["", " The", " d", "og", " runs", ".", " Zeb", "ra"]
    tokens = np.array([[0, 1, 2, 3, 4, 5, 6, 7]])
    table = token_table(pieces)
    starts = word_starts(tokens, table)
    assert starts.tolist() == [[0, 1, 2, 2, 4, 5, 6, 6]]
    codes, first, labels = word_codes(tokens, table, starts)
    assert [labels[c] for c in codes[0]] == [
        "<special>",
        "the",
        "dog",
        "dog",
        "runs",
        ".",
        "zebra",
        "zebra",
    ]
    assert first[0].tolist() == [True, True, True, False, True, True, True, False]
    features = build_features(tokens, pieces, np.array([0]), ["only"], np.ones((1, 8), bool))
    letters = features.variable("first_letter").labels
    assert [letters[c] for c in features.codes["first_letter"][0]] == [
        "none",
        "t",
        "d",
        "d",
        "r",
        "none",
        "z",
        "z",
    ]
    topic_words = features.variable("topic")
    assert topic_words.labels == ("none", "only")
    prev = features.variable("prev_token").labels
    assert [prev[c] for c in features.codes["prev_token"][0][:3]] == ["<start>", "", " The"]


def test_family_rules_at_their_thresholds():
    th = GroupThresholds.from_config(FamiliesConfig())
    assert assign_family({"unigram": 0.51}, th) == "unigram"
    assert assign_family({"unigram": 0.5}, th) == "unexplained"  # strictly above
    assert assign_family({"alphabet": 0.38, "unigram": 0.45}, th) == "alphabet"
    # previous token must beat the current-token score as well as its threshold
    assert assign_family({"previous_token": 0.7, "unigram": 0.8}, th) == "unigram"
    assert assign_family({"previous_token": 0.7, "unigram": 0.4}, th) == "previous_token"
    assert assign_family({"previous_token": 0.7, "unigram": 0.75, "alphabet": 0.1}, th) == (
        "unigram"
    )
    assert assign_family({"position": 0.6, "syntax": 0.9}, th) == "syntax"
    assert assign_family({"semantic": float("nan")}, th) == "unexplained"
    config = FamiliesConfig()
    assert vocab_family(12.0, 1.0, 0.001, config) == "prediction"
    assert vocab_family(12.0, -1.0, 0.001, config) == "suppression"
    assert vocab_family(9.0, -1.0, 0.006, config) == "partition"
    assert vocab_family(9.0, 1.0, 0.004, config) == "none"


def test_neuron_selection_errors():
    assert parse_neuron("1.17") == (1, 17)
    for bad in ["1", "a.b", "1.2.3", "-1.2"]:
        with pytest.raises(ValueError, match="LAYER.INDEX"):
            parse_neuron(bad)
    with pytest.raises(ValueError, match="outside the model"):
        parse_neurons(["2.0"], 2, 64)
    universal = np.zeros((2, 4), bool)
    universal[1, 2] = True
    assert parse_neurons("universal", 2, 4, universal) == [(1, 2)]
    assert len(parse_neurons("all", 2, 4)) == 8


def test_topic_words_are_distinctive_words_of_their_domain():
    labels = ("said", "class", "the", "method", "rare")
    # occurrences: 'said' mostly news (domain 0), 'class'/'method' python_docs (1), 'the' both
    words = np.array([0] * 30 + [0] * 2 + [1] * 25 + [3] * 25 + [2] * 40 + [2] * 40 + [4] * 3)
    domains = np.array([0] * 30 + [1] * 2 + [1] * 25 + [1] * 25 + [0] * 40 + [1] * 40 + [0] * 3)
    topics = build_topic_words(words, domains, labels, ["news", "docs"], n_words=5, min_count=5)
    # 'the' is a stop word, 'rare' is below min_count; each word goes to one domain only
    assert topics == {"news": ["said"], "docs": ["class", "method"]} or topics == {
        "news": ["said"],
        "docs": ["method", "class"],
    }
    assert build_topic_words(words, domains * 0, labels, ["all"], 5, 5) == {}


@pytest.fixture(scope="module")
def nlp():
    """The pinned English spaCy pipeline (loaded once per module: a few seconds)."""
    return load_spacy(FamiliesConfig().spacy_model)


def test_syntax_labels_from_a_real_spacy_parse(nlp, token_set):
    """Each BPE token gets the POS / dependency of the word it belongs to."""
    pieces = token_set["pieces"]
    ids = [0, *token_set["tokenizer"].encode("The dog runs. The cat sleeps.").ids]
    syntax = parse_syntax(np.array([ids]), pieces, nlp)
    pos = [syntax.pos_labels[c] for c in syntax.pos[0]]
    dep = [syntax.dep_labels[c] for c in syntax.dep[0]]
    text = [pieces[i] for i in ids]
    # every token of 'dog' (however the tiny BPE splits it) is a NOUN and the subject
    word_of = _word_of_each_token(text)
    by_word = {}
    for word, p, d in zip(word_of, pos, dep, strict=True):
        by_word.setdefault(word, set()).add((p, d))
    assert word_of.count("dog") >= 2 and word_of.count("sleeps") >= 2  # split by the BPE
    assert by_word["dog"] == {("NOUN", "nsubj")}
    assert by_word["cat"] == {("NOUN", "nsubj")}
    assert by_word["sleeps"] == {("VERB", "ROOT")}
    assert by_word["runs"] == {("VERB", "ROOT")}
    assert by_word["the"] == {("DET", "det")}
    assert by_word["."] == {("PUNCT", "punct")}
    assert pos[0] == dep[0] == "none"  # BOS
    assert syntax.pos_labels[0] == "none" and list(syntax.pos_labels[1:]) == sorted(
        syntax.pos_labels[1:]
    )


def _word_of_each_token(text: list[str]) -> list[str]:
    words, current = [], ""
    for piece in text:
        if not piece or piece[0] == " " or not piece[0].isalpha() or not current[-1:].isalpha():
            current = piece.strip().lower()
        else:
            current += piece.lower()
        words.append(current)
    # give each token its whole word (the last spelling of its word)
    for i in range(len(words) - 2, -1, -1):
        if text[i + 1][:1].isalpha() and text[i][-1:].isalpha():
            words[i] = words[i + 1]
    return words


def test_placeholder_categories_are_not_features(planted):
    """An activation that marks non-letter tokens has eta^2(first_letter) = 1, but 'none' is no
    alphabet feature: the neuron is not an alphabet neuron."""
    table = planted["table"]
    assert table.loc[7, "eta2_first_letter"] == pytest.approx(1.0, abs=1e-9)
    assert table.loc[7, "alphabet_vr"] < 0.37
    assert table.loc[7, "family"] != "alphabet"
    assert "first_letter=none" not in table.loc[7, "top_features"]


def test_no_universal_neurons_gives_empty_table_and_zero_metrics(token_set):
    from universal_neurons.description.families import add_vocab_families, family_metrics

    features = token_set["features"]
    sums = _stream(token_set, lambda batch, start: np.zeros(batch.shape + (0,)), 0)
    config = FamiliesConfig()
    table = classify_neurons(sums, features, [], config)
    assert len(table) == 0 and {"family", "best_vr", "eta2_token"} <= set(table.columns)
    stats = pd.DataFrame(
        {
            "layer": [0, 1],
            "index": [0, 0],
            "is_universal": [False, False],
            "vocab_var": [0.1, 0.0],
            "vocab_skew": [1.0, 0.0],
            "vocab_kurt": [20.0, 3.0],
        }
    )
    table = add_vocab_families(table, stats, config)
    metrics = family_metrics(table, stats, 2, config)
    assert metrics["n_universal"] == 0 and metrics["percent_explained"] == 0.0
    assert metrics["counts"]["prediction"] == 0 and metrics["counts_per_layer"]["unigram"] == [0, 0]
