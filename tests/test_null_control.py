"""The null control of the findings (description/null_control.py, stages/null_control.py): the
selection, the verdict against the null, a planted selection effect that must be flagged,
the null group = the train stage's step-0 weights bitwise, and the stage on a tiny layout."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import torch
from conftest import invoke_command, tiny_params, tiny_params_dict
from safetensors.torch import load_file

from universal_neurons.description.findings import pooled_findings
from universal_neurons.description.null_control import (
    SELECTED_COLUMN,
    against_null,
    null_verdict,
    top_k_selection,
    with_selection,
)
from universal_neurons.description.statistics import PAPER_FINDINGS
from universal_neurons.pipeline.layout import Layout


def test_top_k_selection_takes_the_highest_live_excess_ties_by_layer_and_index():
    table = pd.DataFrame(
        {
            "layer": [0, 0, 0, 1, 1, 1],
            "index": [0, 1, 2, 0, 1, 2],
            "dead": [False, True, False, False, False, False],
            "excess_corr": [0.2, 0.9, 0.5, np.nan, 0.5, 0.1],
        }
    )
    # dead (0.9) and NaN never chosen; the tie at 0.5: layer 0 before layer 1
    assert top_k_selection(table, 1).tolist() == [False, False, True, False, False, False]
    assert top_k_selection(table, 3).tolist() == [True, False, True, False, True, False]
    assert top_k_selection(table, 10).sum() == 4  # only four live neurons with an excess
    assert top_k_selection(table, 0).sum() == 0


def _entry(r: float, p: float, low: float, high: float) -> dict:
    return {"effect_size": r, "p_value": p, "ci_low": low, "ci_high": high}


def test_null_verdict_by_hand():
    """sign -1 (sparsity): signed effects s = -r. Real holds with s in [0.5, 0.8]."""
    real = _entry(-0.65, 1e-4, -0.8, -0.5)
    assert null_verdict(real, _entry(-0.6, 1e-3, -0.7, -0.4), -1, 0.05) == (
        "explained by selection"  # null s in [0.4, 0.7] reaches 0.5
    )
    assert null_verdict(real, _entry(-0.3, 1e-3, -0.45, -0.2), -1, 0.05) == "beyond selection"
    assert null_verdict(real, _entry(-0.6, 0.2, -0.9, 0.1), -1, 0.05) == "beyond selection"
    assert null_verdict(real, None, -1, 0.05) == "no null control"
    assert null_verdict(_entry(-0.65, 0.2, -0.8, 0.1), None, -1, 0.05) == "does not hold"
    assert null_verdict(_entry(0.65, 1e-4, 0.5, 0.8), None, -1, 0.05) == "does not hold"


def _planted_group(rng: np.random.Generator, k: int, real: bool) -> dict[str, pd.DataFrame]:
    """Three models of 400 neurons in which the excess correlation falls with the activation
    frequency (the rotation baseline's bias, planted); the selection takes the k of highest
    excess. Only in a real group do the selected neurons also get a higher kurtosis."""
    tables = {}
    for model in ("seed1", "seed2", "seed3"):
        sparsity = rng.uniform(0.0, 0.5, 400)
        table = pd.DataFrame(
            {
                "layer": np.repeat([0, 1], 200),
                "index": np.tile(np.arange(200), 2),
                "dead": False,
                "excess_corr": 0.4 * (0.5 - sparsity) + rng.normal(0, 0.03, 400),
                "sparsity": sparsity,
                "l2_penalty": rng.normal(1.0, 0.1, 400),
                "input_bias": rng.normal(0.0, 0.1, 400),
                "skew": rng.normal(0.0, 0.1, 400),
                "kurt": rng.normal(3.0, 0.1, 400),
            }
        )
        table = with_selection(table, k)
        if real:
            table.loc[table[SELECTED_COLUMN], "kurt"] += 0.3
        table["is_universal"] = table[SELECTED_COLUMN]
        tables[model] = table
    return tables


def test_a_planted_selection_effect_is_flagged_and_a_real_one_is_not():
    """Sparse neurons get high excess by construction: on the null group the same selection
    makes 'lower activation frequency' hold as strongly as on the real group, so that finding
    is 'explained by selection'; the kurtosis effect, planted in the real group only, is
    'beyond selection'; the unplanted findings do not hold."""
    rng = np.random.default_rng(11)
    real = pooled_findings(_planted_group(rng, 8, True), 0.95, 0, progress=False)
    null_tables = _planted_group(rng, 8, False)
    null = pooled_findings(null_tables, 0.95, 0, selected=SELECTED_COLUMN, progress=False)
    assert null["sparsity"]["effect_size"] < -0.8 and null["sparsity"]["p_value"] < 1e-6
    verdicts = {
        metric: entry["verdict"] for metric, entry in against_null(real, null, 0.05).items()
    }
    assert verdicts["sparsity"] == "explained by selection"
    assert verdicts["kurt"] == "beyond selection"
    assert verdicts["l2_penalty"] == verdicts["skew"] == "does not hold"
    assert against_null(real, None, 0.05)["kurt"]["verdict"] == "no null control"


def test_the_null_group_is_the_train_stages_step_zero_bitwise(
    tiny_tokens_dir, tmp_path, monkeypatch
):
    """The train stage initialises each seed with ``training.init_model``; the weights it
    started from (copied the moment they are made, before any step) equal, bit for bit, the
    weights of the null stage's untrained model of that seed."""
    from stages import null_measures, train
    from universal_neurons.models import training

    started = {}
    real_init = training.init_model

    def recording_init(config, seed):
        model = real_init(config, seed)
        started[seed] = {name: value.detach().clone() for name, value in model.state_dict().items()}
        return model

    monkeypatch.setattr(training, "init_model", recording_init)
    params = tiny_params(train={"seeds": [1, 2], "tokens_per_model": 1024, "checkpoint_tokens": []})
    for seed in (1, 2):
        train.train_seed(params, seed, tiny_tokens_dir, tmp_path / "trained" / f"seed{seed}")
    layout = Layout.at(tmp_path, tokens=tiny_tokens_dir)
    null_measures.untrained_models(params, layout, tmp_path / "null")
    for seed in (1, 2):
        saved = load_file(tmp_path / "null" / f"seed{seed}" / "model.safetensors")
        assert saved and set(saved) <= set(started[seed])
        for name, value in saved.items():
            assert torch.equal(value, started[seed][name]), (seed, name)
    weight = "transformer.h.0.mlp.c_fc.weight"
    assert not torch.equal(started[1][weight], started[2][weight])  # the seed decides


PLANTED_K = {"seed1": 3, "seed2": 0, "seed3": 5}


def _workspace(root, tokens_dir, params) -> Layout:
    """A tiny layout: the token set, universality tables with PLANTED_K universal neurons, and
    a stats result whose pooled 'lower activation frequency' holds strongly."""
    layout = Layout.at(root, tokens=tokens_dir)
    layout.stage_dir("universality").mkdir(parents=True)
    n = params.model.n_layers * params.model.d_mlp
    for name, k in PLANTED_K.items():
        pd.DataFrame(
            {
                "layer": np.repeat(np.arange(params.model.n_layers), params.model.d_mlp),
                "index": np.tile(np.arange(params.model.d_mlp), params.model.n_layers),
                "dead": np.r_[np.zeros(n - 1, bool), True],  # a dead neuron never counts
                "is_universal": np.r_[np.ones(k, bool), np.zeros(n - k - 1, bool), True],
            }
        ).to_parquet(layout.table("universality", name))
    pooled = {
        metric: _entry(0.7 * sign, 1e-5, *sorted((0.5 * sign, 0.9 * sign)))
        for _, metric, sign in PAPER_FINDINGS
    }
    layout.results.mkdir(parents=True)
    layout.result("stats.json").write_text(json.dumps({"models": {}, "pooled": pooled}))
    return layout


def test_stage_on_a_tiny_layout(tiny_tokens_dir, tmp_path, monkeypatch):
    """The stage on 3 untrained tiny models and 40 sequences: per model K = the real model's
    live universal count neurons selected, the top K of the null table's excess; the verdicts
    follow from the stored pooled entries; kept positions = those of the first 40 sequences.
    With null_group none (through the command line) it writes 'not run'. The measurement
    (null_measures) has no threshold: a new τ changes only null_control's own selection."""
    from stages import null_control, null_measures
    from universal_neurons.matching.activations import load_analysis_set

    params = tiny_params(uncertainty={"null_max_sequences": 40})
    layout = _workspace(tmp_path, tiny_tokens_dir, params)
    null_measures.run(params, layout)
    result = null_control.run(params, layout)
    stored = json.loads(layout.result("null_control.json").read_text())
    assert stored["run"] is True and stored["sequences"] == 40
    tokens, _, kept = load_analysis_set(tiny_tokens_dir, null_params_of(params, 40).analysis)
    assert len(tokens) == 40 and stored["kept_positions"] == kept
    for name, k in PLANTED_K.items():
        table = pd.read_parquet(layout.stage_dir("null_control") / f"{name}.parquet")
        assert len(table) == params.model.n_layers * params.model.d_mlp
        assert int(table[SELECTED_COLUMN].sum()) == k == stored["models"][name]["k"]
        live = table[~table["dead"]].sort_values("excess_corr", ascending=False)
        assert set(live.index[:k]) == set(table.index[table[SELECTED_COLUMN]])
        own = int((table["is_universal"] & ~table["dead"]).sum())
        assert stored["models"][name]["n_universal_own"] == own
        assert np.allclose(table["input_bias"], 0.0)  # GPT-2 starts with zero biases
    for _, metric, sign in PAPER_FINDINGS:
        entry = stored["against_null"][metric]
        real = json.loads(layout.result("stats.json").read_text())["pooled"][metric]
        expected = null_verdict(real, stored["pooled"][metric], sign, params.stats.alpha)
        assert entry["verdict"] == expected
    assert result["against_null"] == stored["against_null"]
    _check_null_moments(params, layout, tokens, tmp_path / "again")
    assert stored["pooled"]["input_bias"]["p_value"] is None  # all-zero biases: no test
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(
        json.dumps(tiny_params_dict(uncertainty={"null_group": "none"}))
    )
    for stage in ("null_measures", "null_control"):
        outcome = invoke_command([stage, "--params", "params.yaml"])
        assert outcome.exit_code == 0, outcome.output
    assert json.loads((tmp_path / "results" / "null_control.json").read_text()) == {
        "run": False,
        "reason": "uncertainty.null_group is none",
    }


def _check_null_moments(params, layout, tokens, scratch) -> None:
    """The null table's pre-activation mean, variance and sparsity of seed1 equal a float64
    reference over the kept positions, from the bridge's own (unfused) forward pass."""
    from stages import null_measures
    from universal_neurons.matching.activations import excluded_token_ids, kept_mask
    from universal_neurons.models.loading import capture_mlp
    from universal_neurons.text.tokens import load_tokenizer

    model = null_measures.untrained_models(params, layout, scratch)["seed1"]
    excluded = excluded_token_ids(load_tokenizer(layout.tokens), params.analysis)
    with torch.no_grad():
        pre = capture_mlp(model, torch.as_tensor(tokens.astype(np.int64)), ("pre",), fused=False)
    kept = pre["pre"][:, kept_mask(tokens, excluded)].double().numpy()  # [layers, kept, d_mlp]
    values = kept.transpose(0, 2, 1).reshape(-1, kept.shape[1])  # [neurons, kept]
    table = pd.read_parquet(layout.stage_dir("null_control") / "seed1.parquet")
    assert np.allclose(table["mean"], values.mean(axis=1), rtol=1e-4, atol=1e-6)
    assert np.allclose(table["var"], values.var(axis=1), rtol=1e-3, atol=1e-7)
    assert np.allclose(table["sparsity"], (values > 0).mean(axis=1), atol=1e-3)


def null_params_of(params, n):
    """``params`` with the analysis set cut to ``n`` sequences (what the stage measures)."""
    return params.model_copy(
        update={"analysis": params.analysis.model_copy(update={"max_sequences": n})}
    )
