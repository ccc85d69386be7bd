"""What the universal neurons do: the effects table of a group and its summary.

For every universal neuron of every model, its matched controls (same model) and its best
partner in every other model are ablated on the held-out tokens (``description.ablation``),
and their weight-based roles (``description.roles``) are set beside the measured effects.

The effects table of a model (``data/effects/seed{s}.parquet``) has one row per measured
(neuron, kind, of): ``layer, index, kind`` (universal | control | partner), ``of`` (the
universal neuron ``"seedX:L.I"`` a control or partner belongs to; "" for a universal row),
``control_widening`` (controls: decile distance of the cell drawn from, 0 = exact; else -1),
``delta_loss, kl, delta_entropy`` (nats/token), ``top_tokens`` (JSON ``[[token_id,
delta_logprob], ...]``: the mean change of the token's log-probability relative to the
vocabulary's median change, i.e. beyond the shift of the normaliser that moves every token
alike; the largest first), ``downstream_neurons`` (JSON ``{later layer: [[index, delta mean
|activation|], ...]}``), ``downstream_heads`` (JSON ``{later layer: [[head, delta mean
attention to position 0], ...]}``), ``null_fraction``, ``attention_score`` (signed score of
largest magnitude), ``attention_layer, attention_head``, ``vocab_family``, ``role``,
``role_agrees`` (1/0 where the measurement can check the role: an entropy neuron's ablation
lowers the entropy; an attention neuron's named head is the later head whose attention to
position 0 changes most; NaN otherwise), and on universal rows ``partner_effect_corr``
(mean over partners of the correlation of the per-token loss effects on the same tokens),
``partner_same_role`` (share of partners with the same role) and ``exceeds_controls``
(delta_loss above every one of its controls').
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from universal_neurons.config import EffectsConfig, FamiliesConfig
from universal_neurons.description.ablation import (
    Ablation,
    NeuronEffect,
    effect_correlation,
    measure_ablations,
    top_changes,
)
from universal_neurons.description.roles import (
    ROLES,
    attention_scores,
    best_partners,
    draw_controls,
    null_fractions,
    role_table,
)
from universal_neurons.errors import UserError
from universal_neurons.matching.activations import kept_mask
from universal_neurons.models.loading import load_model, processed_weights
from universal_neurons.models.tail import attention_context, forward_for

KINDS = ("universal", "control", "partner")
MEASURES = ("delta_loss", "kl", "delta_entropy")


def neuron_label(model: str, layer: int, index: int) -> str:
    """A neuron as the ``of`` column names it: ``"seed1:0.17"``."""
    return f"{model}:{layer}.{index}"


def measured_neurons(
    stats: dict[str, pd.DataFrame], max_corr: pd.DataFrame, config: EffectsConfig
) -> dict[str, pd.DataFrame]:
    """Which neurons each model measures: ``{model: [kind, of, layer, index,
    control_widening]}``. ``stats``: the stats tables (``layer, index, is_universal, dead,
    sparsity, w_out_norm``) by model name, in group order; ``max_corr``: correlate's table."""
    rows: dict[str, list[tuple]] = {model: [] for model in stats}
    for model, table in stats.items():
        universal = table[table["is_universal"].astype(bool)]
        pairs = [
            (int(layer), int(index))
            for layer, index in zip(universal["layer"], universal["index"], strict=True)
        ]
        rows[model] += [("universal", "", layer, index, -1) for layer, index in pairs]
        controls = draw_controls(table, pairs, config.controls, config.seed)
        rows[model] += [
            ("control", neuron_label(model, r.of_layer, r.of_index), r.layer, r.index, r.widening)
            for r in controls.itertuples()
        ]
        for r in best_partners(max_corr, model, pairs).itertuples():
            if r.partner in rows:
                of = neuron_label(model, r.of_layer, r.of_index)
                rows[r.partner].append(("partner", of, r.layer, r.index, -1))
    columns = ["kind", "of", "layer", "index", "control_widening"]
    return {model: pd.DataFrame(found, columns=columns) for model, found in rows.items()}


CANDIDATE = "candidate"
"""The ``kind`` of a candidate's own row in ``effects_candidates``' tables (``universal`` once
the effects stage has selected it)."""


