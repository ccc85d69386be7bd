"""The report's sections on what universal neurons do and how sure the numbers are
(outputs/report_sections.py), and the matching parts of a neuron page: planted documents made
with the stages' own library functions, numbers checked against numpy."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from universal_neurons.config import EffectsConfig
from universal_neurons.description.effects import effects_summary
from universal_neurons.matching.uncertainty import model_uncertainty, uncertainty_results
from universal_neurons.outputs import report_sections
from universal_neurons.outputs.neuron_page import effects_html, stability_html
from universal_neurons.outputs.report_html import number, percent


def _effects_table(seed: int) -> pd.DataFrame:
    """Two universal neurons with 2 controls each and a partner, layer 0 and 1."""
    rng = np.random.default_rng(seed)
    kinds = ["universal", "control", "control", "partner"] * 2
    n = len(kinds)
    return pd.DataFrame(
        {
            "kind": kinds,
            "layer": [0] * 4 + [1] * 4,
            "index": np.arange(n),
            "delta_loss": rng.uniform(0, 0.01, n),
            "kl": rng.uniform(0, 0.01, n),
            "delta_entropy": rng.normal(0, 0.01, n),
            "exceeds_controls": [True, None, None, None, False, None, None, None],
            "role": ["entropy", "none", "none", "none", "none", "none", "none", "none"],
            "partner_effect_corr": [0.8, None, None, None, 0.4, None, None, None],
            "partner_same_role": [1.0, None, None, None, 0.0, None, None, None],
            "role_agrees": [True, None, None, None, None, None, None, None],
        }
    )


def test_what_they_do_quotes_the_group_medians(tmp_path):
    tables = {"seed1": _effects_table(1), "seed2": _effects_table(2)}
    paths = {}
    for name, table in tables.items():
        paths[name] = tmp_path / f"{name}.parquet"
        table.to_parquet(paths[name])
    results = effects_summary(tables, EffectsConfig())
    title, body = report_sections.render(
        report_sections.effects_section(results, paths, tmp_path),
        lambda name, caption: f"<img src='{name}'>",
    )
    both = pd.concat(tables.values())
    universal = both[both["kind"] == "universal"]
    control = both[both["kind"] == "control"]
    assert title == "What they do" and (tmp_path / "effects.png").is_file()
    assert f"universal {number(np.median(universal['delta_loss']))}" in body
    assert f"control {number(np.median(control['delta_loss']))} nats/token" in body
    assert f"controls: {percent(50.0)} of the universal" in body  # 2 of 4 above every control
    assert f"{number(np.mean([0.8, 0.4]))}." in body and "entropy 2" in body
    assert body.count("<tr>") == 1 + 2 * 2  # header + a row per model and layer
    missing = report_sections.effects_section(None, paths, tmp_path)
    assert missing == report_sections.NOTHING
    empty = {name: table[table["kind"] == "none"] for name, table in tables.items()}
    title, body, figures = report_sections.effects_section(
        effects_summary(empty, EffectsConfig()), paths, tmp_path / "none"
    )
    assert (title, figures) == ("What they do", {}) and "No neuron is universal" in body


def test_how_sure_gives_the_percentile_interval_of_every_model(tmp_path):
    # 4 live neurons of one layer; neuron k is universal in resamples r >= k (of 8)
    resamples = 8
    excess = np.array([[0.9 if r >= k else 0.1 for k in range(4)] for r in range(resamples)])
    table = pd.DataFrame(
        {"layer": 0, "index": range(4), "dead": False, "is_universal": [1, 1, 0, 0]}
    ).astype({"is_universal": bool})
    model = model_uncertainty(excess, excess[-1], table, threshold=0.5, confidence=0.9)
    settings = {"resamples": resamples, "blocks": 4, "confidence": 0.9}
    results = uncertainty_results({"seed1": model}, [10, 10, 10, 10], settings, 0.9)
    per_resample = 100 * (excess > 0.5).sum(axis=1) / 4
    lo, hi = np.quantile(per_resample, [0.05, 0.95])
    np.testing.assert_allclose(
        [
            results["models"]["seed1"]["percent_universal_lo"],
            results["models"]["seed1"]["percent_universal_hi"],
        ],
        [lo, hi],
    )
    title, body = report_sections.render(
        report_sections.uncertainty_section(results, tmp_path), lambda n, c: ""
    )
    assert title == "How sure" and (tmp_path / "uncertainty.png").is_file()
    assert f"{percent(lo)} – {percent(hi)}" in body and "90% interval" in body
    # stability: neuron k universal in 8 - k of 8 resamples
    np.testing.assert_allclose(model.table["stability"], [1.0, 7 / 8, 6 / 8, 5 / 8])
    row = model.table.iloc[1].to_dict()
    assert "Universal in <b>88%</b>" in stability_html(row) and stability_html(None) == ""


def test_one_to_one_and_pooled_sections_are_left_out_without_their_documents():
    assert report_sections.one_to_one_section({"available": False}) == report_sections.NOTHING
    assert report_sections.one_to_one_section(None) == report_sections.NOTHING
    assert report_sections.pooled_section(None, None, 0.05) == report_sections.NOTHING
    assert report_sections.pooled_section({"models": {}}, None, 0.05) == report_sections.NOTHING


def test_a_neuron_page_names_the_tokens_its_ablation_moves():
    row = {
        "kind": "universal",
        "delta_loss": 0.0123,
        "kl": 0.02,
        "delta_entropy": -0.001,
        "role": "entropy",
        "null_fraction": 0.9,
        "attention_score": 0.1,
        "attention_layer": 1,
        "attention_head": 2,
        "exceeds_controls": True,
        "partner_effect_corr": 0.75,
        "partner_same_role": 1.0,
        "top_tokens": json.dumps([[2, -0.5], [0, 0.25]]),
        "downstream_neurons": json.dumps({"1": [[7, 0.125]]}),
        "downstream_heads": json.dumps({}),
    }
    page = effects_html(row, ["zero", "one", "two<"])
    assert "Δloss +0.01230 nats/token" in page and "role: entropy" in page
    assert "<code>two&lt;</code> -0.5000, <code>zero</code> +0.2500" in page
    assert "downstream neurons L1: 7:+0.1250" in page and effects_html(None, []) == ""
