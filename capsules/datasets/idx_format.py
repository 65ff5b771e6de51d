"""Reader and writer for the IDX format of the MNIST files.

An IDX file is two zero bytes, a type byte, a byte with the number of dimensions, that many big-endian uint32
sizes, then the elements in row-major order, big-endian.
"""

import struct
from pathlib import Path

import numpy as np

from capsules.datasets.binary_payload import read_payload
from capsules.datasets.errors import DatasetFileError
from capsules.datasets.files import read_bytes, write_bytes

_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def parse_idx(data: bytes, source: str | Path) -> np.ndarray:
    """Decode IDX bytes into an array of the stored shape, in native byte order.

    The result may be a read-only view of `data`. Raises DatasetFileError naming `source` when the magic is
    wrong or the data size does not match the header.
    """
    if len(data) < 4:
        raise DatasetFileError(source, f"truncated: {len(data)} bytes, shorter than the 4-byte IDX magic")
    type_code, ndim = data[2], data[3]
    if data[0] != 0 or data[1] != 0 or type_code not in _TYPES:
        raise DatasetFileError(
            source, f"wrong IDX magic 0x{data[:4].hex()}: expected 0x0000, a type byte in "
            f"{[hex(code) for code in _TYPES]} and the number of dimensions"
        )
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise DatasetFileError(
            source, f"truncated header: {ndim} dimensions need {header_size} bytes, file has {len(data)}"
        )
    shape = struct.unpack(f">{ndim}I", data[4:header_size])
    dtype = _TYPES[type_code]
    array = read_payload(data, header_size, shape, dtype, dtype.name, source)
    return array if dtype.isnative else array.astype(dtype.newbyteorder("="))


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file, gzip-compressed or not (see `parse_idx`)."""
    return parse_idx(read_bytes(path), path)


def write_idx(path: Path, array: np.ndarray, gzip: bool = False) -> None:
    """Write `array` (uint8, int8, int16, int32, float32 or float64) as an IDX file, gzip-compressed if asked."""
    array = np.asarray(array)
    codes = {dtype.newbyteorder("="): code for code, dtype in _TYPES.items()}
    native = array.dtype.newbyteorder("=")
    if native not in codes:
        raise ValueError(f"IDX cannot hold {array.dtype}; use one of {[d.name for d in codes]}")
    code = codes[native]
    header = struct.pack(f">BBBB{array.ndim}I", 0, 0, code, array.ndim, *array.shape)
    write_bytes(Path(path), header + array.astype(_TYPES[code]).tobytes(), gzip)
