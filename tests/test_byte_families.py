"""Families that see bytes (issue 24, part 4): a byte-level BPE whose tokens are single bytes
(no merges), so every non-ASCII character is split into a lead byte and continuation bytes.

Planted neurons fire on UTF-8 lead bytes of two-byte characters (several different lead
bytes, so that no single token explains them); their variance reduction is checked against
a direct computation on the byte values of the text, and the family rules must give them
the ``byte`` family. Token labels and contexts show the bytes readably.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from universal_neurons.config import FamiliesConfig
from universal_neurons.description.families import (
    GroupThresholds,
    assign_family,
    classify_neurons,
)
from universal_neurons.description.features import build_features, token_pieces
from universal_neurons.description.token_bytes import (
    byte_class,
    byte_decoder,
    context_token_text,
    readable_bytes,
    token_bytes,
)
from universal_neurons.description.variance import FeatureSums
from universal_neurons.outputs.token_display import display_pieces, window_texts

TEXT = (
    "Die Öl-Krise traf Ärzte und Bäcker. Σοφία reiste nach Москва, dann nach Łódź. "
    "Café, naïve, Straße, über, Größe; τα λόγια του, Привет мир, Kraków i Gdańsk. "
)
CONTEXT = 32


def byte_tokenizer() -> Tokenizer:
    """A byte-level BPE with the 256 bytes and no merge: one token per byte, id = byte."""
    decoder = {char: byte for char, byte in byte_decoder().items()}
    vocab = {char: byte for char, byte in decoder.items()}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


@pytest.fixture(scope="module")
def byte_set():
    tokenizer = byte_tokenizer()
    ids = tokenizer.encode(TEXT * 12).ids
    data = (TEXT * 12).encode("utf-8")
    assert ids == list(data)  # one token per byte: the token id is the byte
    n = len(ids) // CONTEXT
    tokens = np.array(ids[: n * CONTEXT], dtype=np.int64).reshape(n, CONTEXT)
    pieces = token_pieces(tokenizer)
    features = build_features(
        tokens,
        pieces,
        np.zeros(n, np.int64),
        ["text"],
        np.ones(tokens.shape, bool),
        piece_bytes=token_bytes(tokenizer, pieces),
    )
    return {"tokenizer": tokenizer, "tokens": tokens, "features": features, "pieces": pieces}


def _vr(activations: np.ndarray, feature: np.ndarray) -> float:
    """SPEC: (Var(a) - [p Var(a|F) + (1-p) Var(a|not F)]) / Var(a), directly."""
    p = feature.mean()
    within = p * activations[feature].var() + (1 - p) * activations[~feature].var()
    return float((activations.var() - within) / activations.var())


@pytest.fixture(scope="module")
def planted(byte_set):
    tokens = byte_set["tokens"]
    lead2 = (tokens >= 0xC2) & (tokens <= 0xDF)  # from the byte values, not from byte_class
    cont = (tokens >= 0x80) & (tokens <= 0xBF)
    rng = np.random.default_rng(0)
    acts = np.stack(
        [
            2.0 * lead2 + rng.normal(0, 0.3, tokens.shape),  # fires on lead bytes
            2.0 * cont + rng.normal(0, 0.3, tokens.shape),  # fires on continuation bytes
            0.4 * lead2 + rng.normal(0, 1.0, tokens.shape),  # too weak to be a family
        ],
        axis=-1,
    )
    features = byte_set["features"]
    sums = FeatureSums(features.variables, 3)
    kept = torch.ones(tokens.shape, dtype=torch.bool)
    sums.update(torch.as_tensor(acts.reshape(-1, 3)), features.batch_codes(0, len(tokens), kept))
    table = classify_neurons(sums, features, [(0, 0), (0, 1), (0, 2)], FamiliesConfig())
    return {"table": table, "acts": acts, "lead2": lead2, "cont": cont}


def test_several_lead_bytes_occur(byte_set, planted):
    assert len(np.unique(byte_set["tokens"][planted["lead2"]])) >= 5


def test_a_neuron_firing_on_lead_bytes_gets_the_byte_family(planted):
    row = planted["table"].iloc[0]
    expected = _vr(planted["acts"][..., 0].ravel(), planted["lead2"].ravel())
    assert expected > 0.8
    assert row["family"] == "byte"
    assert row["best_feature"] == "byte_class=utf8-lead-2"
    assert row["byte_vr"] == pytest.approx(expected, abs=1e-9)
    # no single lead byte (token) explains as much: the class does
    assert row["unigram_vr"] < expected - 0.2


def test_continuation_bytes_are_byte_not_previous_token(planted):
    """Continuation bytes follow lead bytes: prev_byte_class explains as much as byte_class,
    and previous_token must beat the current-token score, so the family is byte."""
    row = planted["table"].iloc[1]
    expected = _vr(planted["acts"][..., 1].ravel(), planted["cont"].ravel())
    assert row["family"] == "byte"
    assert row["byte_feature"] == "byte_class=continuation"
    assert row["byte_vr"] == pytest.approx(expected, abs=1e-9)
    assert row["previous_token_vr"] > 0.5


def test_a_weak_lead_byte_neuron_stays_unexplained(planted):
    row = planted["table"].iloc[2]
    assert row["byte_feature"] == "byte_class=utf8-lead-2"
    assert row["byte_vr"] < 0.5 and row["family"] == "unexplained"


def test_previous_token_must_beat_the_byte_score():
    thresholds = GroupThresholds.from_config(FamiliesConfig())
    assert thresholds.byte == FamiliesConfig().unigram_vr
    assert assign_family({"previous_token": 0.7, "byte": 0.75}, thresholds) == "byte"
    assert assign_family({"previous_token": 0.8, "byte": 0.75}, thresholds) == "previous_token"
    assert assign_family({"byte": 0.45}, thresholds) == "unexplained"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"the", "ascii"),
        ("é".encode(), "multi-byte-char"),
        (b"\xc3", "utf8-lead-2"),
        (b" \xc3", "utf8-lead-2"),
        (b"\xe2\x80", "utf8-lead-3"),
        (b"\xf0\x9f\x98", "utf8-lead-4"),
        (b"\x96", "continuation"),
        (b"\x80\x94 and", "continuation"),
        (b"\xff", "invalid"),
        (None, "special"),
    ],
)
def test_byte_class(data, expected):
    assert byte_class(data) == expected


def test_labels_show_bytes_not_replacement_characters(byte_set):
    token = byte_set["features"].variable("token")
    assert token.feature_name(0xC3) == "token='⟨0xC3: lead byte of À–ÿ⟩'"
    assert token.feature_name(0x96) == "token='⟨0x96: continuation byte⟩'"
    unigram = byte_set["features"].variable("unigram")
    assert "⟨0xC3: lead byte of À–ÿ⟩" in unigram.labels and "\ufffd" not in unigram.labels
    assert readable_bytes(b"\xe2\x80") == "⟨0xE2 0x80: lead bytes of U+2000–‿⟩"
    shown = display_pieces(byte_set["tokenizer"])
    assert shown[0xC3] == "⟨0xC3: lead byte of À–ÿ⟩" and shown[ord("a")] == "a"


def test_contexts_show_the_character_a_lead_byte_opens(byte_set):
    ids = list("Öl".encode())  # 0xC3 0x96 0x6C
    texts = window_texts(ids, display_pieces(byte_set["tokenizer"]))
    assert texts[0] == ("Ö", "'Ö' (lead byte 0xC3)")
    assert texts[1] == ("", "'Ö' (continuation byte 0x96)")
    assert texts[2] == ("l", "l")
    # a character crossing the window's right edge: the tokens after it finish it
    assert window_texts(ids[:1], display_pieces(byte_set["tokenizer"]), ids[1:])[0][0] == "Ö"
    split = [b"Gr", b" \xe2", b"\x80", b"\x94x"]  # ' —' split over three tokens
    assert context_token_text(split, 1) == (" —", "' —' (lead byte 0xE2)")
    assert context_token_text(split, 3) == ("x", "'—' (continuation byte 0x94) then 'x'")
