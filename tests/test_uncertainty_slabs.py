"""The uncertainty pass without full pair statistics: slabs of whole layers (``matching.slabs``).

References: the full-pairs path of the same models and tokens (``correlate_group``'s pair
statistics, ``candidate_links``, ``accumulate_blocks``), a planted twin model whose neurons
are a known permutation of another's, and the shapes of every tensor torch creates.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from universal_neurons.matching.activations import load_analysis_set
from universal_neurons.matching.block_products import accumulate_blocks, batch_values
from universal_neurons.matching.correlation import SCRATCH
from universal_neurons.matching.pairs import correlate_group
from universal_neurons.matching.resampling import (
    CandidateSums,
    block_weights,
    candidate_links,
    rotated_key,
    rotation_draws,
)
from universal_neurons.matching.slabs import (
    CandidateInputs,
    Slab,
    SlabProducts,
    _widened,
    accumulate_slabs,
    mapped_rotation_draws,
    plan_slabs,
    slab_candidate_links,
)
from universal_neurons.matching.uncertainty import group_resampled_excess
from universal_neurons.matching.units import PassSettings
from universal_neurons.models.loading import load_model, model_shape

BLOCKS, K, DRAWS, SEQUENCES = 4, 4, 2, 64


@pytest.fixture(scope="module")
def analysis_set(tiny_tokens_dir):
    """The first ``SEQUENCES`` analysis sequences of the tiny token set and its excluded ids."""
    from conftest import tiny_params

    tokens, excluded, _ = load_analysis_set(tiny_tokens_dir, tiny_params().analysis)
    return tokens[:SEQUENCES], excluded


def _within(models: dict, analysis_set, batch_size: int) -> dict[str, np.ndarray]:
    """Per model ``[layers, d_mlp, d_mlp]`` population within-layer covariances (collect's)."""
    tokens, excluded = analysis_set
    batches = list(batch_values(models, tokens, excluded, batch_size))
    within = {}
    for name, model in models.items():
        n_layers, d_mlp = model_shape(model)
        values = torch.cat([batch[name] for batch in batches]).to(torch.float64).numpy()
        layers = values.reshape(len(values), n_layers, d_mlp)
        within[name] = np.stack([np.cov(layers[:, i].T, bias=True) for i in range(n_layers)])
    return within


def _columns(names: list[str], n: int, draws: int) -> dict[str, int]:
    return {name: n for name in names} | {rotated_key(p, d): n for p in names for d in range(draws)}


def _full_pairs_sums(models, analysis_set, within, rotations, batch_size, products):
    """The full-pairs path: candidates from whole pair statistics, one pass of block sums."""
    tokens, excluded = analysis_set
    stats = correlate_group(models, tokens, excluded, batch_size, products, progress=False)
    links = candidate_links(stats.pairs.items(), within, rotations, K, 0.0)
    n = stats.n_layers * stats.d_mlp
    sums = CandidateSums(BLOCKS, _columns(list(models), n, len(rotations[stats.names[0]])), links)
    tensors = {name: torch.as_tensor(m) for name, m in rotations.items()}
    return accumulate_blocks(
        models, tokens, excluded, batch_size, sums, tensors, stats.n_layers, progress=False
    )


def _slab_sums(models, analysis_set, inputs, slabs, settings, per_token=None):
    """The slab path: candidates and block sums slab by slab (``per_token``: how the rotated
    directions' squares are summed; default by cost)."""
    links = slab_candidate_links(slabs, models, analysis_set, settings, inputs)
    n = int(np.prod(model_shape(next(iter(models.values())))))
    draws = len(next(iter(inputs.rotations.values())))
    sums = CandidateSums(BLOCKS, _columns(list(models), n, draws), links)
    return accumulate_slabs(
        models, analysis_set, settings, sums, inputs.rotations, slabs, False, per_token
    )


@pytest.fixture(scope="module")
def float64_models(tiny_group):
    """The tiny group in float64: both paths then agree to float64 rounding."""
    return {
        f"seed{s}": load_model(str(path), dtype=torch.float64) for s, path in tiny_group.items()
    }


def _excess_difference(models, analysis_set, tmp_path, products: str) -> float:
    """The largest difference of the slab path's resampled excess in ``products`` precision
    from the float64 slab path's (``models`` in float64, one layer per slab)."""
    n_layers, d_mlp = model_shape(models["seed1"])
    seeds = {name: int(name.removeprefix("seed")) for name in models}
    rotations = mapped_rotation_draws("rotation", seeds, (n_layers, d_mlp), DRAWS, 0, tmp_path)
    inputs = CandidateInputs(_within(models, analysis_set, 16), rotations, K)
    slabs = plan_slabs(list(models), n_layers, d_mlp, 1)
    weights, names = block_weights(BLOCKS, 30, seed=1), list(models)
    excess = {
        precision: group_resampled_excess(
            _slab_sums(models, analysis_set, inputs, slabs, PassSettings(16, precision)),
            names,
            weights,
            draws=DRAWS,
        )
        for precision in ("float64", products)
    }
    return max(
        np.nanmax(np.abs(ours - theirs))
        for name in names
        for ours, theirs in zip(excess[products][name], excess["float64"][name], strict=True)
    )


def test_the_slab_path_takes_its_products_in_the_given_precision(
    float64_models, analysis_set, tmp_path
):
    """bfloat16 products (correlate's on CUDA, emulated exactly on the CPU) move the excess
    of float64 models by bfloat16 rounding: more than nothing, and a few hundredths at
    most over every neuron and resample."""
    difference = _excess_difference(float64_models, analysis_set, tmp_path, "bfloat16")
    assert 1e-6 < difference < 5e-2  # 0.012 measured: the largest over neurons and resamples


@pytest.mark.parametrize("per_token", [False, True], ids=["block-squares", "token-squares"])
def test_slab_path_equals_the_full_pairs_path(float64_models, analysis_set, tmp_path, per_token):
    """Two slabs of one layer per model: the same candidates as the pair statistics give,
    and the same resampled and whole-set excess correlations within 1e-12, whether the
    rotated directions' squares come from each block's ``Σ y yᵀ`` or token by token."""
    models, batch_size = float64_models, 16
    n_layers, d_mlp = model_shape(models["seed1"])
    seeds = {name: int(name.removeprefix("seed")) for name in models}
    rotations = rotation_draws("rotation", list(models), seeds, (n_layers, d_mlp), DRAWS, 0)
    mapped = mapped_rotation_draws("rotation", seeds, (n_layers, d_mlp), DRAWS, 0, tmp_path)
    for name in models:  # the memory maps hold the baseline's matrices
        np.testing.assert_array_equal(mapped[name], rotations[name])
    within = _within(models, analysis_set, batch_size)
    full = _full_pairs_sums(models, analysis_set, within, rotations, batch_size, "float64")
    slabs = plan_slabs(list(models), n_layers, d_mlp, 1)
    assert len(slabs) == 2 * len(models)
    settings = PassSettings(batch_size, "float64")
    inputs = CandidateInputs(within, mapped, K)
    slab = _slab_sums(models, analysis_set, inputs, slabs, settings, per_token)

    assert full.candidates.keys() == slab.candidates.keys()
    for link, candidates in full.candidates.items():
        torch.testing.assert_close(slab.candidates[link], candidates, rtol=0, atol=0)
    np.testing.assert_array_equal(slab.count, full.count)
    weights = block_weights(BLOCKS, 30, seed=1)
    names = list(models)
    expected = group_resampled_excess(full, names, weights, draws=DRAWS)
    got = group_resampled_excess(slab, names, weights, draws=DRAWS)
    for name in names:
        for ours, theirs in zip(got[name], expected[name], strict=True):
            assert np.isfinite(theirs).mean() > 0.5  # mostly live neurons: a real comparison
            np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-12, equal_nan=True)


