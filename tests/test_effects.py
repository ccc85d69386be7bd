"""The effects stage: batched ablation against plain Hugging Face forward passes, planted
roles (zero output, entropy, attention (de)activation, a permuted copy), matched controls,
and the stage on a tiny repository layout."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_params
from transformers import GPT2LMHeadModel

from universal_neurons.config import EffectsConfig, FamiliesConfig
from universal_neurons.description.ablation import Ablation, effect_correlation, measure_ablations
from universal_neurons.description.effects import add_group_columns, model_roles
from universal_neurons.description.roles import draw_controls, layer_deciles, null_fractions
from universal_neurons.matching.activations import excluded_token_ids
from universal_neurons.models.loading import capture_mlp, load_model
from universal_neurons.models.tail import _BridgeForward, attention_context, forward_for
from universal_neurons.text.tokens import load_tokenizer, load_tokens

SEQUENCES = 12


@pytest.fixture(scope="module")
def heldout(tiny_tokens_dir) -> tuple[np.ndarray, np.ndarray]:
    """The first held-out sequences of the tiny token set and the excluded token ids."""
    tokens = np.asarray(load_tokens(tiny_tokens_dir, "heldout")[:SEQUENCES], dtype=np.int64)
    excluded = excluded_token_ids(load_tokenizer(tiny_tokens_dir), tiny_params().analysis)
    return tokens, excluded


def _measure(model_dir, tokens, excluded, ablations, dtype=torch.float64, bridge=False):
    """Effects of ``ablations`` in the model of ``model_dir`` (2 per pass, 5 sequences per
    batch: several chunks and batches)."""
    model = load_model(str(model_dir), dtype=dtype)
    probe = torch.as_tensor(tokens[:2])
    forward = _BridgeForward(model) if bridge else forward_for(model, probe)
    w_out = model.W_out.detach()
    return measure_ablations(forward, w_out, tokens, excluded, ablations, 5, 2, progress=False)


def _hf_log_probs(model_dir, tokens, kept, ablation=None) -> torch.Tensor:
    """Plain Hugging Face float64 next-token log-probabilities ``[batch, pos-1, vocab]``, the
    neuron of ``ablation`` set to its value at the kept positions by a forward hook."""
    model = GPT2LMHeadModel.from_pretrained(str(model_dir), dtype=torch.float64).eval()
    handle = None
    if ablation is not None:

        def hook(module, inputs, output):
            output = output.clone()
            value = torch.tensor(ablation.value, dtype=output.dtype)
            output[..., ablation.index] = torch.where(kept, value, output[..., ablation.index])
            return output

        handle = model.transformer.h[ablation.layer].mlp.act.register_forward_hook(hook)
    with torch.no_grad():
        logp = model(torch.as_tensor(tokens)).logits[:, :-1].log_softmax(-1)
    if handle is not None:
        handle.remove()
    return logp


def _post_mean(model_dir, tokens, layer: int, index: int) -> float:
    """The neuron's mean post-activation over the token set (the mean-ablation value)."""
    model = load_model(str(model_dir))
    return float(capture_mlp(model, torch.as_tensor(tokens))["post"][layer, ..., index].mean())


@pytest.mark.parametrize("bridge", [False, True], ids=["fused", "bridge_hooks"])
def test_mean_ablation_matches_a_hugging_face_forward_hook(tiny_group, heldout, bridge):
    tokens, excluded = heldout
    model_dir = tiny_group[1]
    ablations = [
        Ablation(layer, index, _post_mean(model_dir, tokens, layer, index))
        for layer, index in [(0, 3), (0, 40), (1, 7), (1, 63), (0, 11)]
    ]
    effects = _measure(model_dir, tokens, excluded, ablations, bridge=bridge)
    kept = ~torch.isin(torch.as_tensor(tokens), torch.as_tensor(excluded))
    mask, target = kept[:, :-1], torch.as_tensor(tokens)[:, 1:, None]
    logp = _hf_log_probs(model_dir, tokens, kept)
    for ablation, effect in zip(ablations, effects, strict=True):
        logq = _hf_log_probs(model_dir, tokens, kept, ablation)
        loss = (logp.gather(-1, target) - logq.gather(-1, target))[..., 0][mask]
        kl = (logp.exp() * (logp - logq)).sum(-1)[mask]
        entropy = ((logp.exp() * logp).sum(-1) - (logq.exp() * logq).sum(-1))[mask]
        assert abs(effect.delta_loss - float(loss.mean())) < 1e-5
        assert abs(effect.kl - float(kl.mean())) < 1e-5
        assert abs(effect.delta_entropy - float(entropy.mean())) < 1e-5
        assert np.abs(effect.per_token - loss.numpy()).max() < 1e-5
        token_delta = (logq - logp)[mask].mean(0).numpy()
        assert np.abs(effect.token_delta - token_delta).max() < 1e-5
        assert effect.kl > 0 and (ablation.layer == 1) == (effect.downstream_neurons == {})


