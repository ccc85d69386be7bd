"""Where every file of the project lives: one ``Layout``, relative to the project's root.

The root is the folder of ``dvc.yaml`` (DVC runs every stage there), so ``Layout()``
gives the paths ``dvc.yaml`` names: ``data/tokens``, ``models/seed1``, ``data/stats/seed1.parquet``,
``results/stats.json``, ... A layout rooted elsewhere (``Layout.at(tmp)``) holds a whole
workspace in another folder; the token set, the models, the data folder and the parameter
file can each be placed elsewhere too (``Layout.at(tmp, tokens=..., models=...)``).

A model of the group is named after its seed (``seed1``): its directory, its tables and
its entries in every metrics file use that name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SUMMARY_FILE = "summary.json"
"""The file in an analysis stage's output folder that says what it was made from."""
SEED_ITEM = "${item}"
"""The seed of a per-seed stage as ``dvc.yaml`` writes it (``foreach: ${train.seeds}``)."""


def model_name(seed: int | str) -> str:
    """Name of the model of ``seed`` in every path, table and metric: ``seed{s}``."""
    return f"seed{seed}"


@dataclass(frozen=True)
class Layout:
    """Every path of the project. ``Layout()``: the project's own layout, relative to the
    working directory; fields are the places that may be moved (``Layout.at``)."""

    root: Path = Path(".")
    params: Path = Path("params.yaml")
    tokens: Path = Path("data/tokens")
    models: Path = Path("models")
    data: Path = Path("data")

    @classmethod
    def at(
        cls,
        root: str | Path,
        *,
        params: str | Path | None = None,
        tokens: str | Path | None = None,
        models: str | Path | None = None,
        data: str | Path | None = None,
    ) -> Layout:
        """The layout of a workspace in ``root``; the keyword arguments move single places."""
        root = Path(root)
        return cls(
            root=root,
            params=Path(params) if params is not None else root / "params.yaml",
            tokens=Path(tokens) if tokens is not None else root / "data" / "tokens",
            models=Path(models) if models is not None else root / "models",
            data=Path(data) if data is not None else root / "data",
        )

    # --- models ---------------------------------------------------------------------------

    def model(self, seed: int | str) -> Path:
        """The model directory of ``seed`` (Hugging Face format, plus ``curve.csv`` and
        ``training.json`` for a trained model)."""
        return self.models / model_name(seed)

    # --- stage outputs under data/ -------------------------------------------------------

    @property
    def params_check(self) -> Path:
        """``data/params.valid``: the validate stage's output, which every other stage reads."""
        return self.data / "params.valid"

    def stage_dir(self, stage: str) -> Path:
        """The output folder of ``stage`` under ``data/`` (``data/correlate``)."""
        return self.data / stage

    def summary(self, stage: str, seed: int | str | None = None) -> Path:
        """What an analysis stage's output was made from (``data/correlate/summary.json``;
        per model: ``data/collect/seed1/summary.json``): ``pipeline.inputs`` reads and writes it."""
        folder = self.stage_dir(stage) if seed is None else self.model_dir(stage, seed)
        return folder / SUMMARY_FILE

    def model_dir(self, stage: str, seed: int | str) -> Path:
        """A per-model output folder of ``stage`` (``data/collect/seed1``)."""
        return self.stage_dir(stage) / model_name(seed)

    def table(self, stage: str, name: str) -> Path:
        """The per-model parquet table ``name`` of ``stage`` (``data/stats/seed1.parquet``)."""
        return self.stage_dir(stage) / f"{name}.parquet"

    def analysis_results(self) -> list[Path]:
        """What the analysis stages conclude, as the report and the MLflow run read it: the
        universality, stats and family tables and their results documents (and the baseline's)."""
        tables = [self.stage_dir(stage) for stage in ("universality", "stats", "families")]
        names = ("universality.json", "baseline.json", "stats.json", "families.json")
        return tables + [self.result(name) for name in names]

    def headline_metrics(self) -> list[Path]:
        """The analysis stages' headline metrics files (``dvc metrics show``), beside the
        training summary that the report stage writes."""
        return [
            self.metric(name) for name in ("universality.json", "findings.json", "families.json")
        ]

    # --- metrics, report, tracking, DVC ----------------------------------------------------

    @property
    def metrics(self) -> Path:
        """The metrics folder (DVC metrics and plots, not cached): the headline numbers people
        compare (``dvc metrics show``); the whole documents are in ``results/``."""
        return self.root / "metrics"

    def metric(self, name: str) -> Path:
        """One metrics file (``metrics/universality.json``)."""
        return self.metrics / name

    @property
    def results(self) -> Path:
        """The results folder: each stage's whole summary document (git-tracked, not cached),
        of which ``metrics/`` keeps the few headline numbers."""
        return self.root / "results"

    def result(self, name: str) -> Path:
        """One results document (``results/stats.json``)."""
        return self.results / name

    @property
    def report(self) -> Path:
        """The report folder (``index.html``, ``figures/``, ``curves/``)."""
        return self.root / "report"

    @property
    def run_record(self) -> Path:
        """``tracking/run.json``: which MLflow run holds the pipeline state."""
        return self.root / "tracking" / "run.json"

    @property
    def dvc_files(self) -> tuple[Path, Path]:
        """``dvc.yaml`` and ``dvc.lock``."""
        return self.root / "dvc.yaml", self.root / "dvc.lock"