class EffectsError(UserError):
    """Effects tables that do not cover what the effects stage is asked for."""


def as_candidates(table: pd.DataFrame) -> pd.DataFrame:
    """A table of ``measured_neurons`` made with the candidates as ``is_universal``: its
    ``universal`` rows are the candidates' (``kind`` = ``CANDIDATE``)."""
    if "kind" not in table:  # no row at all
        return table
    return table.assign(kind=table["kind"].replace("universal", CANDIDATE))


def select_universal(
    candidates: dict[str, pd.DataFrame], universal: dict[str, list[tuple[int, int]]]
) -> dict[str, pd.DataFrame]:
    """The effects tables of the universal neurons from those of the candidates: per model,
    the rows of its ``universal`` ``(layer, index)`` (``kind`` back to ``universal``) and the
    control and partner rows that belong to a universal neuron of any model, in their order.
    ``candidates``: ``effects_candidates``' tables by model, in group order. Raises
    EffectsError naming the first universal neuron that is not a candidate."""
    labels = {neuron_label(m, layer, i) for m, keys in universal.items() for layer, i in keys}
    selected = {}
    for model, table in candidates.items():
        if not len(table):  # a model with no candidate and no partner row: no columns either
            table = pd.DataFrame(columns=["kind", "of", "layer", "index"])
        own = table["kind"] == CANDIDATE
        keys = list(zip(table["layer"].astype(int), table["index"].astype(int), strict=True))
        measured = {key for key, is_own in zip(keys, own, strict=True) if is_own}
        missing = [key for key in universal[model] if key not in measured]
        if missing:
            layer, index = missing[0]
            raise EffectsError(
                f"{model} neuron {layer}.{index} is universal but was not ablated as a "
                f"candidate ({len(missing)} such): the effects_candidates outputs were made "
                "with a universality.candidate_threshold above universality.threshold; run "
                "effects_candidates again (dvc repro effects_candidates)"
            )
        wanted = set(universal[model])
        keep = [
            (key in wanted) if is_own else (of in labels)
            for key, is_own, of in zip(keys, own, table["of"], strict=True)
        ]
        rows = table[np.asarray(keep, bool)].reset_index(drop=True)
        selected[model] = rows.assign(kind=rows["kind"].replace(CANDIDATE, "universal"))
    return selected


def _json(value) -> str:
    """Compact JSON text of a cell."""
    return json.dumps(value, separators=(",", ":"))


def _measured_head(effect: NeuronEffect) -> tuple[int, int] | None:
    """The later head whose attention to position 0 the ablation changes most."""
    best = None
    for layer, change in effect.downstream_heads.items():
        head = int(np.abs(change).argmax())
        if best is None or abs(change[head]) > best[0]:
            best = (abs(change[head]), layer, head)
    return None if best is None else (best[1], best[2])


def role_agreement(role: str, effect: NeuronEffect, head: tuple[int, int]) -> float:
    """1.0 / 0.0 where the measured effect checks the weight-based ``role`` (module
    docstring), NaN where it does not. ``head``: the ``(layer, head)`` the weights name."""
    if role == "entropy":
        return float(effect.delta_entropy < 0)
    if role.startswith("attention_"):
        return float(_measured_head(effect) == head)
    return float("nan")


def effect_cells(effect: NeuronEffect, config: EffectsConfig) -> dict:
    """The measured columns of one row: the three means and the JSON lists."""
    k = config.top_downstream
    return {
        "delta_loss": effect.delta_loss,
        "kl": effect.kl,
        "delta_entropy": effect.delta_entropy,
        "top_tokens": _json(top_changes(relative_changes(effect.token_delta), config.top_tokens)),
        "downstream_neurons": _json(
            {str(layer): top_changes(v, k) for layer, v in effect.downstream_neurons.items()}
        ),
        "downstream_heads": _json(
            {str(layer): top_changes(v, k) for layer, v in effect.downstream_heads.items()}
        ),
    }


