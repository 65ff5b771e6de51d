"""Reader and writer for the binary matrix format of the smallNORB files.

Little-endian: int32 magic (the element type), int32 ndim, max(3, ndim) int32 dimensions (those past ndim are 1),
then the elements in row-major order.

The "packed" type (magic 0x1E3D4C52) is named by the NORB readme but never used by its files, nor defined there.
We read it as SN/Lush's packed storage: one signed byte per element holding a fixed-point number with 4 fraction
bits (multiples of 1/16 in [-8, 8)), returned as float32.
"""

import struct
from pathlib import Path

import numpy as np

from capsules.datasets.binary_payload import read_payload
from capsules.datasets.errors import DatasetFileError
from capsules.datasets.files import read_bytes, write_bytes

MAGIC: dict[int, str] = {
    0x1E3D4C51: "float32",
    0x1E3D4C52: "packed",
    0x1E3D4C53: "float64",
    0x1E3D4C54: "int32",
    0x1E3D4C55: "uint8",
    0x1E3D4C56: "int16",
}
_STORED: dict[str, np.dtype] = {
    "float32": np.dtype("<f4"),
    "packed": np.dtype("i1"),
    "float64": np.dtype("<f8"),
    "int32": np.dtype("<i4"),
    "uint8": np.dtype("u1"),
    "int16": np.dtype("<i2"),
}
PACKED_SCALE = 16
_MAX_NDIM = 32  # far above any real file; stops a corrupt header from asking for absurd shapes


def parse_matrix(data: bytes, source: str | Path) -> np.ndarray:
    """Decode binary-matrix bytes into an array of the stored shape, in native byte order.

    Returns float32 for "packed" matrices, else the stored type; the result may be a read-only view of `data`.
    Raises DatasetFileError naming `source` for a wrong magic, impossible dimensions or a size that does not match
    the header.
    """
    if len(data) < 8:
        raise DatasetFileError(source, f"truncated: {len(data)} bytes, shorter than the 8-byte magic and ndim")
    magic, ndim = struct.unpack("<ii", data[:8])
    if magic not in MAGIC:
        expected = ", ".join(f"0x{m:08X} {name}" for m, name in MAGIC.items())
        raise DatasetFileError(source, f"wrong magic 0x{magic & 0xFFFFFFFF:08X}: expected one of {expected}")
    if not 0 <= ndim <= _MAX_NDIM:
        raise DatasetFileError(source, f"wrong dims: ndim {ndim} is outside 0..{_MAX_NDIM}")
    header_size = 8 + 4 * max(3, ndim)
    if len(data) < header_size:
        raise DatasetFileError(source, f"truncated header: ndim {ndim} needs {header_size} bytes, file has {len(data)}")
    dims = struct.unpack(f"<{max(3, ndim)}i", data[8:header_size])
    shape, unused = dims[:ndim], dims[ndim:]
    if any(d < 0 for d in shape):
        raise DatasetFileError(source, f"wrong dims: negative size in {list(shape)}")
    if any(d != 1 for d in unused):
        raise DatasetFileError(source, f"wrong dims: header dims {list(dims)} for ndim {ndim}; unused dims must be 1")
    kind = MAGIC[magic]
    stored = _STORED[kind]
    array = read_payload(data, header_size, shape, stored, kind, source)
    if kind == "packed":
        return array.astype(np.float32) / PACKED_SCALE
    return array if stored.isnative else array.astype(stored.newbyteorder("="))


def read_matrix(path: Path) -> np.ndarray:
    """Read a binary-matrix file, gzip-compressed or not (see `parse_matrix`)."""
    return parse_matrix(read_bytes(path), path)


def write_matrix(path: Path, array: np.ndarray, gzip: bool = False, packed: bool = False) -> None:
    """Write `array` as a binary-matrix file, gzip-compressed if asked.

    The element type follows the array's dtype (float32, float64, int32, uint8, int16); `packed=True` writes the
    "packed" type instead, for values that are multiples of 1/16 in [-8, 8).
    """
    array = np.asarray(array)
    if packed:
        codes = np.round(array.astype(np.float64) * PACKED_SCALE)
        if not (np.array_equal(codes / PACKED_SCALE, array) and np.all((codes >= -128) & (codes <= 127))):
            raise ValueError("a packed matrix holds multiples of 1/16 in [-8, 8) only")
        kind, array = "packed", codes
    else:
        kind = array.dtype.newbyteorder("=").name
        if kind not in _STORED:
            raise ValueError(f"the binary matrix format cannot hold {array.dtype}; "
                             "use float32, float64, int32, uint8 or int16")
    magic = next(m for m, name in MAGIC.items() if name == kind)
    dims = list(array.shape) + [1] * (3 - array.ndim)
    header = struct.pack(f"<ii{len(dims)}i", magic, array.ndim, *dims)
    write_bytes(Path(path), header + array.astype(_STORED[kind]).tobytes(), gzip)