def _saved_copy(model_dir, directory, change) -> str:
    """A copy of the Hugging Face model in ``model_dir`` with ``change(model)`` applied,
    saved in ``directory``."""
    model = GPT2LMHeadModel.from_pretrained(str(model_dir)).eval()
    with torch.no_grad():
        change(model)
    model.save_pretrained(directory)
    return str(directory)


def test_a_neuron_without_output_weights_changes_nothing(tiny_group, heldout, tmp_path):
    tokens, excluded = heldout

    def silence(model):
        model.transformer.h[0].mlp.c_proj.weight[5] = 0.0

    model_dir = _saved_copy(tiny_group[1], tmp_path / "silent", silence)
    (effect,) = _measure(model_dir, tokens, excluded, [Ablation(0, 5, 3.0)])
    assert abs(effect.delta_loss) < 1e-12 and abs(effect.kl) < 1e-12
    assert abs(effect.delta_entropy) < 1e-12 and np.abs(effect.token_delta).max() < 1e-12
    assert np.abs(effect.downstream_neurons[1]).max() < 1e-12
    assert np.abs(effect.downstream_heads[1]).max() < 1e-12
    assert np.abs(effect.per_token).max() < 1e-12


def _roles(model_dir, tokens, excluded, config: EffectsConfig) -> pd.DataFrame:
    """Every neuron's weight-based role, with made-up vocabulary statistics (no prediction or
    suppression role) and the real activation moments."""
    model = load_model(str(model_dir))
    post = capture_mlp(model, torch.as_tensor(tokens))["post"]  # [layers, b, p, d_mlp]
    n_layers, d_mlp = post.shape[0], post.shape[-1]
    layer, index = np.divmod(np.arange(n_layers * d_mlp), d_mlp)
    flat = post.reshape(n_layers, -1, d_mlp)
    moments = pd.DataFrame(
        {
            "layer": layer,
            "index": index,
            "post_mean": flat.mean(1).reshape(-1).double().numpy(),
            "post_var": flat.var(1).reshape(-1).double().numpy(),
        }
    )
    stats = pd.DataFrame(
        {
            "layer": layer,
            "index": index,
            "w_out_norm": model.W_out.detach().norm(dim=-1).reshape(-1).numpy(),
            "vocab_kurt": 3.0,
            "vocab_skew": 0.0,
            "vocab_var": 0.0,
        }
    )
    first = torch.as_tensor(tokens)
    return model_roles(model, stats, moments, first, excluded, config, FamiliesConfig()), moments


def test_a_planted_entropy_neuron_is_found_and_its_ablation_lowers_entropy(
    tiny_group, heldout, tmp_path
):
    tokens, excluded = heldout
    rng = np.random.default_rng(0)
    direction = torch.as_tensor(rng.standard_normal(32), dtype=torch.float32)
    direction -= direction.mean()  # orthogonal to the all-ones direction LayerNorm removes
    direction /= direction.norm()

    def plant(model):
        model.transformer.ln_f.weight[:] = 1.0
        model.transformer.ln_f.bias[:] = 0.0
        embedding = model.transformer.wte.weight  # tied with the unembedding
        embedding -= (embedding @ direction)[:, None] * direction[None, :]
        model.transformer.h[1].mlp.c_proj.weight[9] = 40.0 * direction

    model_dir = _saved_copy(tiny_group[1], tmp_path / "entropy", plant)
    config = EffectsConfig(null_space_dims=2)
    roles, moments = _roles(model_dir, tokens, excluded, config)
    planted = roles.set_index(["layer", "index"]).loc[(1, 9)]
    assert planted["null_fraction"] > 0.999 and planted["role"] == "entropy"
    assert (roles["role"] == "entropy").sum() == 1
    mean = float(moments.set_index(["layer", "index"]).loc[(1, 9), "post_mean"])
    (effect,) = _measure(model_dir, tokens, excluded, [Ablation(1, 9, mean)])
    assert effect.delta_entropy < 0  # the predicted direction (roles module docstring)


