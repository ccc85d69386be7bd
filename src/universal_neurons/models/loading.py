"""Loading models for analysis through TransformerLens, and the checks of a group's models.

Every TransformerLens call of the project lives in this module. We use
transformer-lens 4.x's ``TransformerBridge`` (``boot_transformers`` +
``enable_compatibility_mode()``): it loads any Hugging Face GPT-2 or GPT-NeoX
directory or hub id with the same code, and gives the weight processing of the
paper (LayerNorm folded, writing weights and unembedding centred) with the
familiar hook names ``blocks.{l}.mlp.hook_pre`` / ``blocks.{l}.mlp.hook_post``.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer

from universal_neurons.errors import UserError
from universal_neurons.hub import hub_reachable
from universal_neurons.models.trunk import trunk_for
from universal_neurons.text.tokens import TokensError, check_tokenizer


class ModelLoadError(UserError):
    """A model that cannot be loaded; the message names it and says what to do."""


def _check_local_model(directory: Path) -> None:
    if not (directory / "config.json").is_file():
        raise ModelLoadError(f"{directory}: model directory has no config.json")
    weights = sorted(directory.glob("*.safetensors")) or sorted(directory.glob("*.bin"))
    if not weights:
        raise ModelLoadError(f"{directory}: model directory has no weights (*.safetensors)")
    for path in weights:
        if path.suffix == ".safetensors":
            _check_safetensors(path)
    check_model_tensors(directory, weights)


def _check_safetensors(path: Path) -> None:
    """Stop early on a truncated or corrupt safetensors file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 - safe_open is not a dict
                handle.get_slice(key)
    except Exception as exc:  # safetensors raises several types for the same fault
        raise ModelLoadError(
            f"{path}: unreadable safetensors file ({exc}); re-create or re-pull it"
        ) from None
    size = path.stat().st_size
    with path.open("rb") as handle:
        header_len = int.from_bytes(handle.read(8), "little")
    if header_len + 8 > size:
        raise ModelLoadError(f"{path}: truncated safetensors file ({size} bytes)")


@dataclass(frozen=True)
class ExpectedTensors:
    """The tensors a model of a ``config.json`` holds: ``shapes`` (name: shape), the names a
    file may leave out (tied to another tensor, or rebuilt on load) and the patterns of names
    a file may hold besides (buffers older files saved), and the model's key prefix."""

    shapes: dict[str, tuple[int, ...]]
    optional: frozenset[str]
    ignored: tuple[str, ...]
    prefix: str


