"""Result tables: atomic CSV writes, upserts by key, markdown printing."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from experiments.common.atomic import atomic_write

RESULTS_DIR = Path(__file__).resolve().parents[1] / "results"


def write_csv_atomic(frame: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write `frame` to `path` through a temporary file in the same folder and a rename: readers see the old
    table or the new one, never half a file, whatever happens mid-write."""
    with atomic_write(path) as handle:
        frame.to_csv(handle, index=False)


def read_csv(path: str | os.PathLike) -> pd.DataFrame:
    """The table at `path`, or an empty frame when there is none yet."""
    path = Path(path)
    return pd.read_csv(path) if path.exists() and path.stat().st_size > 0 else pd.DataFrame()


def upsert_csv(path: str | os.PathLike, rows: pd.DataFrame | Sequence[dict], key: Sequence[str]) -> pd.DataFrame:
    """Insert `rows` into the CSV at `path`, replacing existing rows with the same values in the `key` columns.

    Columns are the union of old and new ones (missing cells empty); order of first appearance is kept.
    Returns the table as written.
    """
    new = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    missing = [k for k in key if k not in new.columns]
    if missing:
        raise ValueError(f"rows lack the key column(s) {missing}; key is {list(key)}")
    old = read_csv(path)
    if not old.empty:
        for k in key:
            if k not in old.columns:
                old[k] = pd.NA
        old_keys = old[list(key)].astype(str).agg("\x1f".join, axis=1)
        new_keys = set(new[list(key)].astype(str).agg("\x1f".join, axis=1))
        old = old[~old_keys.isin(new_keys)]
    table = pd.concat([old, new], ignore_index=True) if not old.empty else new.reset_index(drop=True)
    table = table.drop_duplicates(subset=list(key), keep="last", ignore_index=True)
    write_csv_atomic(table, path)
    return table


def to_markdown(frame: pd.DataFrame, floatfmt: str = ".4g") -> str:
    """A GitHub markdown table of `frame` (tabulate underneath)."""
    return frame.to_markdown(index=False, floatfmt=floatfmt)
