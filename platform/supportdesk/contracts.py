"""The support desk's landed sources: tickets, orders and ticket outcomes, one file per day each."""

from __future__ import annotations

from loopwise.contracts import Column, SourceContract

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

