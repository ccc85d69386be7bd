"""Neuron statistics: every column against an independent computation on a real tiny model.

The inputs of the stats stage are built here as the collect and universality stages would
write them (their contract in docs/ARCHITECTURE.md): moments of the real pre-activations of
the tiny trained models, streamed with StreamingMoments over the kept positions, and a
universality table with a planted set of universal and dead neurons.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from conftest import REPO_ROOT, tiny_params, tiny_params_dict, write_token_set_summary
from scipy import stats as scipy_stats
from text_tables import table_cells, text_tables

from universal_neurons.description import statistics
from universal_neurons.matching.activations import analysis_tokens, excluded_token_ids, kept_mask
from universal_neurons.matching.moments import StreamingMoments
from universal_neurons.models.loading import capture_mlp, load_model, model_shape, processed_weights
from universal_neurons.pipeline.tools import findings
from universal_neurons.pipeline.tools.findings import findings_table
from universal_neurons.text.tokens import load_tokenizer, load_tokens

# ---------------------------------------------------------------- fixtures: the stage's inputs


def kept_activations(model_dir: Path, tokens_dir: Path) -> dict[str, np.ndarray]:
    """Pre- and post-activations of every layer at the kept positions: ``[layers, kept, d_mlp]``."""
    params = tiny_params()
    model = load_model(str(model_dir))
    tokens = analysis_tokens(load_tokens(tokens_dir, params.analysis.split), params.analysis)
    excluded = excluded_token_ids(load_tokenizer(tokens_dir), params.analysis)
    parts: dict[str, list[np.ndarray]] = {"pre": [], "post": []}
    for start in range(0, len(tokens), params.analysis.batch_size):
        batch = torch.as_tensor(
            np.asarray(tokens[start : start + params.analysis.batch_size], np.int64)
        )
        acts = capture_mlp(model, batch, ("pre", "post"))
        mask = kept_mask(batch, excluded)
        for kind in parts:
            parts[kind].append(acts[kind][:, mask].numpy())  # [layers, kept, d_mlp]
    return {kind: np.concatenate(chunks, axis=1) for kind, chunks in parts.items()}


def moments_table(activations: dict[str, np.ndarray], batch: int = 700) -> pd.DataFrame:
    """The collect stage's moments.parquet: streamed in batches, rows shuffled."""
    n_layers, n_kept, d_mlp = activations["pre"].shape
    columns: dict[str, np.ndarray] = {
        "layer": np.repeat(np.arange(n_layers), d_mlp),
        "index": np.tile(np.arange(d_mlp), n_layers),
        "count": np.full(n_layers * d_mlp, n_kept),
    }
    for kind, values in activations.items():
        per_layer = []
        for layer in range(n_layers):
            moments = StreamingMoments.empty(d_mlp)
            for start in range(0, n_kept, batch):
                moments = moments.update(values[layer, start : start + batch])
            per_layer.append(moments)
        for name in ("mean", "var", "skew", "kurt", "sparsity"):
            columns[f"{kind}_{name}"] = np.concatenate([getattr(m, name) for m in per_layer])
    table = pd.DataFrame(columns)
    return table.sample(frac=1.0, random_state=0).reset_index(drop=True)


def universality_table(
    n_layers: int,
    d_mlp: int,
    universal: set[tuple[int, int]],
    dead: set[tuple[int, int]],
    seed: int,
) -> pd.DataFrame:
    """A universality-stage table with the given universal and dead neurons."""
    rng = np.random.default_rng(seed)
    n = n_layers * d_mlp
    layer, index = np.repeat(np.arange(n_layers), d_mlp), np.tile(np.arange(d_mlp), n_layers)
    keys = list(zip(layer.tolist(), index.tolist(), strict=True))
    is_universal = np.array([key in universal for key in keys])
    is_dead = np.array([key in dead for key in keys])
    # universal neurons: excess correlation >= 0.45; the others <= 0.4
    max_corr = np.where(is_universal, rng.uniform(0.85, 0.95, n), rng.uniform(0.2, 0.6, n))
    max_baseline = rng.uniform(0.2, 0.4, n)
    table = pd.DataFrame(
        {
            "layer": layer,
            "index": index,
            "dead": is_dead,
            "max_corr": max_corr,
            "mean_corr": max_corr - 0.05,
            "min_corr": max_corr - 0.1,
            "max_baseline": max_baseline,
            "mean_baseline": max_baseline - 0.05,
            "min_baseline": max_baseline - 0.1,
            "excess_corr": max_corr - max_baseline,
            "is_universal": is_universal,
        }
    )
    for column in ("max_corr", "mean_corr", "min_corr", "excess_corr"):
        table.loc[is_dead, column] = np.nan
    return table


