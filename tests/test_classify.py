"""The syntax + classify stages and the ``neuron`` command on the tiny trained group.

Stats and universality tables are built here (their stages are other issues): a chosen
set of neurons is marked universal and some get planted vocabulary moments. The
stage's variance reductions are checked against a direct pandas computation on the
activations captured from the real models.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from click.testing import CliRunner
from conftest import tiny_params, write_token_set_summary

from universal_neurons.description.families import FAMILIES, VOCAB_FAMILIES
from universal_neurons.description.features import load_analysis_features
from universal_neurons.matching.activations import iter_batches, kept_mask
from universal_neurons.pipeline.cli import main

pytestmark = pytest.mark.slow

FAMILY_PARAMS = {"min_count": 5, "topic_words": 20, "topic_min_count": 5}
UNIVERSAL = [(0, i) for i in range(8)] + [(1, i) for i in range(4)]
PLANTED_VOCAB = {(0, 0): "prediction", (0, 1): "suppression", (0, 2): "partition"}


def _neuron_tables(n_layers: int, d_mlp: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    layer, index = np.divmod(np.arange(n_layers * d_mlp), d_mlp)
    universal = np.isin(layer * d_mlp + index, [lyr * d_mlp + i for lyr, i in UNIVERSAL])
    rng = np.random.default_rng(seed)
    universality = pd.DataFrame(
        {
            "layer": layer,
            "index": index,
            "dead": False,
            "max_corr": rng.uniform(0.5, 1, len(layer)),
            "mean_corr": rng.uniform(0.3, 0.5, len(layer)),
            "min_corr": rng.uniform(0.1, 0.3, len(layer)),
            "max_baseline": 0.2,
            "mean_baseline": 0.15,
            "min_baseline": 0.1,
            "excess_corr": np.where(universal, 0.4321, 0.01),
            "is_universal": universal,
        }
    )
    kurt = np.full(len(layer), 3.0)
    skew = np.full(len(layer), 0.1)
    var = np.full(len(layer), 0.001)
    kurt[0], skew[0] = 25.0, 2.0  # prediction
    kurt[1], skew[1] = 25.0, -2.0  # suppression
    var[2] = 0.02  # partition
    stats = universality.assign(vocab_mean=0.0, vocab_var=var, vocab_skew=skew, vocab_kurt=kurt)
    return universality, stats


@pytest.fixture(scope="module")
def classified(tiny_group, tiny_tokens_dir, tmp_path_factory):
    from stages import classify, classify_candidates, syntax
    from universal_neurons.pipeline.layout import Layout

    root = tmp_path_factory.mktemp("families")
    params = tiny_params(families=FAMILY_PARAMS)
    params_file = root / "params.yaml"
    params_file.write_text(yaml.safe_dump(params.model_dump()))  # every key, for DVC
    data = root / "data"
    for sub in ("stats", "universality"):
        (data / sub).mkdir(parents=True)
    for seed in params.train.seeds:
        universality, stats = _neuron_tables(2, 64, seed)
        universality.to_parquet(data / "universality" / f"seed{seed}.parquet")
        stats.to_parquet(data / "stats" / f"seed{seed}.parquet")
    group = [f"seed{seed}" for seed in params.train.seeds]
    write_token_set_summary(data / "stats" / "summary.json", tiny_tokens_dir, params, group=group)
    models_dir = tiny_group[params.train.seeds[0]].parent
    layout = Layout.at(root, tokens=tiny_tokens_dir, models=models_dir)
    syntax.run(params, layout)
    metrics_dir, results_dir = layout.metrics, layout.results
    # the candidates are the planted universal neurons (classify_candidates' own choice of them,
    # from correlate, is tested with the pipeline): what classify selects from them is tested here
    tokens, features, excluded, _ = load_analysis_features(
        tiny_tokens_dir, params.analysis, params.families, data / "syntax"
    )
    tables = {
        f"seed{seed}": classify_candidates.classify_seed(
            params,
            layout,
            seed,
            (tokens, features, excluded),
            pd.read_parquet(data / "stats" / f"seed{seed}.parquet"),
        )[0]
        for seed in params.train.seeds
    }
    classify_candidates.write_tables(layout, tables, features.topic_words)
    metrics = classify.run(params, layout)
    return {
        "params": params,
        "params_file": params_file,
        "data": data,
        "metrics": metrics,
        "metrics_dir": metrics_dir,
        "results_dir": results_dir,
        "models_dir": models_dir,
        "tokens_dir": tiny_tokens_dir,
    }


@pytest.fixture(scope="module")
def stored(classified):
    """Post activations of seed1 at kept positions ``[positions, layers, d_mlp]`` + features."""
    from universal_neurons.models.loading import capture_mlp, load_model

    params = classified["params"]
    tokens, features, excluded, pieces = load_analysis_features(
        classified["tokens_dir"], params.analysis, params.families, classified["data"] / "syntax"
    )
    model = load_model(str(classified["models_dir"] / "seed1"))
    acts = []
    for _, batch in iter_batches(tokens, 50):
        post = capture_mlp(model, batch)["post"]  # [L, b, p, D]
        acts.append(post.permute(1, 2, 0, 3)[kept_mask(batch, excluded)].double().numpy())
    kept = kept_mask(tokens, excluded).numpy()
    return {
        "acts": np.concatenate(acts),
        "codes": pd.DataFrame({v.name: features.codes[v.name][kept] for v in features.variables}),
        "features": features,
        "tokens": tokens,
        "pieces": pieces,
        "kept": kept,
    }


def test_family_tables_and_metrics(classified):
    metrics = json.loads((classified["results_dir"] / "families.json").read_text())
    assert metrics == classified["metrics"]
    # the headline: universal neurons of all models in each activation family
    headline = json.loads((classified["metrics_dir"] / "families.json").read_text())
    assert set(headline) == set(FAMILIES)
    for family in FAMILIES:
        by_hand = sum(entry["counts"][family] for entry in metrics["models"].values())
        assert headline[family] == by_hand
    assert sum(headline.values()) == sum(e["n_universal"] for e in metrics["models"].values())
    assert set(metrics["models"]) == {"seed1", "seed2", "seed3"}
    for label, entry in metrics["models"].items():
        table = pd.read_parquet(classified["data"] / "families" / f"{label}.parquet")
        assert sorted(zip(table["layer"], table["index"], strict=True)) == UNIVERSAL
        assert set(table["family"]) <= set(FAMILIES)
        assert entry["n_universal"] == len(UNIVERSAL)
        assert set(entry["counts"]) == set(FAMILIES) | set(VOCAB_FAMILIES)
        # every universal neuron has exactly one activation family
        assert sum(entry["counts"][f] for f in FAMILIES) == len(UNIVERSAL)
        for family in FAMILIES:
            assert entry["counts"][family] == int((table["family"] == family).sum())
            per_layer = [
                int(((table["family"] == family) & (table["layer"] == layer)).sum())
                for layer in range(2)
            ]
            assert entry["counts_per_layer"][family] == per_layer
        # planted vocabulary composition
        for (layer, index), family in PLANTED_VOCAB.items():
            row = table[(table["layer"] == layer) & (table["index"] == index)].iloc[0]
            assert row["vocab_family"] == family
        assert {f: entry["counts"][f] for f in VOCAB_FAMILIES} == dict.fromkeys(VOCAB_FAMILIES, 1)
        explained = (table["family"] != "unexplained") | (table["vocab_family"] != "none")
        assert entry["n_explained"] == int(explained.sum())
        assert entry["percent_explained"] == pytest.approx(100 * explained.mean())
        by_activation = table["family"] != "unexplained"
        assert entry["n_explained_by_activation"] == int(by_activation.sum())
        assert entry["percent_explained_by_activation"] == pytest.approx(100 * by_activation.mean())
        # best feature and runner-up come from different groups; VRs lie in [0, 1]
        assert (table["best_group"] != table["runner_up_group"]).all()
        assert ((table["best_vr"] >= table["runner_up_vr"]) & (table["best_vr"] <= 1 + 1e-9)).all()
        assert all(len(top) == 5 for top in table["top_features"])
    topics = json.loads((classified["data"] / "families" / "topics.json").read_text())
    assert set(topics) == {"news", "python_docs"} and topics["python_docs"]
    csv = pd.read_csv(classified["metrics_dir"] / "families_per_layer.csv")
    total = csv.groupby("family")["count"].sum()
    for family in FAMILIES:
        assert total[family] == sum(e["counts"][family] for e in metrics["models"].values())
    png = (classified["metrics_dir"] / "families_per_layer.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def _pandas_vr(
    a: pd.Series, codes: pd.Series, min_count: int, placeholders: tuple[int, ...]
) -> tuple[float, float]:
    """(eta^2, best eligible binary VR) of one variable, from SPEC's definitions."""
    var = a.var(ddof=0)
    groups = a.groupby(codes)
    eta2 = (groups.count() * (groups.mean() - a.mean()) ** 2).sum() / (var * len(a))
    best = -np.inf
    for category, n in codes.value_counts().items():
        if n < min_count or len(a) - n < min_count or category in placeholders:
            continue
        inside = codes == category
        p = inside.mean()
        within = p * a[inside].var(ddof=0) + (1 - p) * a[~inside].var(ddof=0)
        best = max(best, (var - within) / var)
    return eta2, best