def expected_tensors(directory: Path) -> ExpectedTensors:
    """What the weights of the model in ``directory`` must hold, from its ``config.json``
    (the model is built on the meta device: nothing is allocated)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(str(directory))
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise ModelLoadError(
            f"{directory}/config.json: not a usable model config ({exc})"
        ) from None
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    tied = set(getattr(model, "_tied_weights_keys", None) or ())
    tied = tied if getattr(config, "tie_word_embeddings", True) else set()
    missing_ok = tuple(getattr(model, "_keys_to_ignore_on_load_missing", None) or ())
    unexpected_ok = tuple(getattr(model, "_keys_to_ignore_on_load_unexpected", None) or ())
    optional = {n for n in shapes if n in tied or any(re.search(p, n) for p in missing_ok)}
    return ExpectedTensors(
        shapes, frozenset(optional), missing_ok + unexpected_ok, model.base_model_prefix
    )


LEGACY_NAMES = {"embed_out.weight": "lm_head.weight"}
"""Names that weights files use for tensors the model now calls otherwise (GPT-NeoX and
Pythia files, and Hugging Face's own save_pretrained, call the unembedding ``embed_out``)."""


def _stored_tensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` of every tensor of a weights file, one at a time."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open is not a dict
                yield name, handle.get_tensor(name)
        return
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a corrupt file
        raise ModelLoadError(
            f"{path}: unreadable weights file ({exc}); re-create or re-pull it"
        ) from None
    yield from state.items()


def _check_tensor(
    path: Path, name: str, tensor: torch.Tensor, expected: ExpectedTensors
) -> str | None:
    """The tensor's name as the model calls it (None: an ignored extra); stops on an
    unexpected name, a wrong shape or a non-finite value."""
    name_now = LEGACY_NAMES.get(name, name)
    key = name_now if name_now in expected.shapes else f"{expected.prefix}.{name_now}"
    if key not in expected.shapes:
        if any(re.search(pattern, name) for pattern in expected.ignored):
            return None
        raise ModelLoadError(
            f"{path}: unexpected tensor {name} (not part of the model its config.json describes)"
        )
    if tuple(tensor.shape) != expected.shapes[key]:
        raise ModelLoadError(
            f"{path}: tensor {name} has shape {list(tensor.shape)}, config.json needs "
            f"{list(expected.shapes[key])}"
        )
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        raise ModelLoadError(
            f"{path}: tensor {name} is not finite (NaN or inf in {bad} of its {tensor.numel()} "
            "entries); the weights are broken: retrain or re-fetch the model"
        )
    return key


def check_model_tensors(directory: Path, files: list[Path]) -> None:
    """The weight ``files`` of a model directory hold exactly the tensors its ``config.json``
    needs (names and shapes), all finite; else one line naming the file and the first
    missing, unexpected, misshapen or non-finite tensor. Nothing is randomly initialised."""
    expected = expected_tensors(directory)
    found: set[str] = set()
    for path in files:
        for name, tensor in _stored_tensors(path):
            key = _check_tensor(path, name, tensor, expected)
            if key is not None:
                found.add(key)
    missing = [name for name in expected.shapes if name not in found | expected.optional]
    if missing:
        shown = files[0] if len(files) == 1 else directory
        raise ModelLoadError(
            f"{shown}: tensor {missing[0]} is missing"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            + "; the file does not hold the model its config.json describes: re-create or re-pull it"
        )


def resolve_model_source(spec: str, weights: bool = True) -> str:
    """A local model directory, or a hub id if the hub can be reached; else a clear error.

    ``weights=False``: only the directory's existence is checked (a tokenizer is read).
    """
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(f"{spec}: expected a model directory, got a file")
        if weights:
            _check_local_model(path)
        return str(path.resolve())
    local_parent = path.parent != Path(".") and path.parent.is_dir()
    if spec.startswith((".", "/", "~")) or spec.count("/") != 1 or local_parent:
        raise ModelLoadError(f"{spec}: model directory does not exist")
    if not hub_reachable():
        raise ModelLoadError(
            f"{spec}: not a local directory, and the Hugging Face hub cannot be reached "
            "(offline). Download the model elsewhere (e.g. `huggingface-cli download "
            f"{spec} --local-dir DIR`) and give its local directory instead."
        )
    return spec


