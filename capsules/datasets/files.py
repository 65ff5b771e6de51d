"""Where data files live and how their bytes are read and written (gzip-compressed or not)."""

import gzip
import hashlib
import os
import zlib
from pathlib import Path

from capsules.datasets.errors import DatasetFileError

ENV_VAR = "CAPSULES_DATA"
DEFAULT_CACHE = Path("~/.cache/capsule-routing")
GZIP_SUFFIX = ".gz"
_GZIP_MAGIC = b"\x1f\x8b"


def data_dir(root: str | os.PathLike[str] | None, dataset: str) -> Path:
    """The directory that holds a dataset's files.

    `root` itself when given; otherwise `$CAPSULES_DATA/<dataset>`, else `~/.cache/capsule-routing/<dataset>`.
    """
    if root is not None:
        return Path(root).expanduser()
    return Path(os.environ.get(ENV_VAR) or DEFAULT_CACHE).expanduser() / dataset


def find_file(directory: Path, name: str) -> Path | None:
    """`directory/name` if it exists, else `directory/name.gz` if that exists, else None."""
    for candidate in (directory / name, directory / (name + GZIP_SUFFIX)):
        if candidate.is_file():
            return candidate
    return None


def read_bytes(path: Path) -> bytes:
    """The file's content, decompressed when it starts with the gzip magic (whatever its name)."""
    data = path.read_bytes()
    if not data.startswith(_GZIP_MAGIC):
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as error:
        raise DatasetFileError(path, f"corrupt or truncated gzip data ({error})") from error


def write_bytes(path: Path, data: bytes, compress: bool) -> None:
    """Write `data` to `path`, gzip-compressed (reproducibly, mtime 0) when `compress`."""
    path.write_bytes(gzip.compress(data, mtime=0) if compress else data)


def md5_hex(data: bytes) -> str:
    """The MD5 digest of `data` as 32 hex digits."""
    return hashlib.md5(data, usedforsecurity=False).hexdigest()
