"""Atomic file replacement: write beside the target, fsync, rename; readers see the old file or the new one."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO


def new_file_mode() -> int:
    """The mode open() would give a new file: 0o666 less the process's umask (mkstemp alone gives 0o600)."""
    umask = os.umask(0o022)  # reading the umask means setting it; it is put back at once
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], binary: bool = False) -> Iterator[IO]:
    """Open a temporary file in `path`'s folder for writing; on a clean exit it is synced and renamed to `path`.

    The file gets the permissions of a file created the usual way (`new_file_mode`). Any exception
    (KeyboardInterrupt included) removes the temporary file and leaves `path` as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"newline": ""})) as handle:
            os.fchmod(handle.fileno(), new_file_mode())
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Replace `path` with `text` atomically (a crash leaves the old file or the new one, never half of one)."""
    with atomic_write(path) as handle:
        handle.write(text)