def model_rows(
    targets: pd.DataFrame,
    effects: dict[tuple[int, int], NeuronEffect],
    roles: pd.DataFrame,
    config: EffectsConfig,
) -> pd.DataFrame:
    """The effects table of one model before the cross-model columns: ``targets`` (from
    ``measured_neurons``), ``effects`` by ``(layer, index)``, ``roles`` (``roles.role_table``)."""
    role_of = roles.set_index(["layer", "index"])
    rows = []
    for target in targets.itertuples(index=False):
        key = (int(target.layer), int(target.index))
        effect, role = effects[key], role_of.loc[key]
        head = (int(role["attention_layer"]), int(role["attention_head"]))
        rows.append(
            {
                **target._asdict(),
                **effect_cells(effect, config),
                "null_fraction": float(role["null_fraction"]),
                "attention_score": float(role["attention_score"]),
                "attention_layer": head[0],
                "attention_head": head[1],
                "vocab_family": role["vocab_family"],
                "role": role["role"],
                "role_agrees": role_agreement(role["role"], effect, head),
            }
        )
    return pd.DataFrame(rows)


def add_group_columns(
    tables: dict[str, pd.DataFrame], per_token: dict[tuple[str, int, int], np.ndarray]
) -> dict[str, pd.DataFrame]:
    """Add ``partner_effect_corr``, ``partner_same_role`` and ``exceeds_controls`` to the
    universal rows (NaN / NA elsewhere). ``per_token``: ``{(model, layer, index): per-token
    loss change}`` of every measured neuron, all on the same tokens."""
    found = pd.concat([t.assign(model=m) for m, t in tables.items()], ignore_index=True)
    for model, table in tables.items():
        corr, same, exceeds = [], [], []
        for row in table.itertuples(index=False):
            if row.kind != "universal":
                corr.append(np.nan), same.append(np.nan), exceeds.append(None)
                continue
            label = neuron_label(model, row.layer, row.index)
            mine = per_token[(model, row.layer, row.index)]
            partners = found[(found["kind"] == "partner") & (found["of"] == label)]
            values = [
                effect_correlation(mine, per_token[(p.model, p.layer, p.index)])
                for p in partners.itertuples(index=False)
            ]
            corr.append(float(np.nanmean(values)) if np.isfinite(values).any() else np.nan)
            same.append(float((partners["role"] == row.role).mean()) if len(partners) else np.nan)
            controls = found[(found["kind"] == "control") & (found["of"] == label)]
            exceeds.append(
                bool(row.delta_loss > controls["delta_loss"].max()) if len(controls) else None
            )
        table["partner_effect_corr"] = corr
        table["partner_same_role"] = same
        table["exceeds_controls"] = pd.array(exceeds, dtype="boolean")
    return tables


def ablations(
    targets: pd.DataFrame, moments: pd.DataFrame, config: EffectsConfig
) -> list[Ablation]:
    """One ``Ablation`` per distinct measured neuron of ``targets``: its post-activation set to
    its mean over the analysis tokens (``moments``: collect's ``layer, index, post_mean``) or
    to 0 (``config.ablation``)."""
    means = moments.set_index(["layer", "index"])["post_mean"]
    keys = sorted({(int(r.layer), int(r.index)) for r in targets.itertuples(index=False)})
    zero = config.ablation == "zero"
    return [
        Ablation(layer, index, 0.0 if zero else float(means.loc[(layer, index)]))
        for layer, index in keys
    ]


def model_roles(
    model,
    stats: pd.DataFrame,
    moments: pd.DataFrame,
    tokens: torch.Tensor,
    excluded: np.ndarray,
    config: EffectsConfig,
    families: FamiliesConfig,
) -> pd.DataFrame:
    """Every neuron's weight-based role (``roles.role_table``) in a loaded ``model``: its
    processed weights, the position-0 keys and LayerNorm scales of ``tokens [batch, pos]``
    and the activation standard deviations of ``moments`` (``post_var``)."""
    weights = processed_weights(model)
    context = attention_context(model, tokens, kept_mask(tokens.cpu(), excluded).to(tokens.device))
    n_layers, d_mlp = weights["W_out"].shape[:2]
    variance = moments.sort_values(["layer", "index"])["post_var"].to_numpy()
    std = np.sqrt(np.clip(variance, 0, None)).reshape(n_layers, d_mlp)
    w_q = model.W_Q.detach().float().cpu()
    scores = attention_scores(
        weights["W_out"], w_q, context["key_first"].cpu(), context["inverse_scale"].cpu(), std
    )
    fractions = null_fractions(weights["W_out"], weights["W_U"], config.null_space_dims)
    return role_table(stats.sort_values(["layer", "index"]), fractions, scores, config, families)