PLANTED_UNIVERSAL = {
    "seed1": {(0, 3), (0, 10), (0, 17), (1, 5), (1, 6), (1, 40), (1, 63), (0, 1)},
    "seed2": {(0, 0), (0, 2), (1, 9), (1, 33), (1, 34), (0, 50)},
    "seed3": set(),  # no universal neurons: the comparison is undefined -> null
}
PLANTED_DEAD = {"seed1": {(0, 1), (1, 2)}, "seed2": {(1, 7)}, "seed3": {(0, 4)}}


def planted_emergence(n_layers: int, d_mlp: int) -> pd.DataFrame:
    """An emergence table (``model, tokens, layer, index, is_universal``) at 1,000 / 2,000 /
    4,000 tokens: layer-0 planted universal neurons are universal from 1,000 tokens, layer-1
    ones from 2,000 (with a lapse at 4,000 for neuron 1.5), every other neuron never."""
    rows = []
    for model, planted in PLANTED_UNIVERSAL.items():
        for tokens in (1_000, 2_000, 4_000):
            for layer in range(n_layers):
                for index in range(d_mlp):
                    universal = (layer, index) in planted and (layer == 0 or tokens >= 2_000)
                    universal &= not (tokens == 4_000 and (layer, index) == (1, 5))
                    rows.append((model, tokens, layer, index, universal))
    return pd.DataFrame(rows, columns=["model", "tokens", "layer", "index", "is_universal"])


def expected_first_universal(model: str, layer: int, index: int) -> float:
    """``first_universal_tokens`` that ``planted_emergence`` implies."""
    if (layer, index) not in PLANTED_UNIVERSAL[model]:
        return float("nan")
    return 1_000.0 if layer == 0 else 2_000.0


@pytest.fixture(scope="module")
def stage_inputs(tiny_group, tiny_tokens_dir, tmp_path_factory) -> dict:
    """Model, collect and universality directories of the tiny group, plus stored activations."""
    root = tmp_path_factory.mktemp("stats_inputs")
    collect, universality = root / "collect", root / "universality"
    universality.mkdir()
    activations = {}
    for seed, model_dir in tiny_group.items():
        name = f"seed{seed}"
        activations[name] = kept_activations(model_dir, tiny_tokens_dir)
        (collect / name).mkdir(parents=True)
        moments_table(activations[name]).to_parquet(collect / name / "moments.parquet")
        n_layers, _, d_mlp = activations[name]["pre"].shape
        universality_table(
            n_layers, d_mlp, PLANTED_UNIVERSAL[name], PLANTED_DEAD[name], seed
        ).to_parquet(universality / f"{name}.parquet")
    params = tiny_params()
    for name in activations:
        write_token_set_summary(
            collect / name / "summary.json", tiny_tokens_dir, params, model=name
        )
    group = [f"seed{seed}" for seed in tiny_group]
    write_token_set_summary(universality / "summary.json", tiny_tokens_dir, params, group=group)
    models_dir = next(iter(tiny_group.values())).parent
    (root / "emergence").mkdir()
    planted_emergence(n_layers, d_mlp).to_parquet(root / "emergence" / "neurons.parquet")
    return {
        "models": models_dir,
        "collect": collect,
        "universality": universality,
        "emergence": root / "emergence",
        "activations": activations,
        "group": tiny_group,
    }


@pytest.fixture(scope="module")
def stage_outputs(stage_inputs, tmp_path_factory) -> dict:
    """The stats stage run on the tiny group."""
    from stages import stats as stage
    from stages import weight_stats
    from universal_neurons.pipeline.layout import Layout

    out = tmp_path_factory.mktemp("stats_outputs")
    data = stage_inputs["collect"].parent  # holds collect/, universality/ and emergence/
    layout = Layout.at(out, models=stage_inputs["models"], data=data)
    paths = {
        "output_dir": layout.stage_dir("stats"),
        "metrics_path": layout.result("stats.json"),
        "findings_path": layout.metric("findings.json"),
        "percentiles_csv": layout.metric("stats_percentiles.csv"),
    }
    weight_stats.run(tiny_params(), layout)  # the weight statistics stats joins
    comparison = stage.run(tiny_params(), layout)  # reads data/emergence too
    return {"comparison": comparison, **paths}


# ---------------------------------------------------------------- weight statistics