@pytest.mark.parametrize("sign", [1.0, -1.0], ids=["deactivation", "activation"])
def test_a_planted_attention_neuron_is_found_with_its_head_and_sign(
    tiny_group, heldout, tmp_path, sign
):
    tokens, excluded = heldout
    bridge = load_model(str(tiny_group[1]))
    kept = ~torch.isin(torch.as_tensor(tokens), torch.as_tensor(excluded))
    context = attention_context(bridge, torch.as_tensor(tokens), kept)
    head = 1
    # what each layer-1 head's logit to position 0 reads from the residual, centred (LayerNorm
    # removes the mean): [heads, d_model]
    reads = torch.einsum("hdk,hk->hd", bridge.W_Q[1].detach(), context["key_first"][1])
    reads = reads - reads.mean(dim=1, keepdim=True)
    # the planted direction moves only `head`'s logit: its read, minus its projection on the
    # other heads' reads (whichever head reads most strongly in the trained model)
    others = torch.linalg.qr(torch.cat([reads[:head], reads[head + 1 :]]).T).Q  # [d_model, h-1]
    reads = reads[head] - others @ (others.T @ reads[head])
    reads = reads / reads.norm()

    def plant(model):
        model.transformer.h[0].mlp.c_proj.weight[20] = sign * 30.0 * reads

    model_dir = _saved_copy(tiny_group[1], tmp_path / f"attention{sign}", plant)
    roles, moments = _roles(model_dir, tokens, excluded, EffectsConfig(attention_score=0.1))
    planted = roles.set_index(["layer", "index"]).loc[(0, 20)]
    layer0 = roles[roles["layer"] == 0]
    assert abs(planted["attention_score"]) == layer0["attention_score"].abs().max()
    expected = "attention_deactivation" if sign > 0 else "attention_activation"
    assert planted["role"] == expected, planted.to_dict()
    assert (planted["attention_layer"], planted["attention_head"]) == (1, head)
    assert np.sign(planted["attention_score"]) == sign and abs(planted["attention_score"]) > 0.1
    mean = float(moments.set_index(["layer", "index"]).loc[(0, 20), "post_mean"])
    (effect,) = _measure(model_dir, tokens, excluded, [Ablation(0, 20, mean)])
    assert int(np.abs(effect.downstream_heads[1]).argmax()) == head


def test_a_permuted_copy_has_the_same_effect_and_partner_corr_one(tiny_group, heldout, tmp_path):
    tokens, excluded = heldout
    permutation = torch.as_tensor(np.random.default_rng(1).permutation(64))

    def permute(model):
        mlp = model.transformer.h[0].mlp
        mlp.c_fc.weight[:] = mlp.c_fc.weight[:, permutation].clone()
        mlp.c_fc.bias[:] = mlp.c_fc.bias[permutation].clone()
        mlp.c_proj.weight[:] = mlp.c_proj.weight[permutation].clone()

    copy_dir = _saved_copy(tiny_group[1], tmp_path / "permuted", permute)
    moved = int((permutation == 17).nonzero()[0, 0])  # neuron 17 of the original, here
    (original,) = _measure(tiny_group[1], tokens, excluded, [Ablation(0, 17, 0.0)])
    (copied,) = _measure(copy_dir, tokens, excluded, [Ablation(0, moved, 0.0)])
    assert abs(original.delta_loss - copied.delta_loss) < 1e-9
    assert effect_correlation(original.per_token, copied.per_token) > 1 - 1e-9
    rows = {"kind": "universal", "of": "", "layer": 0, "index": 17, "role": "none"}
    tables = {
        "seed1": pd.DataFrame([{**rows, "delta_loss": original.delta_loss}]),
        "seed9": pd.DataFrame(
            [{**rows, "kind": "partner", "of": "seed1:0.17", "index": moved, "delta_loss": 0.0}]
        ),
    }
    per_token = {("seed1", 0, 17): original.per_token, ("seed9", 0, moved): copied.per_token}
    universal = add_group_columns(tables, per_token)["seed1"].iloc[0]
    assert universal["partner_effect_corr"] == pytest.approx(1.0, abs=1e-9)
    assert universal["partner_same_role"] == 1.0