@pytest.mark.parametrize("neuron", [(0, 3), (0, 5), (1, 2)])
def test_stage_vr_equals_pandas_on_stored_activations(classified, stored, neuron):
    table = pd.read_parquet(classified["data"] / "families" / "seed1.parquet")
    row = table[(table["layer"] == neuron[0]) & (table["index"] == neuron[1])].iloc[0]
    a = pd.Series(stored["acts"][:, neuron[0], neuron[1]])
    by_group: dict[str, float] = {}
    for var in stored["features"].variables:
        eta2, best = _pandas_vr(
            a, stored["codes"][var.name], FAMILY_PARAMS["min_count"], var.placeholders
        )
        assert row[f"eta2_{var.name}"] == pytest.approx(eta2, abs=1e-9), var.name
        score = eta2 if var.name == "position" else best
        by_group[var.group] = max(by_group.get(var.group, -np.inf), score)
    for group, score in by_group.items():
        assert row[f"{group}_vr"] == pytest.approx(score, abs=1e-9), group
    assert row["best_vr"] == pytest.approx(max(by_group.values()), abs=1e-9)
    assert {"pos", "dep"} <= set(stored["codes"].columns)  # syntax features were used


def test_neuron_command_shows_tables_and_top_contexts(classified, stored):
    table = pd.read_parquet(classified["data"] / "families" / "seed1.parquet")
    row = table[(table["layer"] == 0) & (table["index"] == 3)].iloc[0]
    result = _invoke(classified, "seed1", "0.3", "--top", "3")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "seed1 neuron L0.N3" in out
    assert "excess_corr = 0.4321" in out and "is_universal = True" in out
    assert f"family: {row['family']}" in out
    assert f"best feature: {row['best_feature']} (VR {row['best_vr']:.4g}" in out
    assert "computed now" not in out
    assert max(map(len, out.splitlines())) <= 120  # a terminal's width
    # the top context is the position of the largest kept activation, its token highlighted
    acts = stored["acts"][:, 0, 3]
    best = int(np.argmax(acts))
    seq, pos = np.argwhere(stored["kept"])[best]
    token = stored["pieces"][stored["tokens"][seq, pos]].replace("\n", "\u23ce")
    line = next(x for x in out.splitlines() if f"seq {seq} pos {pos}" in x)
    assert line.split()[0] == f"{acts[best]:.4f}"
    assert f"[{token}]" in line
    lines = [x for x in out.splitlines() if " seq " in x and " pos " in x]
    values = [float(x.split()[0]) for x in lines]
    assert len(values) == 3 and values == sorted(values, reverse=True)
    assert values == pytest.approx(sorted(acts, reverse=True)[:3], abs=1e-4)


