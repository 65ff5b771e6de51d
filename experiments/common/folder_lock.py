"""One process at a time in a folder: an exclusive lock on a lock file that holds the owner's process id.

The lock is `fcntl.flock` on `<folder>/.lock`: the kernel drops it when its process ends, however it ends, so a
lock file left by a killed run (a stale lock, from a process id that is gone) does not block the next one. A
second process asking for a held lock fails at once with `FolderInUseError` naming the holder's process id.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from experiments.common.atomic import new_file_mode

LOCK_NAME = ".lock"


class FolderInUseError(RuntimeError):
    """Another process holds the folder's lock."""


def holder_pid(lock_path: Path) -> str:
    """The process id written in a lock file ('unknown' when it cannot be read)."""
    try:
        return lock_path.read_text().strip() or "unknown"
    except OSError:
        return "unknown"


@contextlib.contextmanager
def locked_folder(folder: str | os.PathLike[str], option: str = "--out-dir") -> Iterator[Path]:
    """Create `folder` if needed and hold its lock inside the block (yields the lock file's path).

    Raises FolderInUseError when another process (or another holder in this one) has it; `option` names the
    command-line option that chose the folder, for the message. A folder this call created is removed again if
    it is empty at the end.
    """
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    lock_path = folder / LOCK_NAME
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, new_file_mode())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FolderInUseError(f"{folder} is in use by process {holder_pid(lock_path)} (lock file {lock_path}); "
                                   f"wait for that run to end, or choose another {option}") from None
        # The previous holder removes the file on release: a lock taken on a removed file guards nothing, so retry.
        try:
            current = os.path.samestat(os.fstat(fd), os.stat(lock_path))
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield lock_path
    finally:
        lock_path.unlink(missing_ok=True)  # still holding the lock, so no one else is between open and flock on it
        os.close(fd)
        if created:  # a run that failed before writing anything leaves no empty folder behind
            with contextlib.suppress(OSError):
                folder.rmdir()