def test_weight_statistics_equal_direct_computation(tiny_group):
    model = load_model(str(tiny_group[1]))
    weights = {k: v.numpy().astype(np.float64) for k, v in processed_weights(model).items()}
    w_in, b_in, w_out, w_u = weights["W_in"], weights["b_in"], weights["W_out"], weights["W_U"]
    n_layers, d_mlp = model_shape(model)
    # The weights are the processed ones: writing weights and unembedding centred.
    np.testing.assert_allclose(w_out.mean(axis=-1), 0.0, atol=1e-6)
    np.testing.assert_allclose(w_u.mean(axis=-1), 0.0, atol=1e-6)

    table = statistics.weight_statistics(processed_weights(model), neuron_chunk=24)
    assert len(table) == n_layers * d_mlp
    expected = []
    for layer in range(n_layers):
        for i in range(d_mlp):
            a, b = w_in[layer, :, i], w_out[layer, i, :]
            na, nb = np.sqrt(np.sum(a * a)), np.sqrt(np.sum(b * b))
            cos = np.array(
                [b @ w_u[:, v] / (nb * np.sqrt(w_u[:, v] @ w_u[:, v])) for v in range(w_u.shape[1])]
            )
            centred = cos - cos.sum() / len(cos)
            var = np.sum(centred**2) / len(cos)
            expected.append(
                {
                    "layer": layer,
                    "index": i,
                    "w_in_norm": na,
                    "w_out_norm": nb,
                    "input_bias": b_in[layer, i],
                    "in_out_sim": (a @ b) / (na * nb),
                    "l2_penalty": na**2 + nb**2,
                    "vocab_mean": cos.sum() / len(cos),
                    "vocab_var": var,
                    "vocab_skew": np.sum(centred**3) / len(cos) / var**1.5,
                    "vocab_kurt": np.sum(centred**4) / len(cos) / var**2,
                }
            )
    expected = pd.DataFrame(expected)
    assert list(table.columns) == list(expected.columns)
    np.testing.assert_array_equal(table[["layer", "index"]], expected[["layer", "index"]])
    for column in expected.columns[2:]:
        np.testing.assert_allclose(
            table[column], expected[column], rtol=1e-10, atol=1e-12, err_msg=column
        )
    # a real model has spread in every statistic (a constant column would hide a broadcasting bug)
    assert (table[list(statistics.WEIGHT_METRICS + statistics.VOCAB_METRICS)].std() > 0).all()


def test_the_weight_stats_stage_feeds_the_stats_stage_without_models(
    stage_inputs, stage_outputs, tmp_path
):
    """weight_stats writes each model's ``weight_statistics``; the stats stage joins those
    tables and loads no model: run again without any model it writes the same neuron tables
    (so a new τ reruns stats in seconds)."""
    from stages import stats as stage
    from universal_neurons.pipeline.layout import Layout

    data = stage_inputs["collect"].parent
    params = tiny_params()
    for seed in params.train.seeds:
        written = pd.read_parquet(data / "weight_stats" / f"seed{seed}.parquet")
        model = load_model(str(stage_inputs["models"] / f"seed{seed}"))
        direct = statistics.weight_statistics(processed_weights(model), params.stats.neuron_chunk)
        pd.testing.assert_frame_equal(written, direct, check_exact=True)
    copy = tmp_path / "data"
    for stage_dir in ("collect", "universality", "emergence", "weight_stats"):
        shutil.copytree(data / stage_dir, copy / stage_dir)
    stage.run(params, Layout.at(tmp_path, models=tmp_path / "no-models", data=copy))
    for seed in params.train.seeds:
        name = f"seed{seed}.parquet"
        again = pd.read_parquet(copy / "stats" / name)
        pd.testing.assert_frame_equal(again, pd.read_parquet(stage_outputs["output_dir"] / name))
        written = pd.read_parquet(data / "weight_stats" / name)
        columns = ["layer", "index", *statistics.WEIGHT_METRICS, *statistics.VOCAB_METRICS]
        pd.testing.assert_frame_equal(again[columns], written[columns], check_exact=True)


def test_weight_statistics_reject_mismatched_shapes():
    weights = {
        "W_in": np.ones((2, 4, 6)),
        "b_in": np.ones((2, 6)),
        "W_out": np.ones((2, 4, 6)),  # transposed
        "W_U": np.ones((4, 9)),
    }
    with pytest.raises(ValueError, match="W_out: expected shape"):
        statistics.weight_statistics(weights)


# ---------------------------------------------------------------- the neuron table


def test_table_activation_moments_equal_scipy_on_stored_activations(stage_inputs, stage_outputs):
    for name, acts in stage_inputs["activations"].items():
        table = pd.read_parquet(stage_outputs["output_dir"] / f"{name}.parquet")
        pre = acts["pre"].astype(np.float64)  # [layers, kept, d_mlp]
        n_layers, _, d_mlp = pre.shape
        for layer in range(n_layers):
            rows = table[table["layer"] == layer].sort_values("index")
            assert rows["index"].tolist() == list(range(d_mlp))
            x = pre[layer]
            np.testing.assert_allclose(rows["mean"], x.mean(axis=0), rtol=0, atol=1e-6)
            np.testing.assert_allclose(rows["var"], x.var(axis=0), rtol=1e-6, atol=1e-9)
            np.testing.assert_allclose(rows["skew"], scipy_stats.skew(x, axis=0), rtol=0, atol=1e-6)
            np.testing.assert_allclose(
                rows["kurt"], scipy_stats.kurtosis(x, axis=0, fisher=False), rtol=0, atol=1e-6
            )
            np.testing.assert_array_equal(rows["sparsity"], (x > 0).mean(axis=0))
            # the pre-activation, not the post-activation (GELU output)
            post_mean = acts["post"][layer].astype(np.float64).mean(axis=0)
            assert np.abs(rows["mean"].to_numpy() - post_mean).max() > 1e-2


