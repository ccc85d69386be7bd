"""The HTML report: every figure it references exists, every figure is referenced, and the
headline numbers (hand-computed from the planted results) are printed."""

from __future__ import annotations

import csv
import json
from html.parser import HTMLParser
from pathlib import Path

import pytest
from synthetic_results import EXPECTED, write_results

from stages.report import report_sources
from universal_neurons.outputs.report import build_report, training_summary
from universal_neurons.pipeline.layout import Layout


def _sources(workdir: Path, seeds: list[int]):
    """The report inputs of the workspace ``workdir`` (the report stage's layout)."""
    return report_sources(Layout.at(workdir), seeds)


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.sources.append(dict(attrs)["src"])

    def handle_data(self, data):
        self.text.append(data)


def _parse(path: Path) -> _Images:
    parser = _Images()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


@pytest.fixture(scope="module")
def full_report(tmp_path_factory) -> tuple[Path, Path, dict]:
    workdir = tmp_path_factory.mktemp("results")
    documents = write_results(workdir)
    out = workdir / "report"
    result = build_report(_sources(workdir, [1, 2]), out)
    return workdir, out, {"documents": documents, "result": result}


def test_every_figure_is_referenced_and_exists(full_report):
    _, out, info = full_report
    page = _parse(out / "index.html")
    on_disk = sorted(p.relative_to(out).as_posix() for p in (out / "figures").glob("*.png"))
    assert sorted(page.sources) == on_disk
    assert sorted(info["result"].figures) == on_disk
    # one figure per section that has one: per layer, 2 distributions, stats, families, training
    assert on_disk == [
        "figures/corr_vs_baseline_seed1.png",
        "figures/corr_vs_baseline_seed2.png",
        "figures/families.png",
        "figures/stats_effect_sizes.png",
        "figures/training_curves.png",
        "figures/universal_per_layer.png",
    ]
    for name in on_disk:
        assert (out / name).read_bytes()[:8] == PNG_MAGIC


def test_headline_numbers(full_report):
    _, out, _ = full_report
    text = "".join(_parse(out / "index.html").text)
    assert EXPECTED["seed1"]["percent"] in text  # 4 / 39 live neurons
    assert EXPECTED["seed2"]["percent"] in text  # 2 / 38
    assert f"Universal neurons: {EXPECTED['mean_percent']} on average over 2 models" in text
    assert EXPECTED["kept_positions"] in text
    # per-layer table: seed1 layer 0 has 3 of 19 live neurons universal
    assert "15.79%" in text and "11.11%" in text
    # statistics table: median input bias of universal neurons and a small p-value
    assert "-0.79" in text and "1.50e-06" in text
    # families: 100 * 3/4 explained in seed1 (unigram, position, unigram; one unexplained)
    assert "75.00%" in text
    # the best example of each family, highest variance reduction first
    assert "token_1_0" in text and "token_1_1" in text


def test_sections_follow_their_inputs(tmp_path):
    """Only the training curves exist: only the training section, one figure."""
    write_results(tmp_path)
    for path in [*(tmp_path / "results").iterdir(), *(tmp_path / "data").rglob("*.parquet")]:
        path.unlink()
    result = build_report(_sources(tmp_path, [1, 2]), tmp_path / "report")
    assert result.sections == ["Training"]
    page = _parse(tmp_path / "report" / "index.html")
    assert page.sources == ["figures/training_curves.png"]
    assert "Universal neurons:" not in " ".join(page.text)


def test_curve_files_for_dvc_plots(full_report):
    """report/curves/seed{s}.csv holds exactly the evaluated rows of curve.csv."""
    workdir, out, _ = full_report
    for seed in (1, 2):
        with (workdir / "models" / f"seed{seed}" / "curve.csv").open() as handle:
            source = [row for row in csv.DictReader(handle) if row["heldout_loss"]]
        with (out / "curves" / f"seed{seed}.csv").open() as handle:
            written = list(csv.DictReader(handle))
        assert [int(r["step"]) for r in written] == [2, 4, 6]
        assert [float(r["heldout_loss"]) for r in written] == [
            float(r["heldout_loss"]) for r in source
        ]
        assert [float(r["tokens"]) for r in written] == [float(r["tokens"]) for r in source]