def load_model(spec: str, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """Load a model through TransformerLens with the paper's weight processing.

    ``spec`` is a local Hugging Face model directory or a hub id
    (e.g. ``stanford-crfm/alias-gpt2-small-x21``). Returns a ``TransformerBridge`` in
    eval mode with LayerNorm folded and writing weights / unembedding centred.
    """
    import logging

    from transformer_lens import TransformerBridge

    source = resolve_model_source(spec)
    logging.getLogger("transformer_lens").setLevel(logging.ERROR)
    try:
        bridge = TransformerBridge.boot_transformers(source, device=device, dtype=dtype)
    except Exception as exc:
        raise ModelLoadError(f"{spec}: TransformerLens could not load the model ({exc})") from exc
    bridge.enable_compatibility_mode()
    bridge.eval()
    if torch.device(device).type == "cpu":
        _own_memory(bridge)
    return bridge


@torch.no_grad()
def _own_memory(model) -> None:
    """Copy every weight of ``model`` into the process's own memory.

    Transformers maps the safetensors file into memory, and the bridge keeps the weights it
    did not rewrite as views of that mapping: the file's pages then stay resident beside
    the processed copies (0.3 GiB more per GPT2-small-shaped model, measured), which
    ``analysis.plan`` cannot see. After the copy nothing refers to the file any more.
    """
    for tensor in [*model.parameters(), *model.buffers()]:
        tensor.data = tensor.data.clone()


def model_tokenizer(path: str) -> Tokenizer:
    """The tokenizer saved with a model (``tokenizer.kind: model``): a local model directory,
    or a hub id when the hub can be reached. Returns its fast (``tokenizers``) tokenizer."""
    from transformers import AutoTokenizer

    try:
        source = resolve_model_source(path, weights=False)
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (ModelLoadError, OSError, ValueError) as exc:
        raise TokensError(f"tokenizer.path: {exc}") from None
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise TokensError(f"tokenizer.path: {path} has no fast tokenizer (tokenizer.json)")
    return check_tokenizer(backend, f"tokenizer.path: {path}")


def model_dtype(device: str) -> str:
    """The dtype correlate runs models in: ``bfloat16`` on CUDA (half the memory and
    bandwidth; the correlation products are bf16 there anyway), ``float32`` on CPU."""
    return "bfloat16" if device.startswith("cuda") else "float32"


def model_shape(model) -> tuple[int, int]:
    """``(n_layers, d_mlp)`` of a loaded model."""
    return int(model.cfg.n_layers), int(model.cfg.d_mlp)


@dataclass(frozen=True)
class ModelSpec:
    """What the checks of a group need to know of a model: its MLP shape, its vocabulary size
    (embedding rows) and the longest context it accepts (tokens)."""

    n_layers: int
    d_mlp: int
    d_vocab: int
    n_ctx: int


def model_spec(model) -> ModelSpec:
    """The ``ModelSpec`` of a loaded model."""
    cfg = model.cfg
    return ModelSpec(int(cfg.n_layers), int(cfg.d_mlp), int(cfg.d_vocab), int(cfg.n_ctx))


def config_shape(directory: str | Path) -> tuple[int, int]:
    """``(n_layers, d_mlp)`` from a Hugging Face GPT-2 or GPT-NeoX ``config.json``, without
    loading the model."""
    config_path = Path(directory) / "config.json"
    if not config_path.is_file():
        raise ModelLoadError(f"{config_path}: not found; not a model directory")
    config = json.loads(config_path.read_text())
    n_layers = int(config.get("n_layer", config.get("num_hidden_layers", 0)))
    d_mlp = config.get("n_inner") or config.get("intermediate_size") or 4 * int(config["n_embd"])
    return n_layers, int(d_mlp)


def mlp_hook_name(layer: int, kind: str = "post") -> str:
    """Hook point of layer ``layer``'s MLP activations: ``post`` (after the nonlinearity) or ``pre``."""
    if kind not in ("pre", "post"):
        raise ValueError(f"kind: expected 'pre' or 'post', got {kind!r}")
    return f"blocks.{layer}.mlp.hook_{kind}"


class _StopForward(Exception):
    """Raised by the last hook to skip the rest of the forward pass."""


@torch.no_grad()
def capture_mlp(
    model,
    tokens: torch.Tensor,
    kinds: tuple[str, ...] = ("post",),
    layers: range | None = None,
    fused: bool = True,
) -> dict[str, torch.Tensor]:
    """MLP activations of every layer (or of the consecutive ``layers``) for a batch.

    ``tokens``: ``[batch, pos]`` token ids. Returns, per kind in ``kinds``, a tensor
    ``[len(layers), batch, pos, d_mlp]`` in the model's dtype. The forward pass stops
    after the last captured layer's MLP (nothing after it is needed). ``fused``: run GPT-2
    models through ``trunk.Trunk`` (the bridge's modules with fused attention, checked
    against the hooks on the first batch); False, or any other model: the bridge's hooks.
    """
    n_layers, _ = model_shape(model)
    layers = range(n_layers) if layers is None else layers
    trunk = None
    if fused:
        probe = tokens[:2, :64]
        trunk = trunk_for(
            model, probe, lambda t: _hooked(model, t, ("pre", "post"), range(n_layers))
        )
    captured = trunk.run(tokens, layers, kinds) if trunk else _hooked(model, tokens, kinds, layers)
    return {kind: torch.stack(acts) for kind, acts in captured.items()}


def _hooked(model, tokens: torch.Tensor, kinds: tuple[str, ...], layers: range):
    """MLP activations through the bridge's hook points: per kind, one ``[batch, pos, d_mlp]``
    tensor per layer of ``layers``; the forward pass stops after the last of them."""
    captured: dict[str, list[torch.Tensor | None]] = {kind: [None] * len(layers) for kind in kinds}
    last = (layers[-1], "post" if "post" in kinds else "pre")  # the hook that fires last

    def hook_for(layer: int, kind: str):
        def hook(activation: torch.Tensor, hook) -> None:
            captured[kind][layer - layers.start] = activation.detach()
            if (layer, kind) == last:
                raise _StopForward

        return hook

    hooks = [
        (mlp_hook_name(layer, kind), hook_for(layer, kind)) for layer in layers for kind in kinds
    ]
    with contextlib.suppress(_StopForward):
        model.run_with_hooks(tokens, fwd_hooks=hooks)
    return captured


def processed_weights(model) -> dict[str, torch.Tensor]:
    """The processed weights the neuron statistics use.

    ``W_in [layers, d_model, d_mlp]``, ``b_in [layers, d_mlp]``,
    ``W_out [layers, d_mlp, d_model]``, ``W_U [d_model, vocab]``.
    """
    return {
        "W_in": model.W_in.detach().float().cpu(),
        "b_in": model.b_in.detach().float().cpu(),
        "W_out": model.W_out.detach().float().cpu(),
        "W_U": model.W_U.detach().float().cpu(),
    }


# --- checks at the boundary of the analysis stages ---


def check_device(device: str, key: str = "analysis.device") -> None:
    """Stop before loading anything when ``device`` asks for CUDA on a machine without it."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"{key}: {device!r} was asked for, but no CUDA device is available")


def check_group(specs: dict[str, ModelSpec]) -> None:
    """Models of one group must share their MLP shape and their vocabulary (tokenizer).

    ``specs``: ``{name: ModelSpec}``. The message lists each model's value.
    """
    shapes = {name: (spec.n_layers, spec.d_mlp) for name, spec in specs.items()}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(
            f"{name} {n_layers}x{d_mlp}" for name, (n_layers, d_mlp) in shapes.items()
        )
        raise ModelLoadError(
            f"models of a group must have the same (n_layers x d_mlp), got {listed}"
        )
    vocab = {name: spec.d_vocab for name, spec in specs.items()}
    if len(set(vocab.values())) > 1:
        listed = ", ".join(f"{name} {size}" for name, size in vocab.items())
        raise ModelLoadError(
            "models of a group must share one tokenizer, but their vocabulary sizes differ: "
            f"{listed}"
        )


def check_fits_tokens(spec: ModelSpec, name: str, tokens, vocab_size: int, source: str) -> None:
    """Stop if the token set ``tokens [sequences, context]`` (of a tokenizer with ``vocab_size``
    ids, read from ``source``) cannot be fed to the model ``name``: a context longer than the
    model's, or another tokenizer (vocabulary size). A model whose embedding is the
    tokenizer's size padded up to a multiple of 128 (Pythia: 50,277 ids, 50,304 rows) fits."""
    d_vocab = spec.d_vocab
    padded = d_vocab % 128 == 0 and vocab_size < d_vocab < vocab_size + 128
    if d_vocab != vocab_size and not padded:
        raise ModelLoadError(
            f"model {name} has a vocabulary of {d_vocab} tokens, but the token "
            f"set's tokenizer {source} has {vocab_size}: they do not share a tokenizer"
        )
    if tokens.shape[1] > spec.n_ctx:
        raise ModelLoadError(
            f"model {name} accepts at most {spec.n_ctx} tokens of context, but the "
            f"token set has sequences of {tokens.shape[1]} (tokens.context)"
        )
