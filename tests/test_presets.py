"""The PolyPythia presets (issue 22): generated pipelines, fetch refetched at every repro (a
real DVC run shows what that keeps cached), and the plan's per-preset cost."""

from __future__ import annotations

import sys
import textwrap

import pytest
import yaml
from conftest import REPO_ROOT, invoke_command
from pipeline_repo import pipeline_env, run

from universal_neurons.matching.plan import GroupShape, Rates
from universal_neurons.matching.preset_plan import ALL_PRESET_SHAPES as PRESET_SHAPES
from universal_neurons.matching.preset_plan import preset_cost, preset_costs
from universal_neurons.models.group import PRESETS

sys.path.insert(0, str(REPO_ROOT / "scripts"))
import pipelines  # noqa: E402


@pytest.mark.parametrize("preset", sorted(pipelines.POLYPYTHIA))
def test_generated_presets_are_current_and_refetch(preset):
    folder = REPO_ROOT / "pipelines" / preset
    for path, text in pipelines.expected_files(folder).items():
        assert path.read_text() == text, f"{path}: run python scripts/pipelines.py"
    stages = yaml.safe_load((folder / "dvc.preset.yaml").read_text())["stages"]
    assert stages["fetch"]["do"]["always_changed"] is True
    assert all("always_changed" not in entry for name, entry in stages.items() if name != "fetch")
    params = yaml.safe_load((folder / "params.yaml").read_text())
    assert params["train"]["seeds"] == list(range(1, len(PRESETS[preset]) + 1))
    assert f"{PRESETS[preset][0].split('/')[1]} --local-dir" in (folder / "params.yaml").read_text()


def test_every_preset_pipeline_refetches():
    for folder in pipelines.presets():
        stages = yaml.safe_load((folder / "dvc.preset.yaml").read_text())["stages"]
        assert stages["fetch"]["do"]["always_changed"] is True, folder


TOY = """\
stages:
  fetch:
    cmd: python -c "import shutil; shutil.copytree('checkpoint', 'model')"
    outs:
      - model
    {always}
  analyse:
    cmd: python -c "import pathlib; t = pathlib.Path('model/w.txt').read_text();
      pathlib.Path('result.txt').write_text(t); open('runs.log', 'a').write('run\\n')"
    deps:
      - model
    outs:
      - result.txt
"""


def _toy_repo(tmp_path, always: bool):
    """A git + DVC repository: ``fetch`` copies a local ``checkpoint/`` (as the fetch stage
    copies a local model directory) and ``analyse`` reads the copy."""
    repo = tmp_path / ("always" if always else "plain")
    (repo / "checkpoint").mkdir(parents=True)
    (repo / "checkpoint" / "w.txt").write_text("weights 1")
    entry = "always_changed: true" if always else ""
    (repo / "dvc.yaml").write_text(TOY.format(always=entry))
    (repo / ".gitignore").write_text("runs.log\n")
    env = pipeline_env(repo)
    run(repo, "git", "init", "-q", env=env)
    run(repo, sys.executable, "-m", "dvc", "init", "-q", env=env)
    run(repo, sys.executable, "-m", "dvc", "config", "core.autostage", "false", env=env)
    return repo, env


def _repro(repo, env) -> str:
    return run(repo, sys.executable, "-m", "dvc", "repro", env=env).stdout


@pytest.mark.slow
def test_dvc_refetches_a_checkpoint_replaced_in_place_only_with_always_changed(tmp_path):
    repo, env = _toy_repo(tmp_path, always=True)
    _repro(repo, env)
    assert (repo / "result.txt").read_text() == "weights 1"
    again = _repro(repo, env)
    # fetch ran again, its output was the same: the analysis stayed cached
    assert "Running stage 'fetch'" in again and "Running stage 'analyse'" not in again
    assert (repo / "runs.log").read_text().count("run") == 1
    (repo / "checkpoint" / "w.txt").write_text("weights 2")  # replaced in place
    _repro(repo, env)
    assert (repo / "result.txt").read_text() == "weights 2"
    assert (repo / "runs.log").read_text().count("run") == 2
    # without always_changed DVC does not see the change: the stale result stays
    plain, env = _toy_repo(tmp_path, always=False)
    _repro(plain, env)
    (plain / "checkpoint" / "w.txt").write_text("weights 2")
    assert "Running stage" not in _repro(plain, env)
    assert (plain / "result.txt").read_text() == "weights 1"


# --- the plan's per-preset cost ----------------------------------------------------------

CPU = Rates(1e9, 5e8, "test")