def _permuted_twin(source, target, seed: int) -> np.ndarray:
    """Save at ``target`` the model at ``source`` with each layer's MLP neurons permuted
    (the same function, its neurons renumbered); returns ``[layers, d_mlp]``: twin neuron j
    of layer l is neuron ``p[l, j]`` of the source."""
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(source)
    rng = np.random.default_rng(seed)
    permutations = []
    with torch.no_grad():
        for block in model.transformer.h:
            p = rng.permutation(block.mlp.c_fc.weight.shape[1])
            index = torch.as_tensor(p)
            block.mlp.c_fc.weight.copy_(block.mlp.c_fc.weight[:, index])
            block.mlp.c_fc.bias.copy_(block.mlp.c_fc.bias[index])
            block.mlp.c_proj.weight.copy_(block.mlp.c_proj.weight[index, :])
            permutations.append(p)
    model.save_pretrained(target)
    return np.stack(permutations)


@pytest.mark.parametrize("products", ["float32", "bfloat16"])
def test_a_permuted_twin_is_every_live_neurons_first_candidate(
    tiny_group, analysis_set, tmp_path, products
):
    """Model ``twin`` is seed1 with its neurons permuted within each layer: in the slab
    path (float32 models, products as the stage runs them on the CPU and on CUDA), each
    live neuron's first candidate in the twin is its own copy, both ways."""
    permutation = _permuted_twin(tiny_group[1], tmp_path / "twin", seed=3)
    models = {
        "seed1": load_model(str(tiny_group[1])),
        "twin": load_model(str(tmp_path / "twin")),
        "seed2": load_model(str(tiny_group[2])),
    }
    n_layers, d_mlp = permutation.shape
    offsets = (np.arange(n_layers) * d_mlp)[:, None]
    to_source = (permutation + offsets).reshape(-1)  # twin neuron -> its seed1 neuron
    to_twin = np.argsort(to_source)  # seed1 neuron -> its twin copy
    assert not np.array_equal(to_twin, np.arange(n_layers * d_mlp))
    within = _within(models, analysis_set, 16)
    seeds = {"seed1": 1, "twin": 1, "seed2": 2}
    rotations = mapped_rotation_draws("rotation", seeds, (n_layers, d_mlp), 1, 0, tmp_path / "r")
    slabs = plan_slabs(list(models), n_layers, d_mlp, 1)
    inputs = CandidateInputs(within, rotations, K)
    settings = PassSettings(16, products)
    links = slab_candidate_links(slabs, models, analysis_set, settings, inputs)
    live = np.einsum("lii->li", within["seed1"]).reshape(-1) > 0
    assert live.sum() > 0.5 * live.size
    first = links[("seed1", "twin")][:, 0].numpy()
    np.testing.assert_array_equal(first[live], to_twin[live])
    back = links[("twin", "seed1")][:, 0].numpy()
    np.testing.assert_array_equal(back[live[to_source]], to_source[live[to_source]])