def test_neuron_command_reads_the_top_contexts_classify_stored(classified, stored, tmp_path):
    """A classified neuron's page needs no model pass: with the model's weights gone (only its
    config.json left) the command shows the same top contexts, read from the family table."""
    table = pd.read_parquet(classified["data"] / "families" / "seed1.parquet")
    row = table[(table["layer"] == 0) & (table["index"] == 5)].iloc[0]
    acts = np.sort(stored["acts"][:, 0, 5])[::-1]
    assert row["top_activations"][:4] == pytest.approx(acts[:4], abs=1e-6)
    for seed in classified["params"].train.seeds:
        (tmp_path / f"seed{seed}").mkdir()
        config = classified["models_dir"] / f"seed{seed}" / "config.json"
        (tmp_path / f"seed{seed}" / "config.json").write_bytes(config.read_bytes())
    result = _invoke({**classified, "models_dir": tmp_path}, "seed1", "0.5", "--top", "4")
    assert result.exit_code == 0, result.output
    lines = [x for x in result.output.splitlines() if " seq " in x and " pos " in x]
    assert [float(x.split()[0]) for x in lines] == pytest.approx(acts[:4], abs=1e-4)
    assert "found by the classify stage" in result.output


def test_neuron_command_computes_an_unclassified_neuron(classified, stored):
    result = _invoke(classified, "2", "0.40", "--top", "2")  # seed2, not universal
    assert result.exit_code == 0, result.output
    assert "computed now" in result.output and "family: " in result.output
    assert "top features:" in result.output


