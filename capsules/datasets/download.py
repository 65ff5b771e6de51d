"""Find a dataset's files on disk, or download the missing ones from mirrors, verified and written atomically."""

import os
import tempfile
from collections.abc import Mapping, Sequence
from http.client import HTTPException
from pathlib import Path
from urllib.request import urlopen

from capsules.datasets.errors import DatasetDownloadError, DatasetFileError
from capsules.datasets.files import ENV_VAR, GZIP_SUFFIX, find_file, md5_hex, read_bytes

_CHUNK = 1 << 20


def ensure_files(
    directory: Path,
    names: Sequence[str],
    *,
    download: bool,
    mirrors: Sequence[str],
    md5s: Mapping[str, str],
    decompressed_md5: bool,
    timeout: float,
    dataset: str,
    remote_suffix: str = GZIP_SUFFIX,
    form: str = "gzip-compressed or not",
) -> dict[str, Path]:
    """The path of each file in `names`, found as `name` or `name.gz` in `directory`, downloading missing ones.

    A missing file is fetched as `<mirror><name><remote_suffix>` (`name.gz` by default) from the first mirror that
    delivers it with MD5 `md5s[name]` (of the decompressed content when `decompressed_md5`, else of the bytes
    downloaded) and saved under that name. Raises NotADirectoryError when `directory` is a file; FileNotFoundError
    when files are missing and `download` is False; PermissionError naming the folder when files are missing and
    it cannot be written; when no mirror delivers a file, DatasetFileError if some mirror sent bytes failing the
    checksum, else DatasetDownloadError. `form` says, in the messages, in what forms the files are accepted.
    """
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"{dataset}: {directory} is a file, expected the folder that holds the dataset's "
                                 f"files (pass root=<a folder>, or point ${ENV_VAR} at a folder)")
    existing = {name: find_file(directory, name) for name in names}
    missing = [name for name, path in existing.items() if path is None]
    where = (f"put {', '.join(missing)} ({form}) in {directory}, "
             f"or pass root=<a directory that has them>")
    if missing and not download:
        raise FileNotFoundError(f"{dataset} files missing from {directory}: {', '.join(missing)}. "
                                f"Pass download=True, or: {where}.")
    if missing:
        ensure_writable(directory, f"cannot download the {dataset} files {', '.join(missing)}", where)
    try:
        downloaded = {name: download_file(name + remote_suffix, directory, mirrors, md5s[name],
                                          decompressed_md5=decompressed_md5, timeout=timeout) for name in missing}
    except DatasetDownloadError as error:
        raise DatasetDownloadError(f"{error}\nNo network? {where}.") from error
    return {name: existing[name] or downloaded[name] for name in names}


def ensure_writable(directory: Path, what: str, where: str) -> None:
    """Create `directory` if needed and check that a file can be written in it, before any download starts.

    Raises PermissionError naming the folder (`what` says what was being attempted, `where` what to do instead).
    """
    try:
        directory.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".write-test.", dir=directory)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise PermissionError(f"{what}: the folder {directory} is not writable or cannot be created ({reason}). "
                              f"Make it writable, or {where}.") from error


def download_file(
    remote_name: str, directory: Path, mirrors: Sequence[str], md5: str, *, decompressed_md5: bool, timeout: float
) -> Path:
    """Download `<mirror><remote_name>` into `directory/remote_name`, trying the mirrors in order.

    Bytes go to a temporary file in `directory`, are checked against `md5`, then renamed into place: a failed or
    killed download never leaves a partial file under the final name.
    """
    directory.mkdir(parents=True, exist_ok=True)
    destination = directory / remote_name
    unreachable, corrupt = [], []
    for mirror in mirrors:
        url = mirror + remote_name
        try:
            _fetch_verified(url, destination, md5, decompressed_md5, timeout)
            return destination
        except DatasetFileError as error:
            corrupt.append(f"{url}: {error.problem}")
        except (OSError, HTTPException) as error:
            unreachable.append(f"{url}: {error!r}")
    reasons = "\n  ".join(corrupt + unreachable)
    if corrupt:
        raise DatasetFileError(destination, f"no mirror delivered the expected content:\n  {reasons}")
    raise DatasetDownloadError(f"could not download {remote_name} into {directory}:\n  {reasons}")


def _fetch_verified(url: str, destination: Path, md5: str, decompressed_md5: bool, timeout: float) -> None:
    """Stream `url` into a temporary file beside `destination`, check its MD5, rename it to `destination`."""
    handle, temporary = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".part", dir=destination.parent)
    temporary_path = Path(temporary)
    try:
        with os.fdopen(handle, "wb") as out, urlopen(url, timeout=timeout) as response:
            while chunk := response.read(_CHUNK):
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        data = read_bytes(temporary_path) if decompressed_md5 else temporary_path.read_bytes()
        digest = md5_hex(data)
        if digest != md5:
            what = "decompressed content" if decompressed_md5 else "file"
            raise DatasetFileError(url, f"checksum mismatch: MD5 of the {what} is {digest}, expected {md5}")
        os.replace(temporary_path, destination)
    finally:
        temporary_path.unlink(missing_ok=True)
