"""A GPT2-small-shaped pair (12 x 3,072 neurons each, random weights built here) through
correlate + baseline on the CPU in 4 GB: peak resident memory measured on the stage
processes, outputs under 50 MB, and the maxima and baselines of a subset of neurons equal to
a float64 reference computed from the plain Hugging Face forward pass."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import OWN_PEAK_RSS_KB, REPO_ROOT, tiny_params_dict
from test_interrupt import _cli_env

from universal_neurons.config import ModelConfig, params_from_dict
from universal_neurons.matching.activations import load_analysis_set
from universal_neurons.matching.baseline import mixing_matrix
from universal_neurons.matching.plan import shape_from_config, unit_memory, work_plan
from universal_neurons.models.gpt2 import gpt2_config, init_model, save_model

pytestmark = [pytest.mark.slow, pytest.mark.width]  # `make test-width` (pyproject)

LIMIT = 4 * 1024**3  # bytes of resident memory a stage may reach
SHAPE = ModelConfig(n_layers=12, d_model=768, n_heads=12, d_mlp=3072)
D = SHAPE.d_mlp
PARAMS = {
    "model": SHAPE.model_dump(),
    "train": {"seeds": [1, 2]},
    # 16 x 32 = 512 tokens in two batches: a unit's memory is set by the neurons (its
    # [3,072 x 36,864] accumulator) and the batch, not by how many batches pass, while the
    # products' time grows with the tokens
    "analysis": {"max_sequences": 16, "batch_size": 8},
    "correlate": {"neuron_block": D},  # one layer per unit: ~2.3 GB of accumulator + product
    "baseline": {"samples": 1},
}


# The stage runs as the command line does, in a process that reports its own peak RSS.
MEASURED = (
    "import runpy, sys\n"
    "stage = sys.argv[1]\n"
    "sys.argv = [stage, *sys.argv[2:]]\n"
    "try:\n    runpy.run_path(stage, run_name='__main__')\n"
    "finally:\n"
    f"    rss = {OWN_PEAK_RSS_KB}\n"
    "    print(f'peak-rss-kb {rss}', file=sys.stderr)\n"
)


def _stage(root, *args) -> int:
    """Run the stage file ``args[0]`` with ``args[1:]`` in ``root``, as ``dvc.yaml`` does; return
    its peak resident memory (bytes)."""
    stage_file = str(REPO_ROOT / "stages" / f"{args[0]}.py")
    command = [sys.executable, "-P", "-c", MEASURED, stage_file, *args[1:]]
    result = subprocess.run(command, cwd=root, env=_cli_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return int(result.stderr.rsplit("peak-rss-kb ", 1)[1].split()[0]) * 1024


def _hf_activations(directory, tokens, mask, layers) -> np.ndarray:
    """float64 ``[kept positions, len(layers) * d_mlp]`` post-GELU activations of the plain
    Hugging Face model (forward hooks on ``mlp.act``), batch by batch."""
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(directory).eval()
    captured: dict[int, torch.Tensor] = {}
    hooks = [
        model.transformer.h[layer].mlp.act.register_forward_hook(
            lambda _m, _i, out, layer=layer: captured.__setitem__(layer, out)
        )
        for layer in layers
    ]
    parts = []
    with torch.no_grad():
        for start in range(0, len(tokens), 8):
            # torch.tensor copies: the tokens are a read-only memory map
            model(torch.tensor(tokens[start : start + 8], dtype=torch.long))
            keep = mask[start : start + 8]
            parts.append(torch.cat([captured[layer][keep] for layer in layers], dim=1).double())
    for hook in hooks:
        hook.remove()
    return torch.cat(parts).numpy()


def _corr(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson correlations ``[x columns, y columns]`` in float64."""
    xc, yc = x - x.mean(0), y - y.mean(0)
    return (xc.T @ yc) / np.outer(np.linalg.norm(xc, axis=0), np.linalg.norm(yc, axis=0))


def test_gpt2_small_shaped_pair_in_4_gb(tiny_tokens_dir, tmp_path):
    root = tmp_path / "ws"
    shutil.copytree(tiny_tokens_dir, root / "data" / "tokens")
    raw = tiny_params_dict(**PARAMS)
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    params = params_from_dict(raw)
    for seed in (1, 2):
        config = gpt2_config(SHAPE, vocab_size=512, n_ctx=32, eot_id=0)
        save_model(init_model(config, seed), root / "models" / f"seed{seed}")

    for seed in (1, 2):
        _stage(root, "collect", "--seed", str(seed))
    peaks = {stage: _stage(root, stage) for stage in ("correlate", "baseline")}
    shape = shape_from_config(root / "models" / "seed1", models=2)
    planned = unit_memory(shape, work_plan(params, shape))  # what `universal-neurons plan` prints
    print("peak RSS (GiB):", {k: round(v / 1024**3, 2) for k, v in peaks.items()})
    print("plan (GiB):", round(planned["total"] / 1024**3, 2))
    assert max(peaks.values()) < LIMIT
    # the plan's figure holds: a unit's memory does not outlive it (the next pass) nor grow
    # layer by layer in the reduction (heap fragmentation: 3.7-4.0 GiB without
    # units.map_large_allocations)
    assert peaks["correlate"] < 1.1 * planned["total"]

    outputs = [root / "data" / "correlate", root / "data" / "baseline"]
    size = sum(p.stat().st_size for d in outputs for p in d.rglob("*") if p.is_file())
    print("outputs (MB):", size / 1e6)
    assert size < 50e6 and not (root / "data" / "correlate" / "pairs").exists()

    # float64 reference on a subset: 8 neurons of layers 0, 5 and 11 of seed1 against all of
    # seed2, and 8 neurons of seed2's layer 7 against all of seed1
    tokens, excluded, kept = load_analysis_set(root / "data" / "tokens", params.analysis)
    mask = torch.as_tensor(~np.isin(tokens, excluded))
    x = _hf_activations(root / "models" / "seed1", tokens, mask, range(12))
    y = _hf_activations(root / "models" / "seed2", tokens, mask, range(12))
    assert len(x) == kept
    rows = np.concatenate([layer * D + np.arange(8) for layer in (0, 5, 11)])
    cols = 7 * D + np.arange(8)
    maxima = pd.read_parquet(root / "data" / "correlate" / "max_corr.parquet")
    base = pd.read_parquet(root / "data" / "baseline" / "baseline.parquet")
    _check(maxima, "seed1", "seed2", rows, _corr(x[:, rows], y))
    _check(maxima, "seed2", "seed1", cols, _corr(y[:, cols], x))

    # rotation baseline from the data-rotated partner: y_l Q_l^T, Q of seed2's draw 0
    rotated = np.concatenate(
        [y[:, k * D : (k + 1) * D] @ mixing_matrix("rotation", D, 0, 2, 0, k).T for k in range(12)],
        axis=1,
    )
    want = _corr(x[:, rows], rotated).max(axis=1)
    got = base.query("model == 'seed1' and partner == 'seed2' and sample == 0")["baseline"]
    np.testing.assert_allclose(got.to_numpy()[rows], want, rtol=0, atol=1e-5)


def _check(maxima, model, partner, neurons, corr) -> None:
    """The stage's max correlation and argmax of ``neurons`` equal the reference ``corr``."""
    rows = maxima.query(f"model == '{model}' and partner == '{partner}'").iloc[neurons]
    np.testing.assert_allclose(rows["max_corr"], corr.max(axis=1), rtol=0, atol=1e-5)
    argmax = corr.argmax(axis=1)
    np.testing.assert_array_equal(rows["argmax_layer"] * D + rows["argmax_index"], argmax)
