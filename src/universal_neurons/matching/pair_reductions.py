"""What the later stages need of a pair's full statistics, taken while correlate holds them.

A pair's ``CrossMoments`` hold an ``[N, N]`` float64 matrix (8 MB per pair of the default
group, 84 MB for its ten pairs). Three later stages read more of it than correlate's maxima,
none of them the whole matrix:

- ``baseline``: the rotation baseline's maxima of every draw (``baseline.group_baselines``,
  analytic from the cross-covariance and collect's within-layer covariances);
- ``one_to_one``: per pair the maximum-weight assignment and the mutual best matches
  (``one_to_one.match_pairs``, no threshold);
- ``uncertainty_resamples``: per neuron and partner its ``uncertainty.candidates`` best
  partner neurons and rotated directions (``resampling.candidate_links``).

Correlate computes the three from the statistics in memory and writes them
(``save_reductions``), so that no ``[N, N]`` file is written at any size and a rerun of
correlate adds megabytes, not the pair statistics, to the data remote (docs/sharing.md).
The results are those of the same functions applied to the pair files that correlate wrote
before: the reductions moved, their definitions did not.

Files in ``data/correlate/``: ``baseline_draws.parquet`` (rows ``model, partner, sample,
layer, index, baseline``, as the units' draws above ``correlate.full_pairs_max_neurons``),
``one_to_one_matches.parquet`` (per pair ``a__b`` and neuron of ``a``: ``partner, corr,
mutual``), ``one_to_one_pairs.json`` (per pair its record) and
``candidate_links.safetensors`` (``[N, k]`` int32 per link, their order and the settings
in the metadata).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from universal_neurons.errors import MissingInputError, UserError
from universal_neurons.matching.baseline import group_baselines
from universal_neurons.matching.correlation import CrossMoments
from universal_neurons.matching.one_to_one import PairMatch, match_pairs, matches_by_model
from universal_neurons.matching.resampling import candidate_links, rotation_draws

BASELINE_DRAWS = "baseline_draws.parquet"
"""The baseline maxima of every draw (rows ``model, partner, sample, layer, index,
baseline``, as ``baseline.parquet``)."""
MATCHES = "one_to_one_matches.parquet"
MATCH_RECORDS = "one_to_one_pairs.json"
LINKS = "candidate_links.safetensors"

Pairs = Mapping[tuple[str, str], CrossMoments]
"""The group's pair statistics, ``{(a, b): CrossMoments}`` (x = a), a before b."""


@dataclass(frozen=True)
class CandidateSettings:
    """What the candidate links depend on besides the statistics: ``kind`` (baseline.kind),
    ``candidates`` (uncertainty.candidates), ``draws`` (uncertainty.baseline_draws) and
    ``seed`` (uncertainty.seed)."""

    kind: str
    candidates: int
    draws: int
    seed: int

    @classmethod
    def of(cls, params) -> CandidateSettings:
        """The settings of ``params`` (``Params``)."""
        cfg = params.uncertainty
        return cls(params.baseline.kind, cfg.candidates, cfg.baseline_draws, cfg.seed)


@dataclass(frozen=True)
class Reductions:
    """A group's reductions (module docstring): ``baselines`` (table), ``matches`` (per pair
    ``(PairMatch from a's side, record)``), ``links`` (``{(model, target): [N, k]}``) and the
    ``candidates`` settings they were taken with."""

    baselines: pd.DataFrame
    matches: dict[tuple[str, str], tuple[PairMatch, dict]]
    links: dict[tuple[str, str], torch.Tensor]
    candidates: CandidateSettings


def reduce_pairs(
    pairs: Pairs,
    partner_ids: Mapping[str, int],
    within: Mapping[str, np.ndarray],
    baseline,
    candidates: CandidateSettings,
    dead_variance: float = 0.0,
) -> Reductions:
    """The three reductions of ``pairs`` (one pair's temporaries at a time). ``partner_ids``:
    per model its training seed (it seeds the rotations); ``within``: per model collect's
    within-layer covariances ``[layers, d_mlp, d_mlp]``; ``baseline``: ``params.baseline``."""
    names = list(partner_ids)
    shape = within[names[0]].shape[:2]  # (layers, d_mlp)
    baselines = group_baselines(pairs.items(), partner_ids, within, baseline, dead_variance)
    correlations = ((key, stats.correlation(dead_variance).numpy()) for key, stats in pairs.items())
    matches = match_pairs(correlations)
    rotations = rotation_draws(
        candidates.kind, names, partner_ids, shape, candidates.draws, candidates.seed
    )
    links = candidate_links(pairs.items(), within, rotations, candidates.candidates, dead_variance)
    return Reductions(baselines, matches, links, candidates)


