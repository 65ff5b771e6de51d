"""The data block of the binary formats (IDX, smallNORB's binary matrix): header-described, size-checked."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from capsules.datasets.errors import DatasetFileError


def read_payload(data: bytes, header_size: int, shape: tuple[int, ...], dtype: np.dtype, type_name: str,
                 source: str | Path) -> np.ndarray:
    """The array of `shape` and `dtype` stored after a `header_size`-byte header (a view of `data`).

    Raises DatasetFileError naming `source` when the data after the header is not exactly that many bytes.
    """
    count = math.prod(shape)
    expected, found = count * dtype.itemsize, len(data) - header_size
    if found != expected:
        raise DatasetFileError(
            source, f"size does not match the header: shape {list(shape)} of {type_name} needs {expected} bytes "
            f"of data, file has {found} ({'truncated' if found < expected else 'trailing bytes'})"
        )
    return np.frombuffer(data, dtype, count=count, offset=header_size).reshape(shape)