def test_training_summary(full_report):
    workdir, _, _ = full_report
    summary = training_summary(
        _sources(workdir, [1, 2, 3]).model_dirs
    )  # seed 3 has no model: skipped
    assert summary["models"]["seed1"] == {
        "heldout_loss": 4.39,
        "unigram_entropy": 5.3,
        "steps": 6,
        "tokens": 3072,
    }
    assert summary["mean_heldout_loss"] == pytest.approx((4.39 + 4.38) / 2, abs=1e-12)
    json.dumps(summary, allow_nan=False)


def test_bad_metrics_file_is_named(tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "universality.json").write_text('{"threshold": 0.5}')
    with pytest.raises(ValueError, match=r"universality.json: expected a 'models' mapping"):
        build_report(_sources(tmp_path, [1, 2]), tmp_path / "report")


def test_universal_neuron_table_without_pages(full_report):
    """The planted universal neurons (4 in seed1, 2 in seed2) are listed, most universal first,
    with their family and best feature; no page was written here, so nothing links."""
    import pandas as pd

    workdir, out, info = full_report
    assert "Universal neuron table" in info["result"].sections
    page = (out / "index.html").read_text(encoding="utf-8")
    table = page.split('<table class="universal">')[1].split("</table>")[0]
    rows = [row.split("<td>")[1:] for row in table.split("<tr>")[2:]]  # after the header row
    cells = [[cell.split("</td>")[0] for cell in row] for row in rows]
    assert [c[0] for c in cells] == ["seed1"] * 4 + ["seed2"] * 2
    assert "<a " not in table
    for seed in (1, 2):
        universality = pd.read_parquet(workdir / "data" / "universality" / f"seed{seed}.parquet")
        planted = universality[universality["is_universal"]].sort_values(
            "excess_corr", ascending=False
        )
        families = pd.read_parquet(workdir / "data" / "families" / f"seed{seed}.parquet")
        mine = [c for c in cells if c[0] == f"seed{seed}"]
        assert [c[1] for c in mine] == [f"L{r.layer}.N{r.index}" for r in planted.itertuples()]
        assert [float(c[2]) for c in mine] == pytest.approx(planted["excess_corr"], rel=5e-3)
        family = families.set_index(["layer", "index"])
        for c, r in zip(mine, planted.itertuples(), strict=True):
            assert c[3] == family.loc[(r.layer, r.index), "family"]
            assert f"<code>{family.loc[(r.layer, r.index), 'best_feature']}</code>" in c[4]


def test_a_model_without_universal_neurons_lists_none_and_links_stay_integer():
    """A model with no universal neuron adds no row (not one ``Lnan.Nnan`` row per neuron of
    its table), and every link names the page as written: ``<layer>.<index>.html``."""
    import numpy as np
    import pandas as pd

    from universal_neurons.description.neuron_profile import universal_rows
    from universal_neurons.outputs.neuron_page import index_html, page_name

    with_some = pd.DataFrame(
        {
            "layer": [0, 0, 2],
            "index": [1, 2, 1155],
            "excess_corr": [0.6, 0.2, 0.7],
            "is_universal": [True, False, True],
            "first_universal_tokens": [100.0, np.nan, 200.0],
        }
    )
    with_none = with_some.assign(is_universal=False, layer=[0, 1, 1], index=[5, 6, 7])
    empty_families = pd.DataFrame(columns=["layer", "index", "family", "best_feature", "best_vr"])
    rows = universal_rows({"seed1": with_some, "seed2": with_none}, {"seed2": empty_families})
    assert rows[["model", "layer", "index"]].values.tolist() == [
        ["seed1", 2, 1155],
        ["seed1", 0, 1],
    ]
    assert rows["first_universal_tokens"].tolist() == [200.0, 100.0]
    html = index_html(rows, "neurons/")
    assert f'href="neurons/seed1/{page_name(2, 1155)}"' in html
    assert page_name(2, 1155) == "2.1155.html" and "nan" not in html
    assert len(universal_rows({"seed2": with_none}, {})) == 0
