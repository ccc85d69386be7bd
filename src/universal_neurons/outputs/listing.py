"""The most universal neurons of a model as a table (``universal-neurons show``)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from universal_neurons.description.statistics import EMERGENCE_COLUMN
from universal_neurons.errors import MissingInputError, UserError
from universal_neurons.io import read_parquet

SHOW_COLUMNS = (
    "layer",
    "index",
    "is_universal",
    "excess_corr",
    "max_corr",
    "max_baseline",
    "input_bias",
    "kurt",
    "sparsity",
    "skew",
    "w_in_norm",
    "w_out_norm",
    "vocab_kurt",
    EMERGENCE_COLUMN,
)
"""The key statistics ``universal-neurons show`` lists, most telling first: a table fitted to
a terminal's width drops columns from the end."""


def find_table(model: str, stats_dir: Path, name: str) -> Path:
    """The neuron table of ``model``: ``model`` itself when it is a ``.parquet`` path, else
    ``{stats_dir}/{name}.parquet`` (``name``: the model's name, e.g. ``seed1``); a clear error
    naming the known models otherwise."""
    candidate, stats_dir = Path(model), Path(stats_dir)
    if candidate.suffix == ".parquet":
        if not candidate.is_file():
            raise MissingInputError(f"{candidate}: neuron table not found")
        return candidate
    path = stats_dir / f"{name}.parquet"
    if path.is_file():
        return path
    known = sorted(p.stem for p in stats_dir.glob("*.parquet")) if stats_dir.is_dir() else []
    raise UserError(
        f"MODEL: unknown model {model!r}; "
        + (
            f"known models in {stats_dir}: {', '.join(known)}"
            if known
            else f"{stats_dir} has no neuron tables (run `dvc repro stats`)"
        )
    )


NEURON_COLUMNS = ("layer", "index", "is_universal", "excess_corr")
"""Columns every neuron table has (the universality and stats stages' tables)."""


def read_neuron_table(path: Path) -> pd.DataFrame:
    """The neuron table at ``path``, checked to be one (a parquet with ``NEURON_COLUMNS``)."""
    table = read_parquet(path, "stats")
    missing = [column for column in NEURON_COLUMNS if column not in table.columns]
    if missing:
        raise UserError(
            f"{path}: not a neuron table (no column {', '.join(missing)}); give a table of "
            "data/stats/ or data/universality/"
        )
    return table


def _check_listing(table: pd.DataFrame, sort: str, layer: int | None, top: int) -> None:
    """Stop on a sort column, a count or a layer the table does not have."""
    if sort not in table.columns:
        raise UserError(
            f"--sort: unknown column {sort!r}; columns: {', '.join(map(str, table.columns))}"
        )
    if top <= 0:
        raise UserError(f"--top: expected a positive number, got {top}")
    if layer is not None:
        layers = sorted(int(value) for value in table["layer"].unique())
        if layer not in layers:
            raise UserError(f"--layer: no layer {layer}; the model has layers {layers}")


def top_neurons(
    table: pd.DataFrame,
    sort: str = "excess_corr",
    layer: int | None = None,
    top: int = 20,
    ascending: bool = False,
    universal_only: bool = False,
) -> pd.DataFrame:
    """The ``top`` neurons by ``sort`` (descending unless ``ascending``; NaN last), with
    ``SHOW_COLUMNS`` plus the sort column; only ``layer`` if given."""
    _check_listing(table, sort, layer, top)
    if layer is not None:
        table = table[table["layer"] == layer]
    if universal_only:
        table = table[table["is_universal"].astype(bool)]
    columns = [c for c in SHOW_COLUMNS if c in table.columns] + (
        [sort] if sort not in SHOW_COLUMNS else []
    )
    ordered = table.sort_values(
        [sort, "layer", "index"],
        ascending=[ascending, True, True],
        na_position="last",
        kind="stable",
    )
    return ordered[columns].head(top).reset_index(drop=True)


def _text(listing: pd.DataFrame) -> str:
    """Aligned text, 4 significant digits."""
    return listing.to_string(index=False, float_format=lambda v: f"{v:.4g}")


def fitted_text(listing: pd.DataFrame, width: int, keep: str) -> str:
    """``listing`` as aligned text at most ``width`` wide: columns are dropped from the end
    (but never ``NEURON_COLUMNS`` or ``keep``, the sort column), and a last line names them."""
    columns = list(listing.columns)
    optional = [c for c in columns if c not in NEURON_COLUMNS and c != keep]
    dropped: list[str] = []
    text = _text(listing)
    while optional and max(map(len, text.splitlines() or [""])) > width:
        dropped.insert(0, optional.pop())
        text = _text(listing[[c for c in columns if c not in dropped]])
    if dropped:
        text += f"\n(not shown: {', '.join(dropped)}; --wide shows every column)"
    return text


def format_listing(
    listing: pd.DataFrame, output_format: str, width: int | None = None, sort: str = ""
) -> str:
    """``table``: aligned text, 4 significant digits, fitted to ``width`` columns when given
    (``fitted_text``, keeping the ``sort`` column); ``csv``: every column, comma-separated
    with a header (ends with a newline)."""
    if output_format == "csv":
        return listing.to_csv(index=False)
    return _text(listing) if width is None else fitted_text(listing, width, sort)