class TensorShapes(TorchDispatchMode):
    """Records the shape of every tensor any torch operation returns."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: set[tuple[int, ...]] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        """Run ``func``; note the shape of each tensor it returns."""
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self.shapes.add(tuple(leaf.shape))
        return out


def _square(shapes: set[tuple[int, ...]], n: int) -> set[tuple[int, ...]]:
    """The shapes with two axes of ``n`` or more (an ``[N, N]`` matrix or larger)."""
    return {shape for shape in shapes if sum(size >= n for size in shape) >= 2}


def test_the_slab_path_never_creates_an_n_by_n_tensor(tiny_group, analysis_set, tmp_path):
    """No tensor torch creates in the slab path (two slabs per model, batches of fewer tokens
    than neurons) has two axes of N or more, but correlate's fixed widening buffer (2^20
    float64 whatever N: ``[8192, 128]`` here, ``[28, 36864]`` for GPT2-small); its ``[B, N]``
    sums are there. The same measurement of the full-pairs path sees its ``[N, N]``
    cross-products, so the measurement can fail."""
    models = {f"seed{s}": load_model(str(path)) for s, path in tiny_group.items()}
    n_layers, d_mlp = model_shape(models["seed1"])
    n, batch_size = n_layers * d_mlp, 2  # kept tokens per batch <= 2 x 32 < N = 128
    seeds = {name: int(name.removeprefix("seed")) for name in models}
    rotations = mapped_rotation_draws("rotation", seeds, (n_layers, d_mlp), 1, 0, tmp_path)
    within = _within(models, analysis_set, batch_size)
    slabs = plan_slabs(list(models), n_layers, d_mlp, 1)
    assert len(slabs) == 2 * len(models)
    inputs = CandidateInputs(within, rotations, K)
    with TensorShapes() as slab_pass:
        sums = _slab_sums(models, analysis_set, inputs, slabs, PassSettings(batch_size))
    assert _square(slab_pass.shapes, n) == {(2**20 // n, n)}
    assert (d_mlp, n) in slab_pass.shapes  # the slab's [B, N] sums
    assert np.isfinite(sums.cross[("seed1", "seed2")].numpy()).all()

    arrays = {name: np.asarray(m) for name, m in rotations.items()}
    with TensorShapes() as full_pass:
        _full_pairs_sums(models, analysis_set, within, arrays, batch_size, "float32")
    assert (n, n) in _square(full_pass.shapes, n)


@pytest.mark.slow
def test_stage_without_candidate_links_takes_the_slab_path(
    tmp_path, tiny_analysis, tiny_tokens_dir, tiny_group, monkeypatch
):
    """The stage on correlate outputs without candidate links (as above
    ``correlate.full_pairs_max_neurons``): no refusal, the excess of the full-pairs run to
    float32 rounding, no scratch left under data/; a memory limit below one slab is named."""
    import json
    import shutil

    from conftest import tiny_params

    from stages import correlate, uncertainty_resamples
    from universal_neurons.pipeline.layout import Layout
    from universal_neurons.resources import MemoryLimitError

    params = tiny_params(uncertainty={"resamples": 20, "blocks": 4, "candidates": 4})
    models = next(iter(tiny_group.values())).parent
    runs = {}
    for kind in ("full", "slabs"):
        root = tmp_path / kind
        shutil.copytree(tiny_analysis, root / "data")
        if kind == "slabs":
            summary_path = root / "data" / "correlate" / "summary.json"
            summary = json.loads(summary_path.read_text()) | {"outputs": "maxima"}
            summary_path.write_text(json.dumps(summary))
            (root / "data" / "correlate" / "candidate_links.safetensors").unlink()
        layout = Layout.at(root, tokens=tiny_tokens_dir, models=models)
        if kind == "slabs":  # the within-layer covariances collect writes above the threshold
            analysis_set = load_analysis_set(tiny_tokens_dir, params.analysis)[:2]
            within = correlate.within_covariances(params, layout, analysis_set, progress=False)
            for seed in params.train.seeds:
                path = layout.model_dir("collect", seed) / "within_layer_cov.npy"
                np.save(path, within[f"seed{seed}"], allow_pickle=False)
        uncertainty_resamples.run(params, layout, progress=False)
        runs[kind] = root / "data"
    leftovers = [p.name for p in runs["slabs"].iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []
    for seed in params.train.seeds:
        for part in ("resampled", "whole"):
            name = f"seed{seed}_{part}.npy"
            full = np.load(runs["full"] / "uncertainty_resamples" / name)
            slab = np.load(runs["slabs"] / "uncertainty_resamples" / name)
            assert np.isfinite(full).mean() > 0.5
            np.testing.assert_allclose(slab, full, rtol=0, atol=1e-5, equal_nan=True)

    monkeypatch.setenv("UNIVERSAL_NEURONS_MEMORY_GB", "0.001")
    layout = Layout.at(runs["slabs"].parent, tokens=tiny_tokens_dir, models=models)
    with pytest.raises(MemoryLimitError, match="a slab of one layer"):
        uncertainty_resamples.run(params, layout, progress=False)


class HostCopies(TorchDispatchMode):
    """Stands in for a second device: every copy of a ``meta`` tensor to the CPU is noted by
    shape and answered with zeros of that shape; ``bfloat16`` notes the shapes cast to
    bfloat16 (the products' inputs)."""

    def __init__(self) -> None:
        super().__init__()
        self.to_host: list[tuple[int, ...]] = []
        self.bfloat16: set[tuple[int, ...]] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        """Answer a meta -> CPU copy with zeros; note bfloat16 casts; run the rest."""
        kwargs = kwargs or {}
        if func is torch.ops.aten._to_copy.default:
            source, device = args[0], kwargs.get("device")
            if kwargs.get("dtype") == torch.bfloat16:
                self.bfloat16.add(tuple(source.shape))
            if source.is_meta and device is not None and torch.device(device).type == "cpu":
                self.to_host.append(tuple(source.shape))
                return torch.zeros(source.shape, dtype=kwargs.get("dtype") or source.dtype)
        return func(*args, **kwargs)


@pytest.mark.parametrize("per_token", [False, True], ids=["block-squares", "token-squares"])
def test_the_slab_sums_stay_on_the_device_and_only_summaries_reach_the_host(per_token):
    """On a device (``meta`` here, as CUDA would be): the slab's sums are float64 there, the
    products' inputs are cast to bfloat16 as correlate's, and the only copies to the host
    are the per-neuron totals (``[B]``, ``[B, k]``), never a ``[B, N]`` or ``[tokens, N]``
    tensor, whichever way the rotated squares are summed; the candidate step's likewise
    (``[B, k]`` candidates)."""
    from universal_neurons.matching.correlation import CrossMoments
    from universal_neurons.matching.slabs import Slab, SlabProducts, device_side_candidates

    layers, d_mlp, tokens, k = 2, 8, 5, 3
    n, rows = layers * d_mlp, d_mlp  # a slab of x's layer 1 against all of y
    slab = Slab("x", (1, 2), d_mlp)
    rotations = {m: torch.randn(DRAWS, layers, d_mlp, d_mlp, dtype=torch.float64) for m in "xy"}
    candidates = torch.randint(0, n, (n, k))
    links = {("x", "y"): candidates, ("x", rotated_key("y", 0)): candidates}
    with HostCopies() as copies:
        own = rotations["x"][:, 1:2] if per_token else None  # x's matrices of the slab layer
        products = SlabProducts(slab, ["y"], n, {}, "meta", "bfloat16", own)
        values = {m: torch.empty(tokens, n, device="meta", dtype=torch.bfloat16) for m in "xy"}
        products.add(values)
        totals = products.totals(links, rotations)
    assert {t.device.type for t in products.cross.values()} == {"meta"}
    assert (products.within is None) == per_token
    if per_token:
        assert products.rotated_second.device.type == "meta"
        assert products.rotated_second.shape == (DRAWS, rows)
    assert products.cross["y"].dtype == torch.float64 and products.cross["y"].shape == (rows, n)
    assert {(tokens, rows), (tokens, n)} <= copies.bfloat16  # x's slab and y, for the product
    assert sorted(set(copies.to_host)) == [(rows,), (rows, k)]
    assert totals.cross[("x", "y")].shape == (rows, k) and totals.rows == (d_mlp, 2 * d_mlp)

    pair = CrossMoments.empty(rows, n, "meta")
    inputs = CandidateInputs({"y": np.eye(d_mlp)[None].repeat(layers, 0)}, rotations, k)
    with HostCopies() as copies:
        links = device_side_candidates(("x", "y"), pair, inputs)
    assert set(copies.to_host) == {(rows, k)} and len(links) == 1 + DRAWS


def test_the_slab_reductions_choose_their_way_by_cost_and_chunk_to_the_cache(monkeypatch):
    """The token path for the rotated squares is taken exactly when the analysis set has fewer
    positions than ``blocks × d_mlp`` (the real-width rehearsal's 2,048 against 20 × 3,072;
    a preset's million against the same); the rotated cross reduction takes 16 rows of
    GPT-2's width per CPU chunk (3 MiB), 256 on a GPU, and gives numpy's float64 answer
    whatever the chunk."""
    from universal_neurons.matching import slabs

    assert slabs.rotate_per_token(2048, 20, 3072)
    assert not slabs.rotate_per_token(20 * 3072, 20, 3072)
    assert not slabs.rotate_per_token(1_000_000, 20, 3072)
    assert slabs.rotated_rows(torch.device("cpu"), 8, 3072) == 16
    assert slabs.rotated_rows(torch.device("cuda"), 8, 3072) == 256

    rng = np.random.default_rng(0)
    layers, d_mlp, rows, k = 2, 6, 7, 3
    cross = rng.standard_normal((rows, layers * d_mlp))
    matrices = rng.standard_normal((layers, d_mlp, d_mlp))
    candidates = rng.integers(0, layers * d_mlp, (rows, k))
    layer, index = candidates // d_mlp, candidates % d_mlp
    expected = np.einsum(
        "rkm,rkm->rk",
        cross.reshape(rows, layers, d_mlp)[np.arange(rows)[:, None], layer],
        matrices[layer, index],
    )
    for chunk_bytes in (1, 8 * k * d_mlp * 2, 10**9):  # 1 row, 2 rows, all rows per chunk
        monkeypatch.setattr(slabs, "ROTATED_CHUNK_BYTES_CPU", chunk_bytes)
        got = slabs._chunked_rotated_cross(
            torch.as_tensor(cross), torch.as_tensor(matrices), torch.as_tensor(candidates)
        )
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-12)


