"""The one error type of data preparation: bad or missing input, named with its file and the problem."""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """A raw or prepared data file is missing, malformed or fails its checksum."""

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else Path(path)
        self.problem = problem
        super().__init__(problem if path is None else f"{path}: {problem}")