def test_table_schema(stage_outputs):
    table = pd.read_parquet(stage_outputs["output_dir"] / "seed1.parquet")
    metrics = [
        "w_in_norm", "w_out_norm", "input_bias", "in_out_sim", "l2_penalty",
        "vocab_mean", "vocab_var", "vocab_skew", "vocab_kurt",
        "mean", "var", "skew", "kurt", "sparsity",
    ]  # fmt: skip
    universality = [
        "layer", "index", "dead", "max_corr", "mean_corr", "min_corr",
        "max_baseline", "mean_baseline", "min_baseline", "excess_corr", "is_universal",
    ]  # fmt: skip
    expected = universality + ["first_universal_tokens"] + metrics + [f"{m}_pct" for m in metrics]
    assert list(table.columns) == expected
    expected_first = [
        expected_first_universal("seed1", layer, index)
        for layer, index in table[["layer", "index"]].to_numpy()
    ]
    np.testing.assert_array_equal(table["first_universal_tokens"], expected_first)
    dtypes = {c: str(t) for c, t in table.dtypes.items()}
    assert dtypes.pop("layer") == "int64" and dtypes.pop("index") == "int64"
    assert dtypes.pop("dead") == "bool" and dtypes.pop("is_universal") == "bool"
    assert set(dtypes.values()) == {"float64"}
    assert len(table) == 2 * 64
    assert table[["layer", "index"]].to_numpy().tolist() == [
        [layer, i] for layer in range(2) for i in range(64)
    ]
    assert (
        set(map(tuple, table.loc[table["is_universal"], ["layer", "index"]].to_numpy()))
        == PLANTED_UNIVERSAL["seed1"]
    )
    # percentiles are in (0, 100], each layer's largest value at 100
    pct = table[[f"{m}_pct" for m in metrics]]
    assert pct.min().min() > 0 and pct.max().max() == 100.0


def test_percentiles_are_within_layer():
    # the value 3.0 is the 3rd of 4 in layer 0 but the 1st of 4 in layer 1
    values = {"x": [1.0, 2.0, 3.0, 4.0, 3.0, 4.0, 5.0, 6.0], "y": [5, 5, 1, 2, np.nan, 1, 2, 3]}
    frame = pd.DataFrame({"layer": [0, 0, 0, 0, 1, 1, 1, 1], **values})
    pct = statistics.within_layer_percentiles(frame, ["x", "y"])
    assert pct["x_pct"].tolist() == [25.0, 50.0, 75.0, 100.0, 25.0, 50.0, 75.0, 100.0]
    # ties share their average rank; NaN is left out of the layer's count
    assert pct["y_pct"].iloc[:4].tolist() == [87.5, 87.5, 25.0, 50.0]
    assert np.isnan(pct["y_pct"].iloc[4])
    assert pct["y_pct"].iloc[5:].tolist() == pytest.approx([100 / 3, 200 / 3, 100.0])


def test_table_percentiles_match_rank_within_each_layer(stage_outputs):
    table = pd.read_parquet(stage_outputs["output_dir"] / "seed2.parquet")
    for layer in (0, 1):
        rows = table[table["layer"] == layer]
        x = rows["input_bias"].to_numpy()
        expected = np.array([100.0 * np.sum(x <= v) / len(x) for v in x])  # no ties in real weights
        np.testing.assert_allclose(rows["input_bias_pct"], expected)


def test_table_rejects_inputs_of_another_model(stage_inputs, tiny_group):
    universality = pd.read_parquet(stage_inputs["universality"] / "seed1.parquet")
    moments = pd.read_parquet(stage_inputs["collect"] / "seed1" / "moments.parquet")
    weights = statistics.weight_statistics(processed_weights(load_model(str(tiny_group[1]))))
    with pytest.raises(ValueError, match="moments table: its neurons"):
        statistics.neuron_table(
            universality, weights, statistics.activation_statistics(moments.iloc[:-3])
        )
    with pytest.raises(ValueError, match="missing columns pre_kurt"):
        statistics.activation_statistics(moments.drop(columns="pre_kurt"))


# ---------------------------------------------------------------- the comparison