def test_slab_sums_add_float32_products_through_one_reused_float64_buffer():
    """SlabProducts adds each batch's float32 product to its float64 sums through one reused
    buffer: the sums equal, bit for bit, float64 sums of the same products (numpy), and a
    second batch reuses the first one's buffer (no fresh [B, N] float64 per batch)."""
    rng = np.random.default_rng(0)
    d_mlp, n_layers, tokens = 8, 2, 24
    n = d_mlp * n_layers
    slab = Slab("x", (0, n_layers), d_mlp)
    products = SlabProducts(slab, ["y"], n, {}, "cpu", "float32")
    batches = [
        {name: torch.as_tensor(rng.normal(size=(tokens, n)), dtype=torch.float32) for name in "xy"}
        for _ in range(3)
    ]
    for values in batches:
        products.add(values)
    expected = np.zeros((n, n))
    for values in batches:  # centred in float32 by the float32 shift, as correlate's batches
        x, y = (values[name] - products.shifts[name].float() for name in "xy")
        expected += (x.T @ y).numpy().astype(np.float64)
    np.testing.assert_array_equal(products.cross["y"].numpy(), expected)
    first = _widened(torch.ones(3, 5)).data_ptr()
    assert _widened(torch.zeros(3, 5)).data_ptr() == first
    SCRATCH.clear()