@dataclass(frozen=True)
class ModelInputs:
    """What one model's measurement reads: its directory, the stats and collect tables, the
    held-out ``tokens [sequences, pos]`` and the ``excluded`` token ids."""

    directory: str
    stats: pd.DataFrame
    moments: pd.DataFrame
    tokens: np.ndarray
    excluded: np.ndarray


def measure_model(
    inputs: ModelInputs,
    targets: pd.DataFrame,
    config: EffectsConfig,
    families: FamiliesConfig,
    progress: bool = True,
) -> tuple[pd.DataFrame, dict[tuple[int, int], np.ndarray]]:
    """Ablate the ``targets`` of one model (from ``measured_neurons``): its effects table
    without the cross-model columns, and each measured neuron's per-token loss change."""
    model = load_model(inputs.directory, device=config.device)
    device = torch.device(config.device)
    first = torch.as_tensor(
        np.asarray(inputs.tokens[: config.batch_size], dtype=np.int64), device=device
    )
    roles = model_roles(
        model, inputs.stats, inputs.moments, first, inputs.excluded, config, families
    )
    todo = ablations(targets, inputs.moments, config)
    forward = forward_for(model, first[:2])
    w_out = model.W_out.detach()
    measured = measure_ablations(
        forward,
        w_out,
        inputs.tokens,
        inputs.excluded,
        todo,
        config.batch_size,
        config.neuron_batch,
        progress,
    )
    effects = {(e.layer, e.index): e for e in measured}
    table = model_rows(targets, effects, roles, config)
    return table, {key: effect.per_token for key, effect in effects.items()}


# --- summary ------------------------------------------------------------------------------


def _median(values: pd.Series) -> float | None:
    """Median, None when empty (JSON null)."""
    return float(values.median()) if len(values) else None


def _mean(values: pd.Series) -> float | None:
    """Mean of the finite values, None when there is none."""
    values = values.dropna()
    return float(values.mean()) if len(values) else None


def group_summary(rows: pd.DataFrame) -> dict:
    """The summary of effects rows (one model and layer, one model, or the group)."""
    universal = rows[rows["kind"] == "universal"]
    control = rows[rows["kind"] == "control"]
    summary: dict = {"universal": len(universal), "controls": len(control)}
    for measure in MEASURES:
        summary[f"median_{measure}_universal"] = _median(universal[measure])
        summary[f"median_{measure}_control"] = _median(control[measure])
    exceeds = universal["exceeds_controls"].dropna()
    summary["fraction_exceeding_controls"] = float(exceeds.mean()) if len(exceeds) else None
    summary["roles_universal"] = {role: int((universal["role"] == role).sum()) for role in ROLES}
    summary["roles_control"] = {role: int((control["role"] == role).sum()) for role in ROLES}
    summary["mean_partner_effect_corr"] = _mean(universal["partner_effect_corr"])
    summary["mean_partner_same_role"] = _mean(universal["partner_same_role"])
    checked = rows[rows["kind"] != "partner"].dropna(subset=["role_agrees"])
    summary["role_agreement"] = {
        role: _mean(checked.loc[checked["role"] == role, "role_agrees"])
        for role in sorted(set(checked["role"]))
    }
    return summary


SUMMARY_INPUTS = [
    "kind",
    "layer",
    *MEASURES,
    "exceeds_controls",
    "role",
    "partner_effect_corr",
    "partner_same_role",
    "role_agrees",
]
"""The columns ``group_summary`` reads (a model without universal neurons has none)."""


def with_summary_columns(table: pd.DataFrame) -> pd.DataFrame:
    """``table``, or an empty table with ``SUMMARY_INPUTS`` when it has no rows."""
    return table if len(table) else pd.DataFrame(columns=SUMMARY_INPUTS)