def test_comparison_equals_mannwhitneyu_on_live_neurons(stage_outputs):
    stored = json.loads(stage_outputs["metrics_path"].read_text())
    assert stored == stage_outputs["comparison"]
    assert set(stored["models"]) == {"seed1", "seed2", "seed3"}
    for name in ("seed1", "seed2"):
        table = pd.read_parquet(stage_outputs["output_dir"] / f"{name}.parquet")
        live_universal = PLANTED_UNIVERSAL[name] - PLANTED_DEAD[name]
        keys = list(map(tuple, table[["layer", "index"]].to_numpy()))
        in_u = np.array([k in live_universal for k in keys])
        in_o = np.array(
            [k not in PLANTED_UNIVERSAL[name] and k not in PLANTED_DEAD[name] for k in keys]
        )
        for metric in statistics.METRICS:
            u, o = table.loc[in_u, metric].to_numpy(), table.loc[in_o, metric].to_numpy()
            test = scipy_stats.mannwhitneyu(u, o, alternative="two-sided")
            # rank-biserial from the definition: P(u > o) - P(u < o) over all pairs
            diff = np.sign(u[:, None] - o[None, :])
            entry = stored["models"][name][metric]
            assert entry["n_universal"] == len(live_universal) and entry["n_other"] == in_o.sum()
            assert entry["p_value"] == pytest.approx(test.pvalue, rel=1e-12)
            assert entry["effect_size"] == pytest.approx(diff.mean(), abs=1e-12)
            assert entry["median_universal"] == pytest.approx(np.median(u), rel=1e-12)
            assert entry["median_other"] == pytest.approx(np.median(o), rel=1e-12)
    # no universal neurons: medians of the others only, the rest null (not NaN)
    entry = stored["models"]["seed3"]["kurt"]
    assert entry["n_universal"] == 0 and entry["n_other"] == 2 * 64 - 1
    assert entry["median_universal"] is None and entry["effect_size"] is None
    assert entry["p_value"] is None and entry["median_other"] is not None
    assert "NaN" not in stage_outputs["metrics_path"].read_text()


def test_pooled_findings_by_brute_force_over_the_stage_tables(stage_outputs):
    """results/stats.json's pooled entry of each finding: r = the mean over every (universal,
    other) pair of live neurons of the same model of sign(u - o), in float64 by brute force;
    seed3 (no universal neuron) is left out of the pool; the interval holds r."""
    stored = json.loads(stage_outputs["metrics_path"].read_text())
    tables = {
        name: pd.read_parquet(stage_outputs["output_dir"] / f"{name}.parquet")
        for name in ("seed1", "seed2", "seed3")
    }
    for _, metric, _ in statistics.PAPER_FINDINGS:
        entry = stored["pooled"][metric]
        signs, n_universal = [], 0
        for table in tables.values():
            live = table[~table["dead"]]
            u = live.loc[live["is_universal"], metric].dropna().to_numpy(np.float64)
            o = live.loc[~live["is_universal"], metric].dropna().to_numpy(np.float64)
            signs.append(np.sign(u[:, None] - o[None, :]).ravel())
            n_universal += len(u)
        assert entry["effect_size"] == pytest.approx(np.concatenate(signs).mean(), abs=1e-12)
        assert entry["models"] == ["seed1", "seed2"] and entry["n_universal"] == n_universal
        assert entry["ci_low"] <= entry["effect_size"] <= entry["ci_high"]


def test_findings_headline_counts_the_models_where_each_finding_holds(stage_outputs):
    """metrics/findings.json, against a count by hand from the comparison: a finding holds in
    a model when its effect has the paper's sign and p < stats.alpha (seed3 has no universal
    neuron, so it never counts)."""
    stored = json.loads(stage_outputs["metrics_path"].read_text())
    headline = json.loads(stage_outputs["findings_path"].read_text())
    alpha = tiny_params().stats.alpha
    signs = {"l2_penalty": 1, "input_bias": -1, "skew": 1, "kurt": 1, "sparsity": -1}
    assert set(headline) == set(signs)
    for metric, sign in signs.items():
        by_hand = 0
        for comparison in stored["models"].values():
            effect, p_value = comparison[metric]["effect_size"], comparison[metric]["p_value"]
            by_hand += effect is not None and p_value < alpha and effect * sign > 0
        assert headline[metric] == by_hand
    assert max(headline.values()) >= 1  # the planted universal neurons differ somewhere


def test_compare_groups_planted_separation():
    # universal values all above the others: r = +1; p from scipy's exact test
    result = statistics.compare_groups(
        np.array([10.0, 11.0, 12.0, np.nan]), np.array([1.0, 2.0, 3.0, 4.0])
    )
    assert result["effect_size"] == 1.0 and result["n_universal"] == 3 and result["n_other"] == 4
    assert result["p_value"] == pytest.approx(2 / 35)  # 2 of C(7,3)=35 orderings are this extreme
    assert result["median_universal"] == 11.0 and result["median_other"] == 2.5


# ---------------------------------------------------------------- outputs, plots, CLI