def save_reductions(folder: Path, reductions: Reductions) -> None:
    """Write the four files of ``reductions`` into ``folder`` (a stage's temporary output)."""
    reductions.baselines.to_parquet(folder / BASELINE_DRAWS, index=False)
    save_matches(folder, reductions.matches)
    save_links(folder, reductions.links, reductions.candidates)


def save_matches(folder: Path, matches: Mapping[tuple[str, str], tuple[PairMatch, dict]]) -> None:
    """``one_to_one_matches.parquet`` and ``one_to_one_pairs.json`` of ``matches``
    (``one_to_one.match_pairs``) in ``folder``."""
    rows = [
        pd.DataFrame(
            {
                "pair": f"{a}__{b}",
                "neuron": np.arange(len(match.partner), dtype=np.int64),
                "partner": match.partner,
                "corr": match.corr,
                "mutual": match.mutual,
            }
        )
        for (a, b), (match, _) in matches.items()
    ]
    pd.concat(rows, ignore_index=True).to_parquet(folder / MATCHES, index=False)
    records = {f"{a}__{b}": record for (a, b), (_, record) in matches.items()}
    (folder / MATCH_RECORDS).write_text(json.dumps(records, indent=2) + "\n")


def save_links(folder: Path, links: Mapping, settings: CandidateSettings) -> None:
    """``candidate_links.safetensors`` in ``folder``: the links as int32 (``N`` < 2**31) under ``link{i}``; their keys in order and the
    settings in one metadata string (one key: safetensors writes a map in arbitrary order)."""
    from safetensors.torch import save_file

    order = [list(key) for key in links]
    tensors = {
        f"link{i}": links[tuple(key)].to(torch.int32).contiguous() for i, key in enumerate(order)
    }
    meta = {"links": json.dumps({"order": order, "settings": asdict(settings)}, sort_keys=True)}
    save_file(tensors, str(folder / LINKS), meta)


def _reduction_file(folder: Path, name: str) -> Path:
    """``folder / name``, which correlate writes for a group of full pair statistics."""
    path = folder / name
    if not path.is_file():
        raise MissingInputError(
            f"{path}: not found; correlate writes it for a group of at most "
            "correlate.full_pairs_max_neurons neurons per model (rerun correlate)"
        )
    return path


def load_matches(
    folder: Path, pairs: list[str], n_b: int
) -> tuple[dict[str, dict[str, PairMatch]], dict[str, dict]]:
    """``({a: {m: PairMatch}}, {"a__b": record})`` of correlate's ``pairs`` (``a__b``, in
    their order; ``one_to_one.matches_by_model``); ``n_b``: neurons per model."""
    table = pd.read_parquet(_reduction_file(folder, MATCHES))
    records = json.loads(_reduction_file(folder, MATCH_RECORDS).read_text())
    by_pair = {key: rows for key, rows in table.groupby("pair", sort=False)}
    missing = [key for key in pairs if key not in by_pair or key not in records]
    if missing:
        raise UserError(f"{folder / MATCHES}: no matching of pairs {missing}; rerun correlate")

    def match(rows: pd.DataFrame) -> PairMatch:
        rows = rows.sort_values("neuron")
        partner = rows["partner"].to_numpy(np.int64)
        return PairMatch(partner, rows["corr"].to_numpy(np.float64), rows["mutual"].to_numpy(bool))

    ordered = ((tuple(key.split("__")), match(by_pair[key])) for key in pairs)
    return matches_by_model(ordered, n_b), {key: records[key] for key in pairs}


def load_links(folder: Path, wanted: CandidateSettings) -> dict[tuple[str, str], torch.Tensor]:
    """``{(model, target): candidates [N, k]}`` int64, in the order correlate took them,
    checked to have been taken with the ``wanted`` settings."""
    from safetensors import safe_open

    path = _reduction_file(folder, LINKS)
    with safe_open(str(path), framework="pt", device="cpu") as handle:
        meta = json.loads((handle.metadata() or {}).get("links", "{}"))
        taken = meta.get("settings")
        if taken != asdict(wanted):
            raise UserError(
                f"{path}: correlate took the candidate links with {taken}, but the "
                f"parameters (baseline.kind, uncertainty.candidates, uncertainty.baseline_draws, "
                f"uncertainty.seed) are {asdict(wanted)}; rerun correlate (dvc repro)"
            )
        return {
            tuple(key): handle.get_tensor(f"link{i}").to(torch.int64)
            for i, key in enumerate(meta["order"])
        }