def effects_summary(tables: dict[str, pd.DataFrame], config: EffectsConfig) -> dict:
    """``results/effects.json``: the group, per model and per model and layer (a model with
    no universal neuron has empty entries)."""
    tables = {model: with_summary_columns(table) for model, table in tables.items()}
    found = pd.concat([t.assign(model=m) for m, t in tables.items()], ignore_index=True)
    models = {}
    for model, table in tables.items():
        per_layer = {str(layer): group_summary(rows) for layer, rows in table.groupby("layer")}
        models[model] = {**group_summary(table), "layers": per_layer}
    return {"ablation": config.ablation, "group": group_summary(found), "models": models}


def headline_metrics(summary: dict) -> dict:
    """``metrics/effects.json``: a few headline numbers of the group."""
    group = summary["group"]
    return {
        "median_delta_loss_universal": group["median_delta_loss_universal"],
        "median_delta_loss_control": group["median_delta_loss_control"],
        "fraction_exceeding_controls": group["fraction_exceeding_controls"],
        "mean_partner_effect_corr": group["mean_partner_effect_corr"],
        **{f"roles_{role}": count for role, count in group["roles_universal"].items()},
    }


@dataclass(frozen=True)
class _Column:
    """One column of ``effects_summary_rows``."""

    key: str
    label: str


SUMMARY_COLUMNS = (
    _Column("universal", "universal"),
    _Column("median_delta_loss_universal", "median Δloss (universal)"),
    _Column("median_delta_loss_control", "median Δloss (control)"),
    _Column("median_kl_universal", "median KL (universal)"),
    _Column("median_kl_control", "median KL (control)"),
    _Column("fraction_exceeding_controls", "above every control"),
    _Column("mean_partner_effect_corr", "partner effect corr"),
)


def effects_summary_rows(summary: dict) -> list[dict]:
    """One row per model and layer of ``results/effects.json`` for a report table:
    ``{"model", "layer", <label>: value}`` with the labels of ``SUMMARY_COLUMNS``."""
    rows = []
    for model, entry in summary["models"].items():
        for layer, values in entry["layers"].items():
            row = {"model": model, "layer": int(layer)}
            row.update({c.label: values.get(c.key) for c in SUMMARY_COLUMNS})
            rows.append(row)
    return rows


def per_layer_table(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """``metrics/effects_per_layer.csv``: per model, layer and kind the number of neurons and
    the median of each measure."""
    found = pd.concat([t.assign(model=m) for m, t in tables.items()], ignore_index=True)
    grouped = found.groupby(["model", "layer", "kind"])
    table = grouped[list(MEASURES)].median().add_prefix("median_")
    table.insert(0, "neurons", grouped.size())
    return table.reset_index()


def relative_changes(token_delta: np.ndarray) -> np.ndarray:
    """``[vocab]``: each token's mean log-probability change minus the vocabulary's median
    change (an ablation that only rescales the normaliser moves every token alike: that shift
    says nothing about which tokens the neuron promotes)."""
    return token_delta - np.median(token_delta)


def effects_section(row: dict, pieces=None) -> list[str]:
    """A neuron's effects as text lines (terminal view and neuron pages): ``row`` is one row
    of the effects table, as a dict."""
    lines = [
        f"ablation: Δloss {row['delta_loss']:+.5f} nats/token, KL {row['kl']:.5f}, "
        f"Δentropy {row['delta_entropy']:+.5f}",
        f"role: {row['role']} (null fraction {row['null_fraction']:.3f}, attention score "
        f"{row['attention_score']:+.3f} at head {row['attention_layer']}.{row['attention_head']})",
    ]
    if row.get("kind") == "universal":
        lines.append(
            f"above every control: {row['exceeds_controls']}; partner effect corr "
            f"{row['partner_effect_corr']:.3f}; partners with the same role "
            f"{row['partner_same_role']:.2f}"
        )
    tokens = json.loads(row["top_tokens"])
    shown = (lambda t: repr(pieces[t])) if pieces is not None else str
    lines.append("tokens moved most: " + ", ".join(f"{shown(t)} {d:+.4f}" for t, d in tokens))
    for name in ("downstream_neurons", "downstream_heads"):
        for layer, changes in json.loads(row[name]).items():
            listed = ", ".join(f"{i}:{d:+.4f}" for i, d in changes)
            lines.append(f"{name.replace('_', ' ')} L{layer}: {listed}")
    return lines
