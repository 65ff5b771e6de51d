"""The two errors a dataset loader raises besides FileNotFoundError."""

import os


class DatasetFileError(ValueError):
    """A data file is truncated, corrupt, fails its checksum or holds something other than its name says.

    `path` is the file (or download URL) and `problem` says what was wrong; `str(error)` gives both.
    """

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        super().__init__(str(path), problem)
        self.path = str(path)
        self.problem = problem

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


class DatasetDownloadError(OSError):
    """No mirror could deliver a missing file (no network, HTTP errors, timeouts)."""
