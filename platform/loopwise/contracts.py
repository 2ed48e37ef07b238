"""Source contracts: the columns, types and allowed values each landed source must have.

One definition serves the generator, validation (GX suites), typing in bronze and the
schema-change guard, so a contract change is made in one place.
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


CHANNELS = ("email", "chat", "phone", "web_form")
CURRENCIES = ("EUR", "USD", "GBP")
ORDER_STATUSES = ("completed", "refunded", "cancelled")

TICKETS = SourceContract(
    name="tickets",
    key="ticket_id",
    event_time="created_at",
    description="Support tickets opened by customers, one file per day.",
    columns=(
        Column("ticket_id", "id"),
        Column("customer_id", "id"),
        Column("created_at", "timestamp"),
        Column("channel", "enum", allowed=CHANNELS),
        Column("subject", "text"),
        Column("body", "text"),
    ),
)

ORDERS = SourceContract(
    name="orders",
    key="order_id",
    event_time="ordered_at",
    description="Shop orders, one file per day.",
    columns=(
        Column("order_id", "id"),
        Column("customer_id", "id"),
        Column("ordered_at", "timestamp"),
        Column("amount", "amount"),
        Column("currency", "enum", allowed=CURRENCIES),
        Column("status", "enum", allowed=ORDER_STATUSES),
    ),
)

TICKET_OUTCOMES = SourceContract(
    name="ticket_outcomes",
    key="ticket_id",
    event_time="resolved_at",
    description="Outcomes of tickets resolved that day (arrive one to three days after the ticket).",
    columns=(
        Column("ticket_id", "id"),
        Column("escalated", "bool", allowed=("true", "false")),
        Column("resolved_at", "timestamp"),
    ),
)

SOURCES: dict[str, SourceContract] = {c.name: c for c in (TICKETS, ORDERS, TICKET_OUTCOMES)}


def source(name: str) -> SourceContract:
    """The contract of a landed source, or an error listing the known ones."""
    try:
        return SOURCES[name]
    except KeyError:
        raise KeyError(f"unknown source {name!r}; known sources: {sorted(SOURCES)}") from None
