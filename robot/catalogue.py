"""Where test input data lives: datasets and their files at storage endpoints."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from robot.backends.base import InputFile


@dataclass(frozen=True)
class DatasetInfo:
    scope: str
    name: str
    files: tuple[InputFile, ...]

    @property
    def events(self) -> int:
        return sum(f.events for f in self.files)


class Catalogue(Protocol):
    def complete_datasets(self, endpoint: str, pattern: str) -> list[DatasetInfo]:
        """Datasets whose name matches the glob `pattern` and that are complete at `endpoint`."""