def test_stage_writes_plots_and_csvs(stage_outputs):
    out = stage_outputs["output_dir"]
    for png in ("universal_percentiles.png", "per_layer.png"):
        data = (out / "plots" / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    summary = pd.read_csv(stage_outputs["percentiles_csv"])
    assert summary["metric"].tolist() == list(statistics.METRICS)
    pooled = pd.concat([pd.read_parquet(out / f"seed{s}.parquet") for s in (1, 2, 3)])
    pooled = pooled[pooled["is_universal"] & ~pooled["dead"]]
    assert (
        summary["n_universal"].tolist() == [len(pooled)] * len(statistics.METRICS) == [7 + 6] * 14
    )
    np.testing.assert_allclose(
        summary["median_percentile"], pooled[[f"{m}_pct" for m in statistics.METRICS]].median()
    )
    per_layer = pd.read_csv(out / "per_layer.csv")
    seed1 = pd.read_parquet(out / "seed1.parquet")
    rows = per_layer[
        (per_layer["model"] == "seed1")
        & (per_layer["layer"] == 1)
        & (per_layer["group"] == "universal")
    ]
    expected = seed1[(seed1["layer"] == 1) & seed1["is_universal"] & ~seed1["dead"]]
    assert rows["n"].item() == 4 and rows["skew"].item() == pytest.approx(expected["skew"].median())


def test_letter_values_of_a_known_sample():
    from universal_neurons.outputs.plots import letter_values

    values = np.arange(1.0, 129.0)  # n = 128: depth log2(128) - 3 = 4
    boxes, median, outliers = letter_values(values)
    assert len(boxes) == 4 and median == 64.5
    assert boxes[0] == (np.quantile(values, 0.25), np.quantile(values, 0.75))
    assert boxes[3] == (np.quantile(values, 1 / 32), np.quantile(values, 31 / 32))
    assert outliers.tolist() == [1.0, 2.0, 3.0, 4.0, 125.0, 126.0, 127.0, 128.0]


def _invoke(*args):
    from universal_neurons.pipeline.cli import main

    return CliRunner().invoke(main, list(args))


def test_show_lists_the_top_neurons_of_a_real_table(stage_outputs):
    stats_dir = str(stage_outputs["output_dir"])
    table = pd.read_parquet(stage_outputs["output_dir"] / "seed1.parquet")
    result = _invoke("show", "seed1", "--stats-dir", stats_dir, "--top", "5", "--format", "csv")
    assert result.exit_code == 0, result.output
    listed = pd.read_csv(io.StringIO(result.output))
    # the 5 largest excess correlations, computed here by hand: the live universal neurons lead
    order = np.argsort(-table["excess_corr"].fillna(-np.inf).to_numpy(), kind="stable")[:5]
    assert (
        listed[["layer", "index"]].to_numpy().tolist()
        == table.iloc[order][["layer", "index"]].to_numpy().tolist()
    )
    assert listed["is_universal"].all()
    np.testing.assert_allclose(listed["kurt"], table.iloc[order]["kurt"])

    result = _invoke(
        "show",
        "1",
        "--stats-dir",
        stats_dir,
        "--sort",
        "kurt",
        "--layer",
        "1",
        "--top",
        "3",
        "--ascending",
        "--format",
        "csv",
    )
    assert result.exit_code == 0, result.output
    listed = pd.read_csv(io.StringIO(result.output))
    layer1 = table[table["layer"] == 1]
    assert listed["index"].tolist() == layer1.nsmallest(3, "kurt")["index"].tolist()
    assert (listed["layer"] == 1).all()

    result = _invoke("show", "seed2", "--stats-dir", stats_dir, "--sort", "vocab_var", "--top", "4")
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 6 and lines[0].split()[:3] == ["layer", "index", "is_universal"]
    assert lines[0].split()[-1] == "vocab_var"  # the sort column is never dropped


def test_show_fits_120_columns_unless_wide(stage_outputs):
    """The default table of a real neuron table is at most 120 columns: it keeps the first
    columns of SHOW_COLUMNS and names the dropped ones on its last line; ``--wide`` lists every
    column (wider than 120 on the same table), and the numbers of the kept columns agree."""
    from universal_neurons.outputs.listing import SHOW_COLUMNS
    from universal_neurons.outputs.text_table import TERMINAL_WIDTH

    stats_dir = str(stage_outputs["output_dir"])
    fitted = _invoke("show", "seed1", "--stats-dir", stats_dir).output.rstrip("\n").splitlines()
    wide = _invoke("show", "seed1", "--stats-dir", stats_dir, "--wide").output.splitlines()
    assert max(map(len, fitted)) <= TERMINAL_WIDTH < max(map(len, wide))
    assert wide[0].split() == list(SHOW_COLUMNS) and len(wide) == 21  # header + --top 20
    shown = fitted[0].split()
    assert shown == list(SHOW_COLUMNS[: len(shown)]) and len(shown) >= 8
    dropped = ", ".join(SHOW_COLUMNS[len(shown) :])
    assert fitted[-1] == f"(not shown: {dropped}; --wide shows every column)"
    for short, full in zip(fitted[1:-1], wide[1:], strict=True):
        assert short.split() == full.split()[: len(shown)]


def test_show_errors_name_the_bad_model_or_column(stage_outputs):
    stats_dir = str(stage_outputs["output_dir"])
    result = _invoke("show", "seed9", "--stats-dir", stats_dir)
    assert result.exit_code == 2
    assert "unknown model 'seed9'" in result.output and "seed1, seed2, seed3" in result.output
    result = _invoke("show", "seed1", "--stats-dir", stats_dir, "--sort", "loudness")
    assert result.exit_code == 2 and "--sort: unknown column 'loudness'" in result.output
    result = _invoke("show", "seed1", "--stats-dir", stats_dir, "--layer", "7")
    assert result.exit_code == 2 and "--layer: no layer 7" in result.output


# ---------------------------------------------------------------- the verdict on the paper's findings


def _entry(effect, p, mu=1.0, mo=0.5):
    return {
        "effect_size": effect,
        "p_value": p,
        "median_universal": mu,
        "median_other": mo,
        "n_universal": 5,
        "n_other": 50,
    }


def _planted_findings() -> dict:
    model = {m: _entry(0.5, 1e-4) for m in statistics.METRICS}
    model["input_bias"] = _entry(-0.6, 1e-5, -0.8, -0.2)  # holds: more negative
    model["sparsity"] = _entry(0.3, 1e-3, 0.2, 0.1)  # opposite: fires more often
    model["kurt"] = _entry(0.2, 0.2)  # right sign, not significant
    other = dict(model, kurt=_entry(0.4, 0.01))
    return {"models": {"seed1": model, "seed2": other}}


def test_findings_table_of_planted_metrics():
    text = findings_table(_planted_findings(), 0.05)
    cells = table_cells(text)
    assert cells[0] == ["finding", "seed1", "seed2", "verdict"]
    by_finding = {row[0]: row[1:] for row in cells[1:]}
    assert list(by_finding) == [f"{f} ({m})" for f, m, _ in statistics.PAPER_FINDINGS]
    assert by_finding["larger weight norm (l2_penalty)"] == [
        "holds +0.50",
        "holds +0.50",
        "holds in all 2",
    ]
    assert by_finding["more negative input bias (input_bias)"] == [
        "holds -0.60",
        "holds -0.60",
        "holds in all 2",
    ]
    assert by_finding["higher kurtosis (kurt)"] == [
        "n.s. +0.20",
        "holds +0.40",
        "holds in 1 of 2",
    ]
    assert by_finding["lower activation frequency (sparsity)"] == [
        "opposite +0.30",
        "opposite +0.30",
        "holds in none",
    ]
    assert max(len(line) for line in text.splitlines()) <= 100  # a table, not long lines
    wide = table_cells(findings_table(_planted_findings(), 0.05, width=None))
    assert {row[0]: row[1:] for row in wide[1:]}["higher kurtosis (kurt)"] == [
        "n.s. r=+0.20",
        "holds r=+0.40",
        "holds in 1 of 2",
    ]
    undefined = findings_table(
        {"models": {"seed3": {m: _entry(None, None, None, 0.1) for m in statistics.METRICS}}}, 0.05
    )
    assert [row[1:] for row in table_cells(undefined)[1:]] == [["n/a", "holds in none"]] * 5


@pytest.mark.parametrize("n_models", [5, 12])
def test_findings_table_fits_120_columns(n_models):
    """5 models (the default group: 129 columns with ``holds r=+0.50`` cells) fit in one table
    of at most 120 columns (119: 39 + 5 x 13 + 15); 12 are split into tables of 5, 5 and 2
    models, each at most 120 columns, each repeating the finding and verdict columns, together
    holding every model once, in order. ``width=None`` (``--wide``) stays one table, wider."""
    one = {m: _entry(0.5, 1e-4) for m in statistics.METRICS}
    one.update({metric: _entry(0.5 * sign, 1e-4) for _, metric, sign in statistics.PAPER_FINDINGS})
    stats = {"models": {f"seed{i}": one for i in range(1, n_models + 1)}}
    text = findings_table(stats, 0.05)
    assert max(len(line) for line in text.splitlines()) <= findings.TERMINAL_WIDTH
    tables = text_tables(text)
    assert [len(table[0]) - 2 for table in tables] == ([5] if n_models == 5 else [5, 5, 2])
    models = [name for table in tables for name in table[0][1:-1]]
    assert models == [f"seed{i}" for i in range(1, n_models + 1)]
    for table in tables:
        assert table[0][0] == "finding" and table[0][-1] == "verdict"
        assert table[1][0] == "larger weight norm (l2_penalty)"
        assert table[1][-1] == f"holds in all {n_models}"
        assert set(table[1][1:-1]) == {"holds +0.50"}  # l2_penalty: larger
        assert set(table[2][1:-1]) == {"holds -0.50"}  # input_bias: more negative
    wide = findings_table(stats, 0.05, width=None)
    assert len(text_tables(wide)) == 1
    assert max(len(line) for line in wide.splitlines()) > findings.TERMINAL_WIDTH


def test_findings_verdict_long_form_of_planted_metrics():
    verdict = statistics.findings_verdict(_planted_findings(), alpha=0.05)
    lines = verdict.splitlines()
    assert lines[1].startswith("- larger weight norm (l2_penalty): holds in all models;")
    assert lines[2].startswith("- more negative input bias (input_bias): holds in all models;")
    assert "seed1: median -0.8 vs -0.2, r = -0.6, p = 1e-05" in lines[2]
    assert lines[4].startswith(
        "- higher kurtosis (kurt): holds in 1 of 2 models (not significant: 1);"
    )
    assert lines[5].startswith(
        "- lower activation frequency (sparsity): does not hold in any model (opposite: 2);"
    )
    undefined = statistics.findings_verdict(
        {"models": {"seed3": {m: _entry(None, None, None, 0.1) for m in statistics.METRICS}}}
    )
    assert "does not hold in any model (undefined: 1)" in undefined


def test_findings_cli_reads_the_stage_metrics(stage_outputs, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(json.dumps(tiny_params_dict()))  # JSON is YAML
    metrics_path = stage_outputs["metrics_path"]
    result = _invoke("findings", "--metrics", str(metrics_path), "--params", str(params))
    assert result.exit_code == 0, result.output
    cells = table_cells(result.output)
    assert cells[0] == ["finding", "seed1", "seed2", "seed3", "verdict"]
    assert len(cells) == 1 + len(statistics.PAPER_FINDINGS)
    comparison = json.loads(metrics_path.read_text())["models"]
    alpha = tiny_params().stats.alpha
    for row, (_, metric, sign) in zip(cells[1:], statistics.PAPER_FINDINGS, strict=True):
        for model, cell in zip(cells[0][1:-1], row[1:-1], strict=True):
            entry = comparison[model][metric]
            outcome = statistics.finding_outcome(entry, sign, alpha)
            assert cell.startswith(statistics.OUTCOME_CELLS[outcome]), (model, metric, cell)
            if entry["effect_size"] is not None:
                assert float(cell.split()[-1]) == pytest.approx(entry["effect_size"], abs=0.005)
    # seed3 has no universal neuron (planted): nothing to test, in every row
    assert [row[3] for row in cells[1:]] == ["n/a"] * len(statistics.PAPER_FINDINGS)
    long = _invoke("findings", "--long", "--metrics", str(metrics_path), "--params", str(params))
    assert long.exit_code == 0, long.output
    assert long.output.startswith("Universal vs other live neurons, 3 models;")
    per_model, pooled = long.output.strip().split("\n\n")
    assert len(per_model.splitlines()) == 1 + len(statistics.PAPER_FINDINGS)
    assert pooled.startswith("Pooled over the group")  # the stats stage pools every finding
    assert len(pooled.splitlines()) == 1 + len(statistics.PAPER_FINDINGS)
    assert "seed3: median n/a vs" in long.output


# ---------------------------------------------------------------- the stage under real DVC


@pytest.mark.slow
def test_dvc_repro_runs_the_stats_stage(stage_inputs, tmp_path):
    repo = tmp_path / "repo"
    for part in ("src", "stages", "dvc.yaml", "pyproject.toml"):
        source = REPO_ROOT / part
        (shutil.copytree if source.is_dir() else shutil.copy)(source, repo / part)
    (repo / "params.yaml").write_text(json.dumps(tiny_params_dict(stats={"alpha": 0.05})))
    shutil.copytree(stage_inputs["models"], repo / "models")
    shutil.copytree(stage_inputs["collect"], repo / "data" / "collect")
    shutil.copytree(stage_inputs["universality"], repo / "data" / "universality")
    shutil.copytree(stage_inputs["emergence"], repo / "data" / "emergence")
    bin_dir = Path(sys.executable).parent
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "PYTHONPATH": f"{repo / 'src'}:{repo}",
        "HOME": str(tmp_path),
        "HF_HUB_OFFLINE": "1",
        "DVC_NO_ANALYTICS": "1",
    }

    def run(*cmd):
        done = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    run("git", "init", "-q")
    run(str(bin_dir / "dvc"), "init", "-q")
    run(str(bin_dir / "dvc"), "repro", "--single-item", "validate", "weight_stats", "stats")
    metrics = json.loads((repo / "results" / "stats.json").read_text())
    assert set(metrics["models"]) == {"seed1", "seed2", "seed3"}
    assert (repo / "data" / "stats" / "seed2.parquet").is_file()
    shown = json.loads(run(str(bin_dir / "dvc"), "metrics", "show", "--json"))
    findings = shown[""]["data"]["metrics/findings.json"]["data"]
    assert findings == json.loads((repo / "metrics" / "findings.json").read_text())
    assert set(findings) == {"l2_penalty", "input_bias", "skew", "kurt", "sparsity"}
    status = run(str(bin_dir / "dvc"), "status", "stats")
    assert "changed" not in status