def test_null_fraction_matches_a_numpy_svd():
    rng = np.random.default_rng(3)
    w_u, w_out = rng.standard_normal((16, 50)), rng.standard_normal((2, 7, 16))
    centred = w_u - w_u.mean(1, keepdims=True)
    left = np.linalg.svd(centred)[0][:, -3:]
    expected = ((w_out @ left) ** 2).sum(-1) / (w_out**2).sum(-1)
    got = null_fractions(torch.as_tensor(w_out), torch.as_tensor(w_u), 3)
    np.testing.assert_allclose(got, expected, rtol=1e-10)


def _control_stats() -> pd.DataFrame:
    """Two layers of 40 neurons: sparsity and output norm rising with the index, so that the
    deciles are the index // 4; neuron 0.5 and 1.0 universal, 0.6 dead."""
    index = np.tile(np.arange(40), 2)
    layer = np.repeat([0, 1], 40)
    stats = pd.DataFrame(
        {"layer": layer, "index": index, "sparsity": index / 40.0, "w_out_norm": index + 1.0}
    )
    stats["is_universal"] = [
        (lay, i) in {(0, 5), (1, 0)} for lay, i in zip(layer, index, strict=True)
    ]
    stats["dead"] = [(lay, i) == (0, 6) for lay, i in zip(layer, index, strict=True)]
    return stats


def test_controls_share_the_deciles_are_deterministic_and_widen_when_needed():
    stats = _control_stats()
    assert (
        list(layer_deciles(stats["sparsity"], stats["layer"])[:12]) == [0] * 4 + [1] * 4 + [2] * 4
    )
    controls = draw_controls(stats, [(0, 5), (1, 0)], 2, seed=0)
    again = draw_controls(stats, [(0, 5), (1, 0)], 2, seed=0)
    pd.testing.assert_frame_equal(controls, again)
    first = controls[controls["of_index"] == 5]
    assert set(first["index"]) == {4, 7} and list(first["widening"]) == [0, 0]  # 6 is dead
    second = controls[controls["of_layer"] == 1]  # cell {0..3} minus the universal 0: 3 left
    assert set(second["index"]) <= {1, 2, 3} and len(second) == 2
    third = draw_controls(stats, [(1, 0)], 5, seed=0)  # needs the neighbouring decile
    assert list(third["widening"]) == [1] * 5 and set(third["index"]) <= set(range(1, 8))


def _effects_layout(tmp_path, name, tiny_analysis, tiny_group, tiny_tokens_dir):
    """A workspace named ``name`` with the tiny group's collect, correlate, baseline and
    weight statistics."""
    from universal_neurons.pipeline.layout import Layout

    data = tmp_path / name / "data"
    data.mkdir(parents=True)
    for stage in ("collect", "correlate", "baseline", "weight_stats"):
        (data / stage).symlink_to(tiny_analysis / stage)
    return Layout.at(tmp_path / name, tokens=tiny_tokens_dir, models=tiny_group[1].parent)


def _excess(tiny_analysis, seed: int) -> pd.Series:
    """``excess_corr`` of every neuron of ``seed`` by ``(layer, index)`` (τ-free)."""
    table = pd.read_parquet(tiny_analysis / "universality" / f"seed{seed}.parquet")
    return table.set_index(["layer", "index"])["excess_corr"]


def _keys(table: pd.DataFrame, kind: str) -> set[tuple[int, int]]:
    rows = table[table["kind"] == kind]
    return set(zip(rows["layer"].astype(int), rows["index"].astype(int), strict=True))


