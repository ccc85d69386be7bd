"""A page per universal neuron (issue 16): built by the report stage for the tiny trained group,
checked against independent computations (a direct forward pass, the max_corr and baseline
tables, numpy on the processed weights), and opened in a real headless Chromium.

The group is the real tiny one (``tiny_group``) run through the real stages (collect, correlate,
baseline, universality, emergence, stats, syntax, classify, report) with the universality threshold at
0.05, so that each model has a few universal neurons at this tiny training budget.
"""

from __future__ import annotations

import math
import os
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_params

from universal_neurons.description import neuron_profile
from universal_neurons.description.histogram import DISPLAY_BINS, StreamingHistogram
from universal_neurons.description.variance import TopActivations
from universal_neurons.matching.activations import count_kept, kept_mask, load_analysis_set
from universal_neurons.models.loading import capture_mlp, load_model, processed_weights
from universal_neurons.outputs import token_display
from universal_neurons.pipeline.layout import Layout
from universal_neurons.text.tokens import load_tokenizer

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
THRESHOLD = 0.05
VOID = {"meta", "img", "br", "hr", "link", "input"}


# ----------------------------------------------------------------------------- a tiny DOM


class _TreeBuilder(HTMLParser):
    """HTML -> ElementTree (the pages are simple: every non-void element is closed)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = ET.Element("document")
        self.stack = [self.root]

    def handle_starttag(self, tag, attrs):
        element = ET.SubElement(self.stack[-1], tag, {k: v or "" for k, v in attrs})
        if tag not in VOID:
            self.stack.append(element)

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        assert self.stack[-1].tag == tag, f"</{tag}> closes <{self.stack[-1].tag}>"
        self.stack.pop()

    def handle_data(self, data):
        parent = self.stack[-1]
        if len(parent):
            parent[-1].tail = (parent[-1].tail or "") + data
        else:
            parent.text = (parent.text or "") + data


def parse_html(path: Path) -> ET.Element:
    builder = _TreeBuilder()
    builder.feed(Path(path).read_text(encoding="utf-8"))
    builder.close()
    assert builder.stack == [builder.root], "unclosed elements"
    return builder.root


def text(element: ET.Element) -> str:
    return "".join(element.itertext())


def classes(element: ET.Element) -> set[str]:
    return set(element.get("class", "").split())


def table_rows(table: ET.Element) -> list[list[ET.Element]]:
    return [list(row) for row in table.find("tbody")]


def section(page: ET.Element, name: str) -> ET.Element:
    found = page.find(f".//section[@id='{name}']")
    assert found is not None, f"no section {name}"
    return found


# ----------------------------------------------------------------------------- the pipeline


@pytest.fixture(scope="module")
def state(tiny_group, tiny_tokens_dir, tmp_path_factory):
    """A workspace with every analysis output of the tiny group and the report with its pages."""
    from stages import (
        baseline,
        classify,
        classify_candidates,
        collect,
        correlate,
        emergence,
        emergence_points,
        report,
        stats,
        syntax,
        universality,
        weight_stats,
    )

    params = tiny_params(
        universality={"threshold": THRESHOLD, "candidate_threshold": THRESHOLD},
        emergence={"max_sequences": 0},
    )
    work = tmp_path_factory.mktemp("pages")
    layout = Layout.at(work, tokens=tiny_tokens_dir, models=tiny_group[1].parent)
    data = layout.data
    for seed in params.train.seeds:
        collect.run(params, layout, seed, progress=False)
    correlate.run(params, layout, progress=False)
    baseline.run(params, layout)
    universality.run(params, layout)
    emergence_points.run(params, layout, progress=False)
    emergence.run(params, layout)  # first_universal_tokens of the stats table
    weight_stats.run(params, layout)
    stats.run(params, layout)
    syntax.run(params, layout)
    classify_candidates.run(params, layout)
    classify.run(params, layout)
    result = report.run(params, layout)
    names = [f"seed{s}" for s in params.train.seeds]
    return {
        "params": params,
        "work": work,
        "result": result,
        "names": names,
        "stats": {n: pd.read_parquet(data / "stats" / f"{n}.parquet") for n in names},
        "families": {n: pd.read_parquet(data / "families" / f"{n}.parquet") for n in names},
        "max_corr": pd.read_parquet(data / "correlate" / "max_corr.parquet"),
        "baseline": pd.read_parquet(data / "baseline" / "baseline.parquet"),
        "pages": work / "report" / "neurons",
        "models": tiny_group[1].parent,
        "tokens": tiny_tokens_dir,
    }


def universal_set(table: pd.DataFrame) -> set[tuple[int, int]]:
    rows = table[table["is_universal"]]
    return set(zip(rows["layer"].tolist(), rows["index"].tolist(), strict=True))


def every_page(state):
    for name in state["names"]:
        for layer, index in sorted(universal_set(state["stats"][name])):
            yield name, layer, index, state["pages"] / name / f"{layer}.{index}.html"


# ----------------------------------------------------------------------------- the pages


def test_a_page_per_universal_neuron_and_the_report_links_them(state):
    expected = {(n, layer, i) for n, layer, i, _ in every_page(state)}
    assert {n for n, _, _ in expected} == set(state["names"]), "every model has universal neurons"
    written = {
        (p.parent.name, *map(int, p.stem.split(".")))
        for p in state["pages"].glob("*/*.html")
        if p.name != "index.html"
    }
    assert written == expected
    assert state["result"]["neuron_pages"] == len(expected)
    for name, layer, index, path in every_page(state):
        assert path.with_suffix(".png").read_bytes()[:8] == PNG_MAGIC
        assert parse_html(path).find(".//h1").text == f"{name} L{layer}.N{index}"
    # the report's table: one row per universal neuron (at most 25 per model), each a link
    report = parse_html(state["work"] / "report" / "index.html")
    table = report.find(".//table[@class='universal']")
    rows = table_rows(table)
    assert len(rows) == len(expected)  # fewer than 25 per model here
    for row in rows:
        model, link = text(row[0]), row[1].find("a")
        layer, index = map(int, re.fullmatch(r"L(\d+)\.N(\d+)", link.text).groups())
        assert (state["work"] / "report" / link.get("href")).is_file()
        assert link.get("href") == f"neurons/{model}/{layer}.{index}.html"
        stats = state["stats"][model].set_index(["layer", "index"]).loc[(layer, index)]
        family = state["families"][model].set_index(["layer", "index"]).loc[(layer, index)]
        assert float(text(row[2])) == pytest.approx(stats["excess_corr"], rel=5e-3)
        assert text(row[3]) == family["family"]
        assert text(row[4]).startswith(family["best_feature"])
    by_model = [text(r[0]) for r in rows]
    for name in state["names"]:  # most universal first within each model
        excess = [float(text(r[2])) for r, m in zip(rows, by_model, strict=True) if m == name]
        assert excess == sorted(excess, reverse=True)
    # the list of them all links every page
    full = parse_html(state["pages"] / "index.html")
    hrefs = {a.get("href") for a in full.iter("a")} - {"../index.html"}
    assert hrefs == {f"{n}/{layer}.{i}.html" for n, layer, i in expected}


def test_pages_capped_per_model_every_universal_neuron_still_listed(state, tmp_path, monkeypatch):
    """At the paper's sizes only the PAGES_PER_MODEL most universal neurons of each model get a
    page (issue 22: ~27 min and ~200 MB for 12k pages); the list still holds every universal
    neuron with its numbers, links exactly the written pages, and says so; a partner link goes
    only to a page that exists, the partner still marked universal."""
    from universal_neurons.description import page_store
    from universal_neurons.outputs import neuron_page

    monkeypatch.setattr(page_store, "PAGES_PER_MODEL", 2)
    out = tmp_path / "neurons"
    rows = neuron_page.write_group_pages(
        out,
        {name: state["models"] / name for name in state["names"]},
        state["tokens"],
        state["params"].analysis,
        state["stats"],
        state["families"],
        state["max_corr"],
        state["baseline"],
        THRESHOLD,
    )
    expected = set()
    for name in state["names"]:
        table = state["stats"][name]
        top = table[table["is_universal"]].sort_values(
            "excess_corr", ascending=False, kind="stable"
        )
        expected |= {(name, int(r.layer), int(r.index)) for r in top.head(2).itertuples()}
    written = {
        (p.parent.name, *map(int, p.stem.split(".")))
        for p in out.glob("*/*.html")
        if p.name != "index.html"
    }
    assert written == expected and len(rows) > len(expected)
    full = parse_html(out / "index.html")
    hrefs = {a.get("href") for a in full.iter("a")} - {"../index.html"}
    assert hrefs == {f"{n}/{layer}.{i}.html" for n, layer, i in expected}
    assert len(table_rows(full.find(".//table[@class='universal']"))) == len(rows)
    assert f"Pages for the {len(expected)} most universal" in text(full)
    for path in out.glob("*/*.*.html"):
        for link in section(parse_html(path), "partners").iter("a"):
            assert (path.parent / link.get("href")).is_file()


def direct_post_activations(model_dir: Path, tokens: np.ndarray, batch: int) -> np.ndarray:
    """Every neuron's post activation at every position, ``[layers, sequences, context,
    d_mlp]`` float64, by forward passes of ``batch`` sequences at a time."""
    model = load_model(str(model_dir))
    parts = []
    for start in range(0, len(tokens), batch):
        chunk = torch.as_tensor(np.asarray(tokens[start : start + batch], np.int64))
        parts.append(capture_mlp(model, chunk)["post"].double().numpy())
    return np.concatenate(parts, axis=1)


def test_contexts_equal_a_direct_forward_pass(state, tiny_group, tiny_tokens_dir):
    params = state["params"]
    tokens, excluded, kept_count = load_analysis_set(tiny_tokens_dir, params.analysis)
    kept = kept_mask(tokens, excluded).numpy()
    pieces = token_display.display_pieces(load_tokenizer(tiny_tokens_dir))
    # 7 sequences at a time: another batch shape than the pages' pass
    direct = {
        name: direct_post_activations(tiny_group[int(name.removeprefix("seed"))], tokens, 7)
        for name in state["names"]
    }
    checked = 0
    for name, layer, index, path in every_page(state):
        acts = direct[name][layer, :, :, index]  # [sequences, context]
        page = parse_html(path)
        contexts = section(page, "contexts").findall(".//div[@class='context']")
        assert len(contexts) == neuron_profile.TOP_CONTEXTS
        per_sequence = np.where(kept, acts, -np.inf).max(axis=1)
        expected_top = np.sort(per_sequence)[::-1][: len(contexts)]
        values = [float(c.get("data-value")) for c in contexts]
        np.testing.assert_allclose(values, expected_top, atol=1e-5)
        sequences = [int(c.get("data-sequence")) for c in contexts]
        assert len(set(sequences)) == len(sequences), "one context per sequence"
        for context in contexts:
            seq, pos = int(context.get("data-sequence")), int(context.get("data-position"))
            value = float(context.get("data-value"))
            assert kept[seq, pos]
            assert value == pytest.approx(acts[seq, pos], abs=1e-5)
            assert value == pytest.approx(per_sequence[seq], abs=1e-5)
            spans = context.findall(".//span[@class]")
            spans = [s for s in spans if "tok" in classes(s)]
            start, stop = neuron_profile.context_window(tokens.shape[1], pos, 20, 4)
            assert len(spans) == stop - start
            shown = [float(s.get("data-act")) for s in spans]
            np.testing.assert_allclose(shown, acts[seq, start:stop], atol=1e-5)
            window, after = tokens[seq, start:stop], tokens[seq, stop : stop + 3]
            texts = token_display.window_texts([int(t) for t in window], pieces, list(after))
            for offset, span in enumerate(spans):
                token = int(tokens[seq, start + offset])
                short, long = texts[offset]  # split characters joined: 'Ö' (lead byte 0xC3)
                assert text(span) == (short or "\u25cc")
                title = re.fullmatch(
                    r"(.*): (-?\d+\.\d{4})( \(excluded position\))?", span.get("title")
                )
                plain = token_display.visible_token(pieces[token])
                assert title.group(1) == (plain if short == long else long)
                assert float(title.group(2)) == pytest.approx(acts[seq, start + offset], abs=6e-5)
                assert (title.group(3) is None) == bool(kept[seq, start + offset])
                assert ("max" in classes(span)) == (start + offset == pos)
                assert ("excluded" in classes(span)) == (not kept[seq, start + offset])
        caption = text(section(page, "histogram").find("p"))
        assert caption.startswith(f"{kept_count:,} kept positions")
        checked += 1
    assert checked == state["result"]["neuron_pages"]


def test_histogram_equals_numpy_on_the_direct_activations(state, tiny_group, tiny_tokens_dir):
    params = state["params"]
    tokens, excluded, kept_count = load_analysis_set(tiny_tokens_dir, params.analysis)
    tokens = np.asarray(tokens)
    kept = kept_mask(tokens, excluded).numpy()
    name = state["names"][0]
    neurons = neuron_profile.universal_neurons(state["stats"][name])
    model = load_model(str(tiny_group[1]))
    batch = params.analysis.batch_size  # same batches as the pass: bit-identical activations
    found = neuron_profile.activation_pass(model, tokens, neurons, excluded, batch)
    direct = direct_post_activations(tiny_group[1], tokens, batch)
    for n, (layer, index) in enumerate(neurons):
        acts = direct[layer, :, :, index][kept]
        edges, counts = found.histogram.display(n)
        assert len(counts) <= DISPLAY_BINS
        assert edges[0] <= acts.min() and acts.max() < edges[-1]
        np.testing.assert_array_equal(counts, np.histogram(acts, edges)[0])
        assert counts.sum() == kept_count == count_kept(tokens, excluded)


def test_partner_table_equals_max_corr_and_baseline(state):
    max_corr = state["max_corr"].set_index(["model", "partner", "layer", "index"])
    # the baseline averaged over its samples, computed here with numpy
    base = state["baseline"]
    linked = 0
    for name, layer, index, path in every_page(state):
        rows = table_rows(section(parse_html(path), "partners").find("table"))
        partners = [p for p in state["names"] if p != name]
        assert [text(r[0]) for r in rows] == partners
        for row in rows:
            partner = text(row[0])
            truth = max_corr.loc[(name, partner, layer, index)]
            samples = base[
                (base["model"] == name)
                & (base["partner"] == partner)
                & (base["layer"] == layer)
                & (base["index"] == index)
            ]["baseline"].to_numpy()
            assert len(samples) == state["params"].baseline.samples
            shown_corr = float(row[2].find("span").get("data-value"))
            shown_base = float(row[3].find("span").get("data-value"))
            assert shown_corr == truth["max_corr"]
            assert shown_base == pytest.approx(np.sum(samples) / len(samples), abs=1e-12)
            assert text(row[2]) == f"{truth['max_corr']:.4g}"
            target = (int(truth["argmax_layer"]), int(truth["argmax_index"]))
            assert text(row[1]).startswith(f"L{target[0]}.N{target[1]}")
            link = row[1].find("a")
            if target in universal_set(state["stats"][partner]):
                assert link.get("href") == f"../{partner}/{target[0]}.{target[1]}.html"
                assert (path.parent / link.get("href")).is_file()
                linked += 1
            else:
                assert link is None
    assert linked > 0, "some universal neuron's best match is universal too"


def test_family_and_statistics_sections(state):
    for name, layer, index, path in every_page(state):
        page = parse_html(path)
        family = state["families"][name].set_index(["layer", "index"]).loc[(layer, index)]
        part = section(page, "family")
        assert part.find(".//b[@class='family']").text == family["family"]
        features = table_rows(part.find("table"))
        assert [text(r[0]) for r in features] == list(family["top_features"])
        np.testing.assert_allclose(
            [float(text(r[1])) for r in features], family["top_vrs"], atol=5e-4
        )
        assert f"VR {family['best_vr']:.3g}" in text(part)
        stats = state["stats"][name].set_index(["layer", "index"]).loc[(layer, index)]
        shown = {text(r[0]): text(r[1]) for r in table_rows(section(page, "stats").find("table"))}
        for column in ("excess_corr", "input_bias", "kurt", "sparsity", "w_out_norm"):
            assert float(shown[column].replace(",", "")) == pytest.approx(
                stats[column], rel=5e-4, abs=1e-12
            )
        first = stats["first_universal_tokens"]  # from the emergence stage
        if pd.isna(first):
            assert shown["first_universal_tokens"] == "–"
        else:
            assert float(shown["first_universal_tokens"].replace(",", "")) == first


def test_vocab_tokens_equal_numpy_on_processed_weights(state, tiny_group, tiny_tokens_dir):
    pieces = token_display.display_pieces(load_tokenizer(tiny_tokens_dir))
    weights = {
        name: processed_weights(load_model(str(tiny_group[int(name.removeprefix("seed"))])))
        for name in state["names"]
    }
    for name, layer, index, path in every_page(state):
        w_out = weights[name]["W_out"][layer, index].double().numpy()
        logits = w_out @ weights[name]["W_U"].double().numpy()  # [vocab]
        vocab = range(len(logits))
        expected = {  # highest first / lowest first, ties: lower id first
            "top": sorted(vocab, key=lambda v: (-logits[v], v)),
            "bottom": sorted(vocab, key=lambda v: (logits[v], v)),
        }
        part = section(parse_html(path), "vocab")
        for css, ids in expected.items():
            rows = table_rows(part.find(f".//table[@class='vocab {css}']"))
            assert len(rows) == neuron_profile.VOCAB_TOKENS
            shown = [int(text(r[1])) for r in rows]
            assert shown == ids[: len(rows)]
            for row, token in zip(rows, shown, strict=True):
                assert float(text(row[2])) == pytest.approx(logits[token], abs=5e-5)
                assert text(row[0]) == token_display.visible_token(pieces[token])
                assert " " not in text(row[0])  # spaces are shown as ␣


# ----------------------------------------------------------------------------- the parts


def test_streaming_histogram_is_exact_while_it_widens():
    rng = np.random.default_rng(0)
    batches = [
        rng.normal(0, 0.01, (50, 3)),  # narrow start: fine bins
        rng.normal(0, 1, (400, 3)),
        np.array([[40.0, -0.5, 0.0]]),  # an outlier far above: the width doubles many times
        np.array([[-3.0, -1e3, 0.0]]),  # far below
        np.zeros((0, 3)),
        rng.normal(5, 2, (300, 3)),
    ]
    histogram = StreamingHistogram.empty(3, bins=64)
    for batch in batches:
        histogram.update(batch)
    values = np.concatenate(batches)
    for n in range(3):
        for max_bins in (7, 20, 33, 64):  # groups of stored bins, aligned: never more bins
            edges, counts = histogram.display(n, max_bins=max_bins)
            assert len(counts) <= max_bins and counts.sum() == len(values)
            assert edges[0] <= values[:, n].min() and values[:, n].max() < edges[-1]
            np.testing.assert_array_equal(counts, np.histogram(values[:, n], edges)[0])
        assert math.log2(histogram.width[n]).is_integer()
    constant = StreamingHistogram.empty(1, bins=8)
    constant.update(np.full((5, 1), 0.25))
    edges, counts = constant.display(0)
    assert counts.tolist() == [5] and edges[0] <= 0.25 < edges[1]


def test_top_activations_one_per_sequence_with_rows():
    rng = np.random.default_rng(1)
    acts = torch.as_tensor(rng.normal(size=(11, 6, 4)))  # [sequences, pos, neurons]
    kept = torch.as_tensor(rng.random((11, 6)) > 0.3)
    top = TopActivations.empty(4, 3, context=6, per_sequence=True)
    for start in range(0, 11, 4):
        top.update(acts[start : start + 4], kept[start : start + 4], start)
    masked = np.where(kept.numpy()[..., None], acts.numpy(), -np.inf)
    for n in range(4):
        best = masked[:, :, n].max(axis=1)
        order = np.argsort(-best, kind="stable")[:3]
        assert top.sequence[n].tolist() == order.tolist()
        assert top.values[n].tolist() == best[order].tolist()
        assert top.position[n].tolist() == masked[order, :, n].argmax(axis=1).tolist()
        np.testing.assert_allclose(top.rows[n].numpy(), acts.numpy()[order, :, n], rtol=1e-6)


def test_display_pieces_show_bytes_of_split_characters(tiny_tokens_dir):
    tokenizer = load_tokenizer(tiny_tokens_dir)
    pieces = token_display.display_pieces(tokenizer)
    assert pieces[tokenizer.token_to_id("<|endoftext|>")] == ""
    assert token_display.render_piece("") == "<|endoftext|>"
    assert token_display.visible_token(" the\n") == "\u2423the\u23ce"
    assert not any("\ufffd" in p for p in pieces)
    invisible = [p for p in pieces if any(c not in "\n\t" and not c.isprintable() for c in p)]
    assert invisible == []  # control characters are escaped: \x14
    assert pieces[tokenizer.token_to_id("\u0114")] == "\\x14"  # byte-level stand-in of 0x14
    text_in = "caf\u00e9 \u2014 na\u00efve"  # characters of two and three bytes
    ids = tokenizer.encode(text_in).ids
    split = [pieces[i] for i in ids if "byte" in pieces[i]]
    assert split, "the tiny tokenizer splits some character"
    assert all(re.search(r"⟨(0x[0-9A-F]{2} ?)+: (lead|continuation) bytes?", p) for p in split)
    assert b"".join(pieces.data[i] for i in ids).decode("utf-8") == text_in
    # in a context the split characters are whole again
    shown = "".join(short for short, _ in token_display.window_texts(ids, pieces))
    assert shown == text_in


# ----------------------------------------------------------------------------- in a browser


@pytest.mark.slow
@pytest.mark.browser
def test_a_page_in_headless_chromium(state, tmp_path):
    """Open a neuron page in a real browser; the DOM holds every part; a screenshot for a person."""
    from headless_chromium import Chromium

    # a neuron whose best match in some partner is universal too (its page links there)
    path = next(p for *_, p in every_page(state) if "(universal)" in p.read_text())
    name, (layer, index) = path.parent.name, map(int, path.stem.split("."))
    family = state["families"][name].set_index(["layer", "index"]).loc[(layer, index)]
    with Chromium(width=1200, height=1800) as browser:
        browser.goto(path.as_uri())
        browser.wait_for("document.querySelector('#histogram img').complete")
        dom = browser.evaluate(
            """(() => {
              const q = (s) => Array.from(document.querySelectorAll(s));
              const img = document.querySelector('#histogram img');
              return {
                contexts: q('#contexts .context').map(c => ({
                  tokens: c.querySelectorAll('.tok').length,
                  withValue: Array.from(c.querySelectorAll('.tok')).filter(
                    t => /: -?\\d+\\.\\d{4}/.test(t.title) && t.dataset.act !== undefined).length,
                  max: c.querySelectorAll('.tok.max').length,
                  colouredMax: getComputedStyle(c.querySelector('.tok.max')).backgroundColor,
                })),
                imgWidth: img.naturalWidth, imgHeight: img.naturalHeight,
                partners: q('#partners tbody tr').map(r => r.cells[0].innerText),
                partnerLinks: q('#partners a').map(a => a.href),
                family: document.querySelector('#family .family').innerText,
                top: q('#vocab table.top tbody tr').map(r => r.cells[0].innerText),
                bottom: q('#vocab table.bottom tbody tr').map(r => r.cells[0].innerText),
                stats: q('#stats tbody tr').length,
                text: document.body.innerText.length,
              };
            })()"""
        )
        shot = browser.screenshot(tmp_path / "neuron_page.png")
    assert len(dom["contexts"]) == neuron_profile.TOP_CONTEXTS
    for context in dom["contexts"]:
        assert context["tokens"] > 1 and context["withValue"] == context["tokens"]
        assert context["max"] == 1
        assert context["colouredMax"].startswith(("rgb(255, 120, 0", "rgba(255, 120, 0"))
    assert dom["contexts"][0]["colouredMax"] == "rgb(255, 120, 0)"  # the top one: full colour
    assert dom["imgWidth"] > 0 and dom["imgHeight"] > 0
    assert dom["partners"] == [p for p in state["names"] if p != name]
    assert dom["partnerLinks"] and all(h.startswith("file://") for h in dom["partnerLinks"])
    assert dom["family"] == family["family"]
    assert len(dom["top"]) == len(dom["bottom"]) == neuron_profile.VOCAB_TOKENS
    assert all(token.strip() for token in dom["top"] + dom["bottom"])
    assert dom["stats"] > 10 and dom["text"] > 1000
    assert shot.read_bytes()[:8] == PNG_MAGIC and shot.stat().st_size > 50_000
    if os.environ.get("NEURON_PAGE_SCREENSHOT"):  # keep a copy where a person can find it
        Path(os.environ["NEURON_PAGE_SCREENSHOT"]).write_bytes(shot.read_bytes())


def test_pages_from_the_stored_pass_equal_a_fresh_pass(state, tmp_path, monkeypatch):
    """The classify_candidates stage stores each candidate's top contexts, histogram (drawn)
    and vocabulary extremes: the report's pages made from them, without a pass over the token
    set, a model loaded or a histogram drawn, are byte for byte those of a pass made now."""
    from universal_neurons.description import neuron_profile
    from universal_neurons.description.page_store import histograms_dir, pages_file
    from universal_neurons.outputs import plots
    from universal_neurons.outputs.neuron_page import write_group_pages

    stored = {
        name: state["work"] / "data" / "classify_candidates" / pages_file(name)
        for name in state["names"]
    }
    assert all(path.is_file() for path in stored.values())
    tables = (state["stats"], state["families"], state["max_corr"], state["baseline"])
    models = {name: state["models"] / name for name in state["names"]}
    analysis = state["params"].analysis
    fresh = tmp_path / "fresh"
    write_group_pages(fresh, models, state["tokens"], analysis, *tables, THRESHOLD)

    def no_pass(*args, **kwargs):
        raise AssertionError("the pages made a pass over the token set")

    def no_model(*args, **kwargs):
        raise AssertionError("the pages loaded a model")

    def no_drawing(*args, **kwargs):
        raise AssertionError("the pages drew a histogram")

    monkeypatch.setattr(neuron_profile, "activation_pass", no_pass)
    monkeypatch.setattr(neuron_profile, "load_model", no_model)
    monkeypatch.setattr(plots, "neuron_histogram", no_drawing)
    reused = tmp_path / "stored"
    write_group_pages(reused, models, state["tokens"], analysis, *tables, THRESHOLD, None, stored)
    files = sorted(p.relative_to(fresh) for p in fresh.rglob("*") if p.is_file())
    assert len(files) > len(state["names"])  # pages and histograms of several neurons
    assert files == sorted(p.relative_to(reused) for p in reused.rglob("*") if p.is_file())
    for name in files:
        assert (fresh / name).read_bytes() == (reused / name).read_bytes(), name
    # every candidate's picture is stored, the paged neurons' among them
    for name in state["names"]:
        pictures = state["work"] / "data" / "classify_candidates" / histograms_dir(name)
        drawn = {p.name for p in (fresh / name).glob("*.png")}
        assert drawn and drawn <= {p.name for p in pictures.glob("*.png")}


def test_the_stored_pages_cover_the_paged_neurons_at_every_higher_threshold(monkeypatch):
    """classify_candidates stores pages for ``pageable_neurons`` of the candidates only (at most
    PAGES_PER_MODEL): at the candidate threshold and at every τ above it, every neuron the
    report pages (``paged_neurons`` of ``universal_rows``) is among them, ties included."""
    from universal_neurons.description import neuron_profile, page_store

    monkeypatch.setattr(page_store, "PAGES_PER_MODEL", 5)
    rng = np.random.default_rng(0)
    excess = rng.choice(np.round(np.linspace(0.0, 1.0, 21), 2), size=64)  # many ties
    table = pd.DataFrame(
        {"layer": np.repeat([0, 1], 32), "index": np.tile(np.arange(32), 2), "excess_corr": excess}
    )
    candidate = 0.3
    stored = page_store.pageable_neurons(table.assign(is_universal=excess > candidate))
    assert len(stored) == 5 and stored == sorted(stored)
    above = table[excess > candidate].sort_values("excess_corr", ascending=False, kind="stable")
    assert set(stored) == set(zip(above["layer"][:5], above["index"][:5], strict=True))
    for tau in np.unique(excess[excess >= candidate]):
        rows = neuron_profile.universal_rows({"m": table.assign(is_universal=excess > tau)}, {})
        paged = page_store.paged_neurons(rows).get("m", set())
        assert paged <= set(stored), tau
        assert len(paged) == min(5, int((excess > tau).sum()))
