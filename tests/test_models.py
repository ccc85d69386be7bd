"""One loading path through TransformerLens, checked against Hugging Face's own forward pass."""

import shutil

import pytest
import torch
from transformers import GPT2LMHeadModel

from universal_neurons.models.loading import ModelLoadError, capture_mlp, load_model, model_shape


def _hf_mlp_activations(directory, tokens):
    """Post-GELU MLP activations from the plain Hugging Face model (independent of TransformerLens)."""
    model = GPT2LMHeadModel.from_pretrained(directory, attn_implementation="eager").eval()
    captured = []
    handles = [
        block.mlp.act.register_forward_hook(lambda m, i, o: captured.append(o))
        for block in model.transformer.h
    ]
    with torch.no_grad():
        model(tokens)
    for handle in handles:
        handle.remove()
    return torch.stack(captured)


def test_local_model_loads_and_hooks_have_the_right_shape(tiny_group):
    model = load_model(str(tiny_group[1]))
    n_layers, d_mlp = model_shape(model)
    assert (n_layers, d_mlp) == (2, 64)
    tokens = torch.randint(1, 512, (3, 17), generator=torch.Generator().manual_seed(0))
    _, cache = model.run_with_cache(
        tokens, names_filter=lambda name: name.endswith("mlp.hook_post")
    )
    assert cache["blocks.1.mlp.hook_post"].shape == (3, 17, 64)
    captured = capture_mlp(model, tokens, ("pre", "post"))
    assert captured["post"].shape == (2, 3, 17, 64)
    torch.testing.assert_close(captured["post"][1], cache["blocks.1.mlp.hook_post"], rtol=0, atol=0)
    # Folding LayerNorm must not change the neurons: same activations as the raw HF model.
    torch.testing.assert_close(
        captured["post"], _hf_mlp_activations(tiny_group[1], tokens), rtol=1e-4, atol=1e-5
    )
    torch.testing.assert_close(
        torch.nn.functional.gelu(captured["pre"], approximate="tanh"), captured["post"]
    )


def test_hub_id_offline_fails_fast_with_advice(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="hub cannot be reached.*local directory"):
        load_model("stanford-crfm/alias-gpt2-small-x21")


def test_missing_directory(tmp_path):
    with pytest.raises(ModelLoadError, match="model directory does not exist"):
        load_model(str(tmp_path / "seed9"))


def test_truncated_safetensors_is_named(tiny_group, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_group[1], broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(
        ModelLoadError, match=r"model.safetensors: (unreadable|truncated) safetensors"
    ):
        load_model(str(broken))