@pytest.mark.slow
def test_the_stages_measure_the_candidates_and_select_the_universal_neurons(
    tiny_analysis, tiny_group, tiny_tokens_dir, tmp_path
):
    """effects_candidates ablates every neuron above the candidate threshold (and its controls,
    none a candidate, and partners); effects keeps the universal neurons' rows. Those rows are
    the ones a run with the candidates at τ itself measures: τ only selects."""
    from stages import effects, effects_candidates
    from stages.stats import candidate_tables

    pooled = pd.concat([_excess(tiny_analysis, seed) for seed in tiny_group])
    low, high = (float(pooled.quantile(q)) for q in (0.93, 0.98))
    assert 0 < low < high  # a few candidates per model, fewer universal neurons
    config = {"effects": {"max_sequences": 6, "batch_size": 4, "controls": 2}}
    wide = tiny_params(**config, universality={"threshold": high, "candidate_threshold": low})
    exact = tiny_params(**config, universality={"threshold": high, "candidate_threshold": high})
    runs = {}
    for name, params in (("wide", wide), ("exact", exact)):
        layout = _effects_layout(tmp_path, name, tiny_analysis, tiny_group, tiny_tokens_dir)
        counts = effects_candidates.run(params, layout, progress=False)
        (layout.data / "stats").mkdir()
        for model, table in candidate_tables(exact, layout).items():  # universal: above high
            table.to_parquet(layout.table("stats", model))
        runs[name] = (layout, counts, effects.run(params, layout))
    layout, counts, summary = runs["wide"]
    for seed in tiny_group:
        excess = _excess(tiny_analysis, seed)
        candidates = pd.read_parquet(layout.table("effects_candidates", f"seed{seed}"))
        assert _keys(candidates, "candidate") == set(excess[excess > low].index)
        assert counts[f"seed{seed}"]["candidate"] == (excess > low).sum()
        controls = candidates[candidates["kind"] == "control"]
        control_keys = pd.MultiIndex.from_tuples(sorted(_keys(candidates, "control")))
        assert len(control_keys) and (excess.reindex(control_keys).fillna(0) <= low).all()
        assert all(
            of.split(":")[1].startswith(f"{layer}.")
            for of, layer in zip(controls["of"], controls["layer"], strict=True)
        )
        selected = pd.read_parquet(layout.table("effects", f"seed{seed}"))
        assert _keys(selected, "universal") == set(excess[excess > high].index)
        mine = {f"seed{seed}:{layer}.{index}" for layer, index in excess[excess > high].index}
        others = {  # the universal neurons of the other models, whose partners are here
            f"seed{s}:{layer}.{index}"
            for s in tiny_group
            if s != seed
            for layer, index in _excess(tiny_analysis, s)[_excess(tiny_analysis, s) > high].index
        }
        assert set(selected.query("kind == 'control'")["of"]) == mine
        assert set(selected.query("kind == 'partner'")["of"]) == others
        alone = pd.read_parquet(runs["exact"][0].table("effects", f"seed{seed}"))
        for kind in ("universal", "partner"):
            mine = selected[selected["kind"] == kind].sort_values(["of", "layer", "index"])
            theirs = alone[alone["kind"] == kind].sort_values(["of", "layer", "index"])
            columns = ["delta_loss", "kl", "delta_entropy", "partner_effect_corr"]
            np.testing.assert_allclose(mine[columns], theirs[columns], rtol=1e-5, atol=1e-7)
            assert list(mine["role"]) == list(theirs["role"])
    assert summary["group"]["universal"] == sum(
        (_excess(tiny_analysis, s) > high).sum() for s in tiny_group
    )
    headline = json.loads(layout.metric("effects.json").read_text())
    assert headline["median_delta_loss_universal"] == pytest.approx(
        float(pd.concat(_tables(layout)).query("kind == 'universal'")["delta_loss"].median())
    )
    assert (layout.stage_dir("effects") / "effects.png").stat().st_size > 1000
    universal = pd.read_parquet(layout.table("effects", "seed1")).query("kind == 'universal'")
    row = universal.iloc[0]
    inputs = effects_candidates.model_inputs(wide, layout, 1, None)
    ablation = Ablation(int(row["layer"]), int(row["index"]), _stage_mean(tiny_analysis, row))
    (effect,) = _measure(tiny_group[1], inputs.tokens, inputs.excluded, [ablation])
    assert row["delta_loss"] == pytest.approx(effect.delta_loss, abs=1e-5)
    assert len(json.loads(row["top_tokens"])) == wide.effects.top_tokens
    _check_views(layout, summary, row)


