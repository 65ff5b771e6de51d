"""Round trips and bad headers of the two file formats (IDX for MNIST, binary matrix for smallNORB)."""

import gzip
import struct

import numpy as np
import pytest

from capsules.datasets import DatasetFileError
from capsules.datasets.idx_format import parse_idx, read_idx, write_idx
from capsules.datasets.norb_format import MAGIC, parse_matrix, read_matrix, write_matrix

RNG = np.random.default_rng(0)
SHAPES = [(7,), (3, 5), (2, 3, 4), (2, 2, 3, 5), (1, 2, 1, 2, 3)]
NORB_DTYPES = ["float32", "float64", "int32", "uint8", "int16"]


def _sample(dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    if dtype.startswith("float"):
        return RNG.standard_normal(shape).astype(dtype)
    info = np.iinfo(dtype)
    return RNG.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", NORB_DTYPES)
def test_matrix_round_trip(tmp_path, dtype, shape, compress):
    array = _sample(dtype, shape)
    path = tmp_path / "m.mat"
    write_matrix(path, array, gzip=compress)
    raw = gzip.decompress(path.read_bytes()) if compress else path.read_bytes()
    magic, ndim = struct.unpack("<ii", raw[:8])
    assert MAGIC[magic] == dtype and ndim == len(shape)
    assert len(raw) == 8 + 4 * max(3, len(shape)) + array.nbytes  # unused dims written as 1s, no more
    loaded = read_matrix(path)
    assert loaded.dtype == array.dtype and loaded.shape == shape
    np.testing.assert_array_equal(loaded, array)


@pytest.mark.parametrize("compress", [False, True])
def test_packed_matrix_round_trip(tmp_path, compress):
    array = (np.arange(-128, 128).reshape(16, 16) / 16).astype(np.float32)  # every representable value
    path = tmp_path / "p.mat"
    write_matrix(path, array, gzip=compress, packed=True)
    raw = gzip.decompress(path.read_bytes()) if compress else path.read_bytes()
    assert MAGIC[struct.unpack("<i", raw[:4])[0]] == "packed" and len(raw) == 8 + 12 + array.size
    loaded = read_matrix(path)
    assert loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded, array)


def test_zero_dim_and_empty_matrices(tmp_path):
    for array in (np.array(3, dtype=np.int32), np.zeros((0, 4), dtype=np.int32)):
        write_matrix(tmp_path / "m.mat", array)
        np.testing.assert_array_equal(read_matrix(tmp_path / "m.mat"), array)


def test_writer_rejects_what_the_format_cannot_hold(tmp_path):
    with pytest.raises(ValueError, match="cannot hold"):
        write_matrix(tmp_path / "m.mat", np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError, match="1/16"):
        write_matrix(tmp_path / "m.mat", np.array([0.03]), packed=True)
    with pytest.raises(ValueError, match="1/16"):
        write_matrix(tmp_path / "m.mat", np.array([8.0]), packed=True)


def _matrix_bytes(array: np.ndarray) -> bytes:
    return struct.pack("<ii3i", 0x1E3D4C54, array.ndim, *array.shape, *[1] * (3 - array.ndim)) + array.tobytes()


GOOD = _matrix_bytes(np.arange(6, dtype=np.int32).reshape(2, 3))


@pytest.mark.parametrize("data, problem", [
    (b"\x51\x4c", "truncated"),
    (struct.pack("<i", 0x1E3D4C59) + GOOD[4:], "wrong magic 0x1E3D4C59"),
    (struct.pack("<i", 0x00000803) + GOOD[4:], "wrong magic"),
    (GOOD[:4] + struct.pack("<i", -1) + GOOD[8:], "ndim -1"),
    (GOOD[:4] + struct.pack("<i", 1000) + GOOD[8:], "ndim 1000"),
    (GOOD[:14], "truncated header"),
    (GOOD[:16] + struct.pack("<i", 2) + GOOD[20:], "unused dims must be 1"),
    (GOOD[:8] + struct.pack("<i", -2) + GOOD[12:], "negative"),
    (GOOD[:-1], "truncated"),
    (GOOD + b"\0", "trailing bytes"),
    (GOOD[:8] + struct.pack("<i", 3) + GOOD[12:], "size does not match the header"),
])
def test_bad_matrix_headers(data, problem):
    with pytest.raises(DatasetFileError, match=problem) as caught:
        parse_matrix(data, "some-file.mat")
    assert caught.value.path == "some-file.mat"


def test_corrupt_gzip_names_the_file(tmp_path):
    path = tmp_path / "m.mat.gz"
    write_matrix(path, np.arange(1000, dtype=np.int32), gzip=True)
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(DatasetFileError, match="gzip") as caught:
        read_matrix(path)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("dtype", ["uint8", "int8", "int16", "int32", "float32", "float64"])
def test_idx_round_trip(tmp_path, dtype, compress):
    array = _sample(dtype, (4, 3, 5))
    path = tmp_path / "x-idx3-ubyte"
    write_idx(path, array, gzip=compress)
    loaded = read_idx(path)
    assert loaded.dtype == array.dtype and loaded.dtype.isnative
    np.testing.assert_array_equal(loaded, array)


IDX = struct.pack(">BBBBII", 0, 0, 8, 2, 2, 3) + bytes(range(6))


@pytest.mark.parametrize("data, problem", [
    (b"\0\0", "truncated"),
    (b"\x01" + IDX[1:], "wrong IDX magic"),
    (IDX[:2] + b"\x07" + IDX[3:], "wrong IDX magic"),
    (IDX[:9], "truncated header"),
    (IDX[:-1], "truncated"),
    (IDX + b"\0\0", "trailing bytes"),
])
def test_bad_idx(data, problem):
    with pytest.raises(DatasetFileError, match=problem):
        parse_idx(data, "x-idx1-ubyte")
    assert parse_idx(IDX, "x").tolist() == [[0, 1, 2], [3, 4, 5]]
