"""Source contracts: the columns, types and allowed values each landed source must have.

One definition serves validation (GX suites), typing in bronze, the synthetic bad-row injector
and the schema-change guard, so a contract change is made in one place. A use case declares its
contracts (see `loopwise.usecase`); the engine knows none.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

ColumnKind = Literal["id", "string", "text", "timestamp", "amount", "enum", "bool"]


@dataclass(frozen=True)
class Column:
    """One landed column: its name, what kind of value it holds, and its constraints."""

    name: str
    kind: ColumnKind
    required: bool = True
    allowed: tuple[str, ...] = ()


@dataclass(frozen=True)
class SourceContract:
    """A landed source: its columns and the id that must be unique within a partition."""

    name: str
    columns: tuple[Column, ...]
    key: str
    event_time: str
    description: str = ""
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"source {self.name!r} has no column {name!r}; columns: {self.column_names}")
