"""Report fixes found when reading the report as a researcher (issue 24, part 6): the explained
count, the families figure, the per-layer figure, the families table's width, the contents
links and the excess printed beside τ. Each test fails on the report as it was."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from synthetic_results import write_results

from stages.report import report_sources
from universal_neurons.description.neuron_profile import NeuronPage
from universal_neurons.outputs import neuron_page, plots
from universal_neurons.outputs.family_summary import explained_counts, family_stack
from universal_neurons.outputs.neuron_view import key_values
from universal_neurons.outputs.number_format import beside_threshold
from universal_neurons.outputs.report import build_report
from universal_neurons.pipeline.layout import Layout

# seed1 as the default group has it: 4 universal neurons, 3 unexplained, all 4 "partition"
SEED1 = {
    "n_universal": 4,
    "n_explained": 4,  # an activation family or a vocabulary family
    "percent_explained": 100.0,
    "n_explained_by_activation": 1,
    "percent_explained_by_activation": 25.0,
    "counts": {"position": 1, "unexplained": 3, "unigram": 0, "partition": 4, "prediction": 0},
    "counts_per_layer": {"position": [1, 0], "unexplained": [0, 3], "partition": [1, 3]},
}
MANY_FAMILIES = [
    "unigram",
    "byte",
    "alphabet",
    "previous_token",
    "position",
    "syntax",
    "semantic",
    "unexplained",
    "prediction",
    "suppression",
    "partition",
]


def test_explained_counts_only_activation_families():
    assert explained_counts(SEED1) == (1, 25.0, 4)
    older = {k: v for k, v in SEED1.items() if not k.startswith("n_explained_by")}
    assert explained_counts(older)[:2] == (1, 25.0)  # from the unexplained count


def test_family_bars_add_up_to_the_universal_neurons():
    models = {"seed1": SEED1, "seed2": {"n_universal": 2, "counts": {"byte": 2, "partition": 2}}}
    stack = family_stack(models)
    fig, ax = plt.subplots()
    plots.draw_bars(ax, list(models), stack, stacked=True)
    heights = {}
    for bar in ax.patches:
        x = round(bar.get_x() + bar.get_width() / 2)
        heights[x] = heights.get(x, 0) + bar.get_height()
    plt.close(fig)
    assert heights == {0: 4, 1: 2}  # not 8 and 4: the vocabulary family is another axis
    assert set(stack) == {"position", "unexplained", "byte"}


def test_per_layer_bars_are_dodged_so_equal_models_both_show():
    values = {"seed1": [0.2, 0.6], "seed2": [0.0, 0.6], "seed3": [0.2, 0.4], "seed4": [0.0, 0.6]}
    fig, ax = plt.subplots()
    plots.draw_per_layer(ax, values)
    bars = [(b.get_x(), b.get_x() + b.get_width(), b.get_height()) for b in ax.patches]
    plt.close(fig)
    assert len(bars) == 4 * 2
    by_model = dict(zip(values, np.array(bars).reshape(4, 2, 3), strict=True))
    seed2, seed4 = by_model["seed2"][1], by_model["seed4"][1]  # equal values in layer 1
    assert seed2[2] == seed4[2] == pytest.approx(0.6)
    assert seed2[1] <= seed4[0]  # side by side, not one behind the other
    spans = sorted((left, right) for left, right, _ in bars)
    assert all(a[1] <= b[0] + 1e-9 for a, b in zip(spans, spans[1:], strict=False))


@pytest.mark.parametrize(
    ("value", "threshold", "shown"),
    [
        (0.50031, 0.5, "0.5003"),
        (0.4999, 0.5, "0.4999"),
        (0.61, 0.5, "0.61"),
        (0.5000004, 0.5, "0.5000004"),
        (0.7004, 0.7, "0.7004"),
        (float("nan"), 0.5, "nan"),
    ],
)
def test_a_number_beside_the_threshold_shows_its_side(value, threshold, shown):
    assert beside_threshold(value, threshold) == shown


def _page(excess: float) -> NeuronPage:
    stats = pd.Series({"excess_corr": excess, "mean_corr": 0.62, "mean_baseline": 0.11962})
    empty = np.zeros(0)
    return NeuronPage("seed1", 1, 7, stats, None, pd.DataFrame(), [], (empty, empty), ())


def test_pages_print_the_excess_above_tau():
    summary = neuron_page.summary_html(_page(0.50031), 0.5)
    excess = re.search(r"excess correlation <b>([0-9.]+)</b>", summary).group(1)
    assert float(excess) > 0.5 and excess == "0.5003"
    rows = pd.DataFrame(
        [["seed1", 1, 7, 0.50031, "byte", "byte_class=utf8-lead-2", 0.53, np.nan]],
        columns=["model", "layer", "index", "excess_corr", "family", "best_feature", "best_vr"]
        + ["first_universal_tokens"],
    )
    assert "<td>0.5003</td>" in neuron_page.index_html(rows, None, 0.5)
    line = " ".join(key_values(pd.Series({"excess_corr": 0.500031}), threshold=0.5))
    assert "excess_corr = 0.50003" in line


class _Contents(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.links: list[str] = []
        self.items = 0
        self._in_list = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "ul" and not self.items:
            self._in_list = True
        if self._in_list and tag == "li":
            self.items += 1
        if self._in_list and tag == "a":
            self.links.append(attrs["href"])

    def handle_endtag(self, tag):
        if tag == "ul":
            self._in_list = False


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, list[str]]:
    workdir = tmp_path_factory.mktemp("report_fixes")
    write_results(workdir)
    families = json.loads((workdir / "results" / "families.json").read_text())
    for entry in families["models"].values():  # every family there is, in every model
        entry["counts"] = dict.fromkeys(MANY_FAMILIES, 1)
    (workdir / "results" / "families.json").write_text(json.dumps(families))
    result = build_report(report_sources(Layout.at(workdir), [1, 2]), workdir / "report")
    return workdir / "report" / "index.html", result.sections


def test_contents_items_link_to_their_sections(report):
    path, sections = report
    parser = _Contents()
    parser.feed(path.read_text(encoding="utf-8"))
    assert parser.items == len(sections) == len(parser.links) >= 5
    assert all(link.startswith("#") and link[1:] in parser.ids for link in parser.links)


@pytest.mark.slow
@pytest.mark.browser
def test_families_tables_fit_a_1400_px_window(report):
    from headless_chromium import Chromium

    path, _ = report
    with Chromium(width=1400, height=900) as browser:
        browser.goto(path.as_uri())
        found = browser.evaluate(
            """JSON.stringify(Array.from(document.querySelectorAll('#families ~ table'))
                .map(t => [t.getBoundingClientRect().right, t.scrollWidth, t.clientWidth]))"""
        )
        width = browser.evaluate("window.innerWidth")
    tables = json.loads(found)
    assert len(tables) >= 2
    for right, scroll, client in tables:
        assert right <= width and scroll <= client  # inside the window, no scrolling