@pytest.mark.slow
def test_a_universal_neuron_that_was_not_a_candidate_stops_the_effects_stage(
    tiny_analysis, tiny_group, tiny_tokens_dir, tmp_path
):
    """Candidates ablated at a higher threshold than the stats tables' τ: the stage names a
    universal neuron it has no rows for instead of leaving it out."""
    from stages import effects, effects_candidates
    from stages.stats import candidate_tables
    from universal_neurons.description.effects import EffectsError

    pooled = pd.concat([_excess(tiny_analysis, seed) for seed in tiny_group])
    low, high = (float(pooled.quantile(q)) for q in (0.9, 0.98))
    config = {"effects": {"max_sequences": 2, "batch_size": 2, "controls": 1}}
    high_params = tiny_params(
        **config, universality={"threshold": high, "candidate_threshold": high}
    )
    low_params = tiny_params(**config, universality={"threshold": low, "candidate_threshold": low})
    layout = _effects_layout(tmp_path, "stale", tiny_analysis, tiny_group, tiny_tokens_dir)
    effects_candidates.run(high_params, layout, progress=False)
    (layout.data / "stats").mkdir()
    for model, table in candidate_tables(low_params, layout).items():
        table.to_parquet(layout.table("stats", model))
    with pytest.raises(
        EffectsError,
        match=r"seed\d neuron \d+\.\d+ is universal but was not "
        r"ablated as a candidate .*dvc repro effects_candidates",
    ):
        effects.run(low_params, layout)
    assert not layout.stage_dir("effects").exists()


def _check_views(layout, summary: dict, row: pd.Series) -> None:
    """The report's summary rows and the terminal view show the stage's numbers."""
    from universal_neurons.description.effects import effects_summary_rows
    from universal_neurons.description.neuron_profile import NeuronSources
    from universal_neurons.outputs.neuron_view import effects_lines

    rows = effects_summary_rows(summary)
    assert {(r["model"], r["layer"]) for r in rows} == {
        (f"seed{s}", layer) for s in (1, 2, 3) for layer in (0, 1)
    }
    path = layout.stage_dir("effects") / "seed1.parquet"
    sources = NeuronSources("seed1", path, path, path, path, path, path, effects_table=path)
    lines = effects_lines(sources, int(row["layer"]), int(row["index"]))
    assert any(f"Δloss {row['delta_loss']:+.5f}" in line for line in lines)
    assert lines[1].strip().startswith("measured as: universal")
    assert sum("Δloss" in line for line in lines) == 1  # shown once, however it was measured
    assert max(map(len, lines)) <= 120  # long lists (tokens moved most) wrap


def _tables(layout) -> list[pd.DataFrame]:
    """Every effects table the stage wrote."""
    return [pd.read_parquet(path) for path in sorted(layout.stage_dir("effects").glob("*.parquet"))]


def _stage_mean(tiny_analysis, row) -> float:
    """Collect's post-activation mean of the neuron of ``row`` of seed1 (the stage's value)."""
    moments = pd.read_parquet(tiny_analysis / "collect" / "seed1" / "moments.parquet")
    key = (int(row["layer"]), int(row["index"]))
    return float(moments.set_index(["layer", "index"]).loc[key, "post_mean"])


def test_moved_tokens_are_ranked_beyond_the_shift_of_the_normaliser():
    """An ablation that raises one token's logit by 0.5 and leaves the rest: every other
    token's log-probability falls by the same log-normaliser shift; the moved tokens are the
    raised one, then the lowered ones (ties by id), with the change relative to that shift."""
    from universal_neurons.description.ablation import top_changes
    from universal_neurons.description.effects import relative_changes

    logits = np.log(np.full(6, 1 / 6))
    after = logits.copy()
    after[4] += 0.5
    delta = (after - np.logaddexp.reduce(after)) - (logits - np.logaddexp.reduce(logits))
    relative = relative_changes(delta)
    np.testing.assert_allclose(relative, np.where(np.arange(6) == 4, 0.5, 0.0), atol=1e-12)
    assert top_changes(relative, 2) == [[4, pytest.approx(0.5)], [0, pytest.approx(0.0)]]
    assert top_changes(delta, 1)[0][0] == 4  # raw changes: the shift alone would tie the rest


def test_a_group_without_universal_neurons_gets_empty_summaries(tmp_path):
    """No universal neuron in any model (a high τ, a small group): the summary, headline,
    per-layer table and figure are written with nothing in them instead of a KeyError."""
    from universal_neurons.config import EffectsConfig
    from universal_neurons.description.effects import (
        effects_summary,
        headline_metrics,
        per_layer_table,
        with_summary_columns,
    )
    from universal_neurons.outputs.effects_plot import plot_effects

    tables = {name: with_summary_columns(pd.DataFrame()) for name in ("seed1", "seed2")}
    summary = effects_summary(tables, EffectsConfig())
    assert summary["group"]["universal"] == 0 and summary["models"]["seed1"]["layers"] == {}
    assert headline_metrics(summary)["median_delta_loss_universal"] is None
    assert len(per_layer_table(tables)) == 0
    assert plot_effects(tables, tmp_path / "effects.png").is_file()