@pytest.mark.parametrize(
    ("model", "neuron", "message"),
    [
        ("seed9", "0.1", "train.seeds is [1, 2, 3]"),
        ("gpt-nonsense", "0.1", "unknown model 'gpt-nonsense'"),
        ("seed1", "2.0", "outside seed1 (2 layers x 64 neurons"),
        ("seed1", "0.64", "INDEX 0-63"),
        ("seed1", "zero.one", "LAYER.INDEX"),
    ],
)
def test_neuron_command_errors(classified, model, neuron, message):
    result = _invoke(classified, model, neuron)
    assert result.exit_code == 2
    assert message in result.output


def _invoke(classified, *args):
    return CliRunner().invoke(
        main,
        [
            "neuron",
            *args[:2],
            "--params",
            str(classified["params_file"]),
            "--tokens-dir",
            str(classified["tokens_dir"]),
            "--models-dir",
            str(classified["models_dir"]),
            "--data-dir",
            str(classified["data"]),
            *args[2:],
        ],
    )


def test_dvc_repro_runs_syntax_and_classify(classified, tmp_path):
    """The dvc.yaml stages run for real (tiny params, inputs of the other stages put in place)."""
    import os
    import shutil
    import subprocess
    import sys

    from conftest import REPO_ROOT

    work = tmp_path / "repo"
    work.mkdir()
    for name in ("dvc.yaml", "src", "stages"):
        copy = shutil.copytree if (REPO_ROOT / name).is_dir() else shutil.copy
        copy(REPO_ROOT / name, work / name)
    shutil.copy(classified["params_file"], work / "params.yaml")
    shutil.copytree(classified["tokens_dir"], work / "data" / "tokens")
    for stage in ("stats", "classify_candidates"):
        shutil.copytree(classified["data"] / stage, work / "data" / stage)
    for seed in (1, 2, 3):
        shutil.copytree(classified["models_dir"] / f"seed{seed}", work / "models" / f"seed{seed}")
    bin_dir = str(Path(sys.executable).parent)
    env = os.environ | {
        "PYTHONPATH": f"{work / 'src'}{os.pathsep}{work}",
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
    }

    def dvc(*args):
        done = subprocess.run(
            [str(Path(bin_dir) / "dvc"), *args], cwd=work, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    dvc("init", "--no-scm", "-q")
    dvc("repro", "--single-item", "validate", "syntax", "classify")
    metrics = json.loads((work / "results" / "families.json").read_text())
    assert metrics == classified["metrics"]  # same inputs, same params: same families
    shown = json.loads(dvc("metrics", "show", "--json"))
    assert "metrics/families.json" in json.dumps(shown)
    assert json.loads(dvc("status", "--json", "syntax", "classify")) == {}  # up to date
    lock = (work / "dvc.lock").read_text()
    assert "families.spacy_model" in lock or "spacy_model" in lock


def test_neurons_classified_in_chunks_equal_one_pass(classified):
    """With room for the sums of only 2 neurons per pass, 5 neurons take 3 passes: the family
    table and the stored top activations equal those of one pass over all 5 (the bound keeps a
    GPT-2-sized universal set within memory, issue 22)."""
    from universal_neurons.description.families import classify_model
    from universal_neurons.description.variance import neuron_chunks
    from universal_neurons.models.loading import load_model

    params = classified["params"]
    tokens, features, excluded, _ = load_analysis_features(
        classified["tokens_dir"], params.analysis, params.families, classified["data"] / "syntax"
    )
    model = load_model(str(classified["models_dir"] / "seed1"))
    neurons = [(0, 3), (1, 7), (0, 60), (1, 0), (1, 33)]
    per_neuron = 8 * sum(v.size for v in features.variables)
    small = 2 * per_neuron + per_neuron // 2
    assert [len(c) for c in neuron_chunks(neurons, features, small)] == [2, 2, 1]
    assert neuron_chunks(neurons, features) == [neurons]
    args = (model, tokens, features, neurons, excluded, params.analysis, params.families, None)
    whole, whole_top = classify_model(*args, top_k=4)
    chunked, chunked_top = classify_model(*args, top_k=4, sums_bytes=small)
    pd.testing.assert_frame_equal(chunked, whole)
    for name in ("values", "sequence", "position"):
        assert torch.equal(getattr(chunked_top, name), getattr(whole_top, name))


def test_classify_keeps_the_universal_rows_of_the_candidates():
    """The families of a τ are the candidates' rows of its universal neurons, flagged (and their
    vocabulary families taken) from the stats table; a list of neurons keeps every row; a
    universal neuron that was no candidate (candidates classified at a higher threshold) stops
    the stage with its name."""
    from universal_neurons.config import FamiliesConfig
    from universal_neurons.description.families import (
        FamiliesError,
        add_vocab_families,
        select_universal,
    )

    stats = pd.DataFrame(
        {"layer": [0] * 6 + [1] * 6, "index": list(range(6)) * 2, "is_universal": True}
    ).assign(vocab_var=0.001, vocab_skew=0.0, vocab_kurt=3.0)
    family = pd.DataFrame(
        {"layer": [0, 0, 1], "index": [3, 5, 2], "family": ["unigram", "position", "syntax"]}
    )
    candidates = add_vocab_families(family, stats, FamiliesConfig()).assign(top_positions=1)
    stats["is_universal"] = False
    stats.loc[5, ["is_universal", "vocab_kurt", "vocab_skew"]] = [True, 25.0, 2.0]  # neuron 0.5
    chosen = select_universal(candidates, stats, FamiliesConfig())
    assert list(chosen.columns) == list(candidates.columns)
    assert chosen[["layer", "index", "family"]].values.tolist() == [[0, 5, "position"]]
    assert chosen[["is_universal", "vocab_kurt", "vocab_family"]].values.tolist() == [
        [True, 25.0, "prediction"]
    ]
    listed = select_universal(candidates, stats, FamiliesConfig(neurons=["0.3", "0.5", "1.2"]))
    assert listed["is_universal"].tolist() == [False, True, False]
    stats.loc[10, "is_universal"] = True  # neuron 1.4, no candidate
    with pytest.raises(FamiliesError, match=r"neuron 1\.4 is universal but was not classified"):
        select_universal(candidates, stats, FamiliesConfig())
