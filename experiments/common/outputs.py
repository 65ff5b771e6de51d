"""Up-front checks of where a command will write, so that a bad path fails before any work instead of after it."""

from __future__ import annotations

import os
from pathlib import Path


class OutputPathError(ValueError):
    """An output path that cannot be written: the message names the option, the path and what is wrong."""


def _nearest_existing(path: Path) -> Path:
    """`path` or its closest ancestor that exists (the folder a missing path would be created in)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_creatable(folder: Path, option: str, shown: Path) -> None:
    """The folder `folder` exists or can be made: its nearest existing ancestor is a folder we may write in."""
    existing = _nearest_existing(folder)
    if not existing.is_dir():
        raise OutputPathError(f"{option} {shown}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputPathError(f"{option} {shown}: the folder {existing} is not writable")


def check_output_file(path: str | os.PathLike[str], option: str) -> Path:
    """Raise OutputPathError unless a file can be written (atomically: a new file beside it, then a rename) at
    `path`: it is a regular file or absent, and its folder exists as a writable folder or can be created. Returns
    the path."""
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"{option} {path} is a folder; expected a file path")
    if path.exists() and not path.is_file():  # a device or a pipe would be replaced by the rename
        raise OutputPathError(f"{option} {path} is not a regular file; expected a file path")
    _check_creatable(path.parent.absolute(), option, path)
    return path


def check_output_dir(path: str | os.PathLike[str], option: str) -> Path:
    """Raise OutputPathError unless `path` is a writable folder or can be created as one. Returns the path."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"{option} {path} is a file; expected a folder")
    _check_creatable(path.absolute(), option, path)
    return path