def test_preset_cost_of_a_planted_shape_is_the_flop_count_by_hand():
    shape = GroupShape(9, 2, 64, 32, 100, 16)
    assert shape.pairs == 36  # 9 * 8 / 2
    tokens = 1000
    cost = preset_cost(shape, tokens, CPU, cuda=False, samples=2)
    n, params = 128, 2 * (4 * 32**2 + 2 * 32 * 64) + (100 + 16) * 32
    forward = 9 * 2 * params * tokens  # one pass: each model once
    products = 36 * 2 * tokens * n * n
    rotations = 36 * 2 * 4 * n * n * 64 + 9 * 2 * 2 * 3 * 64**3
    assert cost["seconds"] == pytest.approx((forward + products) / 1e9 + rotations / 5e8)
    doubled = preset_cost(shape, 2 * tokens, CPU, cuda=False, samples=2)
    assert doubled["seconds"] - cost["seconds"] == pytest.approx((forward + products) / 1e9)


def test_every_preset_has_a_row_with_its_members_and_pairs():
    models = {name: len(members) for name, members in PRESETS.items()}
    rows = {row["preset"]: row for row in preset_costs(models, 10**8, CPU)}
    assert set(rows) == set(PRESET_SHAPES) == set(PRESETS)
    assert rows["polypythia-14m"]["pairs"] == 36 and rows["polypythia-14m"]["neurons"] == 3072
    assert rows["polypythia-160m-data-seed"]["pairs"] == 3
    # same shape, 9 vs 3 seeds: 36 vs 3 pairs of products, the CPU time within the pairs' ratio
    big, small = rows["polypythia-160m"]["cpu"], rows["pythia-160m"]["cpu"]
    assert 3 < big["seconds"] / small["seconds"] <= 12
    # the GPU unit fits in 80 GiB: the 410m model is split into blocks of whole layers
    assert rows["polypythia-410m"]["gpu"]["block"] % 4096 == 0
    assert rows["polypythia-410m"]["gpu"]["memory"] <= 80 * 1024**3
    gpu = rows["polypythia-410m"]["gpu"]
    assert gpu["units"] == 36 * -(-98304 // gpu["block"]) == 108  # blocks of 10, 10, 4 layers


def test_plan_presets_prints_every_preset_within_120_columns(monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    result = invoke_command(
        ["plan", "--presets", "--products-tflops", "0.05", "--float64-tflops", "0.025"]
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(len(line) for line in lines) <= 120
    for preset in PRESETS:
        assert any(line.startswith(preset + " ") for line in lines), preset
    assert textwrap.dedent(result.output).count("GiB") >= 2 * len(PRESETS)


def test_fetching_an_unchanged_local_model_again_writes_the_same_bytes(tmp_path, tiny_tokens_dir):
    """What ``always_changed`` relies on: a refetch of an unchanged member is byte-identical,
    so DVC sees the same output hash and the later stages stay cached."""
    from conftest import save_tiny_neox
    from transformers import PreTrainedTokenizerFast

    from universal_neurons.models.group import fetch_model

    source = tmp_path / "checkpoint"
    save_tiny_neox(source, seed=1)
    PreTrainedTokenizerFast(
        tokenizer_file=str(tiny_tokens_dir / "tokenizer.json"), eos_token="<|endoftext|>"
    ).save_pretrained(source)
    first, second = tmp_path / "first", tmp_path / "second"
    fetch_model("m1", str(source), first)
    fetch_model("m1", str(source), second)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert "model.safetensors" in {str(f) for f in files}
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    for name in files:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_effects_estimate_counts_every_ablation_by_hand():
    """3 models of 2 x 100 neurons, 10 % universal: 20 universal each, 4 controls and 2
    partners each -> 3 * 20 * 7 = 420 ablations; each a forward pass of 2 FLOP per weight over
    8 sequences of the context; twice the sequences, twice the time."""
    from universal_neurons.matching.preset_plan import effects_cost

    shape = GroupShape(3, 2, 100, 16, 50, 32)
    rates = Rates(1e9, 1e8, "test")
    cost = effects_cost(shape, rates, sequences=8, controls=4, universal_fraction=0.1)
    weights = 2 * (4 * 16**2 + 2 * 16 * 100) + (50 + 32) * 16
    assert shape.model_parameters() == weights
    assert cost["universal"] == 60 and cost["ablations"] == 420
    assert cost["seconds"] == pytest.approx(2 * weights * 8 * 32 * 420 / 1e9)
    doubled = effects_cost(shape, rates, sequences=16, controls=4, universal_fraction=0.1)
    assert doubled["seconds"] == pytest.approx(2 * cost["seconds"])


def test_effects_memory_is_the_count_by_hand():
    """The clean pass's logits and probabilities plus each ablated copy's logits and softmax
    (4 bytes per vocabulary entry of every token), one loaded model and the unembedding's float64
    SVD; GPT2-small's vocabulary with the presets' batches: ~15 GiB of logits, and 16 copies
    instead of 4 (the clean pass counted as one more) 17/5 of it."""
    from universal_neurons.matching.preset_plan import PRESET_EFFECTS, effects_memory

    shape = GroupShape(3, 2, 100, 16, 50, 32)
    memory = effects_memory(shape, context=8, batch_size=2, neuron_batch=3)
    assert memory["logits"] == 2 * 4 * (2 * 8) * 50 * 4
    assert memory["model"] == shape.loaded_parameters() * 4
    assert memory["svd"] == 3 * 16 * 50 * 8
    assert memory["total"] == memory["logits"] + memory["model"] + memory["svd"]
    gpt2 = GroupShape(5, 12, 3072, 768, 50257, 1024)
    presets = effects_memory(gpt2, **PRESET_EFFECTS)
    assert presets["logits"] == 2 * 5 * 16 * 512 * 50257 * 4  # 15.3 GiB
    wide = effects_memory(gpt2, **(PRESET_EFFECTS | {"neuron_batch": 16}))
    assert wide["logits"] * 5 == presets["logits"] * 17 and wide["total"] > 50 * 2**30


# --- the uncertainty_resamples estimate ----------------------------------------------------


def _slab_case():
    """2 models of 3 layers x 4,096 = 12,288 neurons (above 8,192: the slab path), batches of
    100, 10 resamples of 4 blocks, 2 candidates, 1 draw. From 4 x 4,096 = 16,384 tokens on
    the rotated squares come from each block's within-layer sums; below, token by token."""
    from universal_neurons.matching.preset_plan import UncertaintySizes

    return GroupShape(2, 3, 4096, 64, 100, 16), UncertaintySizes(10, 4, 2, 1)


def test_uncertainty_slab_estimate_is_the_count_by_hand():
    """Per slab a candidate and a block-sums pass of every model: with 2 of 3 layers per slab
    each model has 2 slabs (4 in all), 2 passes of 2 models each; products 2·T·N² per
    ordered pair and pass (4x correlate's one pair), the within-layer sums on top; with fewer
    tokens than blocks x d_mlp the rotated squares token by token instead of the within-layer
    sums and their per-block rotations."""
    from universal_neurons.matching.plan import RUNTIME
    from universal_neurons.matching.preset_plan import uncertainty_cost

    shape, sizes = _slab_case()
    n, d, t = 12288, 4096, 20_000
    sums = 8 * 4 * n * (2 * 4 + 4 * 2)  # keys: 2 models x (1 + 1 draw); links: 2 x 1 x 2
    fixed = sums + 2 * shape.loaded_parameters() * 4 + RUNTIME

    def slab(layers):  # slab sums and 4 [B, N] of the candidate step, products, activations,
        b = layers * d  # within-layer sums, one draw's rotation matrices
        return 5 * 8 * b * n + 12 * b * n + 8 * 2 * 100 * n + 8 * layers * d * d + 8 * n * d

    cost = uncertainty_cost(
        shape, t, CPU, CPU, cuda=False, sizes=sizes, memory=fixed + slab(2), batch_tokens=100
    )
    assert (cost["layers"], cost["slabs"], cost["fits"]) == (2, 4, True)
    assert cost["sums"] == sums and cost["memory"] == fixed + slab(2)
    correlate_products = 1 * 2 * t * n * n  # one unordered pair
    within = 2 * 2 * t * 3 * d * d
    assert cost["products"] == 4 * correlate_products + within
    params = 3 * (4 * 64**2 + 2 * 64 * d) + (100 + 16) * 64
    forward = 2 * 4 * 2 * (2 * params * t)  # 2 passes x 4 slabs x 2 models
    host = (
        2 * 1 * 2 * n * n * d  # candidate step: rotated correlations, 2 ordered pairs x 1 draw
        + 2 * 1 * 3 * 3 * d**3  # QR of the rotation draws
        + 4 * 2 * 1 * 3 * 2 * d**3  # per block the rotated columns
        + 4 * 2 * 1 * 2 * n * 2 * d  # per block the rotated candidate sums
        + 2 * 10 * 4 * 2 * 2 * n * 2  # resampled correlations of 2 x 2 links
    )
    expected = (forward + cost["products"]) / 1e9 + host / 5e8
    assert cost["seconds"] == pytest.approx(expected)
    # 1,000 tokens < 4 blocks x 4,096: the rotated squares token by token, no within-layer sums
    few = 1000
    small = uncertainty_cost(
        shape, few, CPU, CPU, cuda=False, sizes=sizes, memory=fixed + slab(2), batch_tokens=100
    )
    assert small["products"] == 4 * 1 * 2 * few * n * n
    token_host = (
        host
        - 4 * 2 * 1 * 3 * 2 * d**3  # no per-block rotated columns ...
        + 2 * 1 * 3 * 2 * few * d**2  # ... but each token's 3 layers rotated, 2 models, 1 draw
    )
    small_forward = forward / t * few
    assert small["seconds"] == pytest.approx(
        (small_forward + small["products"]) / 1e9 + token_host / 5e8
    )
    # a byte less: one layer per slab, 3 slabs per model; far less: not even one layer fits
    less = uncertainty_cost(
        shape, t, CPU, CPU, cuda=False, sizes=sizes, memory=fixed + slab(2) - 1, batch_tokens=100
    )
    assert (less["layers"], less["slabs"], less["fits"]) == (1, 6, True)
    none = uncertainty_cost(shape, t, CPU, CPU, cuda=False, sizes=sizes, memory=fixed)
    assert (none["layers"], none["fits"]) == (1, False)


def test_uncertainty_estimate_on_the_gpu_follows_correlate_and_stays_on_the_device():
    """On cuda, as correlate: bf16 models, the forward passes and cross products at the bf16
    rate, the within-layer sums at ``GPU_FLOAT32``, the rotations at the GPU's float64 rate;
    only the QR and the resamples at the host's, plus the rotation matrices' copies to the
    GPU. The device holds bf16 models, the process and the slab; the sums stay on the host."""
    from universal_neurons.matching.plan import RUNTIME
    from universal_neurons.matching.preset_plan import (
        GPU_FLOAT32,
        HOST_TO_DEVICE,
        uncertainty_cost,
    )

    shape, sizes = _slab_case()
    n, d, t = 12288, 4096, 20_000
    gpu, host = Rates(1e12, 1e11, "gpu"), Rates(1.0, 5e8, "host")
    cost = uncertainty_cost(shape, t, gpu, host, cuda=True, sizes=sizes, memory=10**15)
    assert (cost["layers"], cost["slabs"]) == (3, 2)  # all 3 layers: one slab per model
    cross = 2 * 2 * 2 * t * n**2  # 2 ordered pairs x 2 passes
    within = 2 * 2 * t * 3 * d**2
    forward = 2 * 2 * 2 * (2 * shape.model_parameters() * t)  # 2 passes x 2 slabs x 2 models
    device = 2 * 1 * 2 * n * n * d + 4 * 2 * 1 * 3 * 2 * d**3 + 4 * 2 * 1 * 2 * n * 2 * d
    on_host = 2 * 1 * 3 * 3 * d**3 + 2 * 10 * 4 * 2 * 2 * n * 2
    draw = 8 * 3 * d * d  # one model's matrices of one draw
    copies = 2 * 1 * 1 * 2 * draw + 4 * (2 * 1 * 1 * draw + 2 * 1 * draw)
    expected = (
        (forward + cross) / 1e12
        + within / GPU_FLOAT32
        + device / 1e11
        + on_host / 5e8
        + copies / HOST_TO_DEVICE
    )
    assert cost["seconds"] == pytest.approx(expected)
    slab = 5 * 8 * 3 * d * n + 12 * 3 * d * n + 8 * 2 * 12_288 * n + 8 * 3 * d * d + 8 * n * d
    models = 2 * shape.loaded_parameters() * 2  # bf16
    assert cost["memory"] == models + RUNTIME + slab


def test_uncertainty_estimate_up_to_8192_neurons_takes_the_full_pairs_path():
    """A group correlate keeps full pair statistics for: one pass, the CPU's products of every
    unordered pair (2·T·N²) and the within-layer sums, no slabs."""
    from universal_neurons.matching.preset_plan import uncertainty_cost

    shape = GroupShape(3, 2, 64, 32, 100, 16)
    _, sizes = _slab_case()
    cost = uncertainty_cost(shape, 1000, CPU, CPU, cuda=False, sizes=sizes)
    assert (cost["slabs"], cost["layers"]) == (0, 0)
    assert cost["products"] == 3 * 2 * 1000 * 128**2 + 3 * 2 * 1000 * 2 * 64**2


def test_plan_presets_lists_the_uncertainty_estimate_of_every_preset(monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    result = invoke_command(
        ["plan", "--presets", "--products-tflops", "0.05", "--float64-tflops", "0.025"]
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("uncertainty_resamples"))
    table = {line.split()[0]: line for line in lines[start:] if line.split()[:1]}
    for preset in PRESETS:
        assert "GiB" in table[preset], preset
    assert "pairs" in table["polypythia-14m"] and "10 x 6L" in table["gpt2-small"]
    assert max(len(line) for line in lines) <= 120
