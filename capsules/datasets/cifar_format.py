"""Reader and writer of CIFAR-10's python batches: pickled dicts, unpickled without running foreign code.

A batch (data_batch_1..5, test_batch in cifar-10-batches-py/) is a pickle, written by Python 2, of a dict with
"data": uint8 [N, 3072] (each row the 1024 red, then green, then blue pixels of a 32x32 image, row-major),
"labels": N ints in 0..9, "batch_label" and "filenames". Python 3 reads Python 2 strings with encoding="latin1".

A pickle can name any Python callable; this reader resolves only the few that numpy arrays need (so a foreign or
malicious file fails with DatasetFileError instead of running code), then checks the keys, types and sizes.
"""

from __future__ import annotations

import codecs
import io
import pickle
from pathlib import Path

import numpy as np

from capsules.datasets.errors import DatasetFileError

PIXELS = 3 * 32 * 32
_RECONSTRUCT = np.zeros(0).__reduce__()[0]  # numpy's own name for it moved between versions
_FROMBUFFER = np.zeros(0).__reduce_ex__(5)[0]
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,  # how Python 3 writes bytes in protocol 2
}


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Resolves the globals of `_ALLOWED` and nothing else."""

    def find_class(self, module: str, name: str) -> object:
        try:
            return _ALLOWED[module, name]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a CIFAR batch holds only numpy arrays, "
                                         "lists, ints and strings") from None


def parse_batch(data: bytes, source: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """images uint8 [N, 3, 32, 32] and labels int64 [N] of one pickled batch.

    Raises DatasetFileError naming `source` when the bytes are not a pickle, name anything but numpy arrays, or do
    not hold "data" uint8 [N, 3072] and N "labels" in 0..9.
    """
    try:
        batch = _ArraysOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()
    except Exception as error:  # a corrupt pickle raises nearly anything (UnpicklingError, EOFError, ValueError...)
        raise DatasetFileError(source, f"not a CIFAR-10 python batch: cannot unpickle it ({error})") from error
    if not isinstance(batch, dict):
        raise DatasetFileError(source, f"not a CIFAR-10 python batch: expected a pickled dict, found "
                                       f"{type(batch).__name__}")
    batch = {key.decode("latin1") if isinstance(key, bytes) else key: value for key, value in batch.items()}
    missing = [key for key in ("data", "labels") if key not in batch]
    if missing:
        raise DatasetFileError(source, f"not a CIFAR-10 python batch: no {' or '.join(map(repr, missing))} entry "
                                       f"(keys: {sorted(map(str, batch))})")
    images, labels = batch["data"], batch["labels"]
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 2 or images.shape[1] != PIXELS:
        found = f"{images.dtype} {list(images.shape)}" if isinstance(images, np.ndarray) else type(images).__name__
        raise DatasetFileError(source, f"expected 'data' uint8 [N, {PIXELS}], found {found}")
    if not isinstance(labels, list | np.ndarray) or any(isinstance(x, bool) or not isinstance(x, int | np.integer)
                                                        for x in labels):
        raise DatasetFileError(source, "expected 'labels' a list of ints")
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if labels.shape[0] != images.shape[0]:
        raise DatasetFileError(source, f"{labels.shape[0]} labels for {images.shape[0]} images")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        bad = int(labels[(labels < 0) | (labels > 9)][0])
        raise DatasetFileError(source, f"label {bad} outside 0..9")
    return images.reshape(-1, 3, 32, 32), labels


def write_batch(path: Path, images: np.ndarray, labels: np.ndarray, batch_label: str = "batch") -> None:
    """Write images uint8 [N, 3, 32, 32] and labels [N] as a pickled batch (the layout `parse_batch` reads)."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (3, 32, 32):
        raise ValueError(f"images must be uint8 [N, 3, 32, 32], got {images.dtype} {list(images.shape)}")
    batch = {"batch_label": batch_label, "labels": [int(label) for label in labels],
             "data": np.ascontiguousarray(images.reshape(len(images), PIXELS)),
             "filenames": [f"image_{index}.png" for index in range(len(images))]}
    Path(path).write_bytes(pickle.dumps(batch, protocol=2))
