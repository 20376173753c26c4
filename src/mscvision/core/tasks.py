"""Tasks: named label sets, each with its own head, keyed by name everywhere (docs/architecture.md "Data sets and tasks")."""

from __future__ import annotations

from dataclasses import dataclass

from mscvision.core.errors import ConfigError


@dataclass(frozen=True)
class Task:
    name: str
    classes: tuple[str, ...]  # in model output order
    column: str  # manifest column holding this task's label; empty cell = unknown (masked)

    def __post_init__(self) -> None:
        if len(self.classes) < 2:
            raise ConfigError(f"task {self.name!r} needs at least 2 classes, got {list(self.classes)}")
        if len(set(self.classes)) != len(self.classes):
            raise ConfigError(f"task {self.name!r} lists a class twice: {list(self.classes)}")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def index(self, label: str) -> int:
        return self.classes.index(label)

    def to_dict(self) -> dict:
        return {"name": self.name, "classes": list(self.classes), "column": self.column}

    @classmethod
    def from_dict(cls, data: dict) -> "Task":
        return cls(data["name"], tuple(data["classes"]), data.get("column", data["name"]))


IGNORE_INDEX = -1  # target of an unknown label: masked out of loss and metrics
