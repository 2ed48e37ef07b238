"""The support desk's models, each declared once: the engine and the Dagster layer derive the rest.

Their gates (floors, ceilings, tolerance) are configured per model in the profile (`registry.models`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

from loopwise.usecase import ModelSpec, Outcomes, Reader
from pydantic import BaseModel, Field
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from supportdesk.contracts import CHANNELS

if TYPE_CHECKING:
    from torch import nn

SEGMENTS = {"customer=new": "~(tenure_days >= 30)", "customer=returning": "tenure_days >= 30"}


def mlp(hidden: int) -> Callable[[int], nn.Module]:
    """A module factory: n_inputs -> the engine's tabular MLP (torch loads where training runs)."""
    def build(n_inputs: int) -> nn.Module:
        from loopwise.training.model import TabularMLP

        return TabularMLP(n_inputs, hidden=hidden)

    return build


def labelled_tickets(read: Reader) -> DataFrame:
    """Tickets whose outcome is known, timed at ticket creation: the escalation model's rows."""
    outcomes = read("ticket_outcomes", None).select("ticket_id", "escalated", "resolved_at")
    return (read("tickets", None).join(outcomes, "ticket_id")
            .select("ticket_id", "customer_id", F.col("created_at").alias("event_timestamp"), "channel", "text",
                    "escalated", "resolved_at", F.col("created_date").alias("partition_date")))


class TicketRequest(BaseModel):
    """A ticket to score for escalation, as the support desk's tools send it."""

    ticket_id: str = Field(min_length=1, max_length=64)
    customer_id: str = Field(min_length=1, max_length=64)
    channel: Literal["email", "chat", "phone", "web_form"]
    text: str = Field(max_length=20_000, description="subject and body, joined by '. '")


TICKET_ESCALATION = ModelSpec(
    name="ticket-escalation",
    description="Will this ticket escalate? MiniLM on the ticket's text and the customer's history.",
    feature_service="escalation_v1",
    rows=labelled_tickets,
    reads=("tickets", "ticket_outcomes"),
    label="escalated",
    split_key="ticket_id",
    module=mlp(hidden=64),
    text="text",
    categorical={"channel": CHANNELS},
    segments=SEGMENTS,
    segment_by=("channel",),
    request=TicketRequest,
    outcomes=Outcomes(source="ticket_outcomes", label="escalated"),
)


def labelled_orders(read: Reader) -> DataFrame:
    """Every order, timed at the order: refunded or not (the status lands with the order)."""
    return (read("orders", None)
            .select("order_id", "customer_id", F.col("ordered_at").alias("event_timestamp"), "amount_eur", "currency",
                    F.col("is_refunded").alias("refunded"), "partition_date"))


class OrderRequest(BaseModel):
    """An order to score for refund risk when it is placed."""

    order_id: str = Field(min_length=1, max_length=64)
    customer_id: str = Field(min_length=1, max_length=64)
    amount_eur: float = Field(ge=0, le=1_000_000)


ORDER_REFUND_RISK = ModelSpec(
    name="order-refund-risk",
    description="Will this order be refunded? A tabular model on the customer's order history and the amount.",
    feature_service="refund_v1",
    rows=labelled_orders,
    reads=("orders",),
    label="refunded",
    split_key="order_id",
    module=mlp(hidden=32),
    numeric=("amount_eur",),
    segments=SEGMENTS,
    segment_by=("currency",),
    request=OrderRequest,
    outcomes=Outcomes(source="orders", label="is_refunded"),
)


MODELS = (TICKET_ESCALATION, ORDER_REFUND_RISK)  # a new model: declare it above and add it here
