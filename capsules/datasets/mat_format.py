"""MATLAB .mat files (the version 5 format that scipy.io reads), as SVHN and affNIST distribute their data."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from capsules.datasets.errors import DatasetFileError
from capsules.datasets.files import read_bytes


def parse_mat(data: bytes, variables: Sequence[str], source: str | Path) -> dict[str, np.ndarray]:
    """The named variables of a .mat file's bytes (gzip already undone).

    Raises DatasetFileError naming `source` when scipy cannot read the bytes (corrupt, truncated, not a .mat file,
    or MATLAB's HDF5-based version 7.3) or a variable is missing.
    """
    from scipy.io import loadmat  # scipy is imported only by the loaders that need it

    try:
        content = loadmat(io.BytesIO(data), variable_names=list(variables))
    except Exception as error:  # scipy raises ValueError, TypeError, MatReadError, NotImplementedError (v7.3)...
        raise DatasetFileError(source, f"not a readable MATLAB .mat file ({type(error).__name__}: {error})") from error
    missing = [name for name in variables if name not in content]
    if missing:
        raise DatasetFileError(source, f"the .mat file has no variable {', '.join(map(repr, missing))}")
    return {name: content[name] for name in variables}


def read_mat(path: Path, variables: Sequence[str]) -> dict[str, np.ndarray]:
    """`parse_mat` of a file, gzip-compressed or not."""
    return parse_mat(read_bytes(path), variables, path)


def integer_labels(values: np.ndarray, source: str | Path, what: str) -> np.ndarray:
    """values (any integer dtype, or floats holding whole numbers, as MATLAB often saves them) as int64, flattened.

    Raises DatasetFileError naming `source` and `what` otherwise.
    """
    if not isinstance(values, np.ndarray) or not (np.issubdtype(values.dtype, np.integer)
                                                  or np.issubdtype(values.dtype, np.floating)):
        found = values.dtype if isinstance(values, np.ndarray) else type(values).__name__
        raise DatasetFileError(source, f"expected {what} as numbers, found {found}")
    if np.issubdtype(values.dtype, np.floating) and not np.all(np.isfinite(values) & (values == np.round(values))):
        raise DatasetFileError(source, f"expected {what} as whole numbers, found fractions or NaN")
    return values.astype(np.int64).reshape(-1)
