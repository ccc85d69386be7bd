"""One loading path through TransformerLens, checked against Hugging Face's own forward pass."""

import shutil

import pytest
import torch
from conftest import save_tiny_neox
from transformers import GPT2LMHeadModel

from universal_neurons.models import trunk
from universal_neurons.models.loading import ModelLoadError, capture_mlp, load_model, model_shape
from universal_neurons.models.trunk import uses_trunk


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
    hooked = capture_mlp(model, tokens, ("pre", "post"), fused=False)
    torch.testing.assert_close(hooked["post"][1], cache["blocks.1.mlp.hook_post"], rtol=0, atol=0)
    # The fused trunk (same modules, fused attention) agrees with the hooks up to rounding.
    assert uses_trunk(model)
    for kind in ("pre", "post"):
        torch.testing.assert_close(captured[kind], hooked[kind], rtol=0, atol=1e-5)
    later = capture_mlp(model, tokens, ("post",), layers=range(1, 2))
    assert torch.equal(later["post"][0], captured["post"][1])
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


def test_trunk_is_used_only_where_it_agrees_with_the_hooks(tiny_group, monkeypatch):
    """A trunk that disagrees with the bridge on the probe batch (here: a tolerance of 0)
    is not used: the capture is then exactly the hooks' one."""
    monkeypatch.setitem(trunk.PROBE_TOLERANCE, torch.float32, 0.0)
    model = load_model(str(tiny_group[2]))
    tokens = torch.randint(1, 512, (2, 17), generator=torch.Generator().manual_seed(1))
    captured = capture_mlp(model, tokens, ("pre", "post"))
    assert not uses_trunk(model)
    hooked = capture_mlp(model, tokens, ("pre", "post"), fused=False)
    for kind in ("pre", "post"):
        assert torch.equal(captured[kind], hooked[kind])


def test_gpt_neox_keeps_the_bridge_path(tmp_path):
    """The trunk mirrors GPT-2 only: a GPT-NeoX (Pythia) model is captured through the hooks."""
    save_tiny_neox(tmp_path / "neox", seed=0)
    model = load_model(str(tmp_path / "neox"))
    tokens = torch.randint(1, 512, (2, 16), generator=torch.Generator().manual_seed(2))
    captured = capture_mlp(model, tokens, ("post",))
    assert not trunk.supported(model) and not uses_trunk(model)
    assert torch.equal(captured["post"], capture_mlp(model, tokens, ("post",), fused=False)["post"])
