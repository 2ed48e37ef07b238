"""Feature views: what the support desk's models want to know about a customer.

Every feature is computed in `supportdesk.features` from silver tables, as of the end of a day.
"""

from datetime import timedelta

from data_sources import customer_orders_source, customer_support_source
from entities import customer
from feast import FeatureView, Field
from feast.types import Float64, Int64

OWNER = "data-platform@loopwise.dev"


def _f(name: str, dtype: object, how: str) -> Field:
    return Field(name=name, dtype=dtype, description=how, tags={"owner": OWNER, "computed_by": "supportdesk.features"})


customer_orders = FeatureView(
    name="customer_orders",
    entities=[customer],
    ttl=timedelta(days=2),  # written daily: older than two days means the pipeline is stale
    source=customer_orders_source,
    owner=OWNER,
    description="Order behaviour over 7/30/90 days: how much and how often a customer buys, refunds, cancels.",
    schema=[
        _f("orders_7d", Int64, "orders placed in the 7 days up to the as-of day"),
        _f("orders_30d", Int64, "orders placed in the 30 days up to the as-of day"),
        _f("orders_90d", Int64, "orders placed in the 90 days up to the as-of day"),
        _f("amount_eur_sum_30d", Float64, "sum of order amounts in EUR, 30 days"),
        _f("amount_eur_sum_90d", Float64, "sum of order amounts in EUR, 90 days"),
        _f("amount_eur_mean_90d", Float64, "mean order amount in EUR, 90 days"),
        _f("refund_rate_90d", Float64, "share of orders refunded, 90 days"),
        _f("cancel_rate_90d", Float64, "share of orders cancelled, 90 days"),
        _f("days_since_last_order", Int64, "days between the last order and the as-of day"),
        _f("tenure_days", Int64, "days since the customer's first order in the lake"),
    ],
)

customer_support = FeatureView(
    name="customer_support",
    entities=[customer],
    ttl=timedelta(days=2),
    source=customer_support_source,
    owner=OWNER,
    description="Support behaviour: how often a customer writes, over which channels, how often it escalated.",
    schema=[
        _f("tickets_7d", Int64, "tickets opened in the 7 days up to the as-of day"),
        _f("tickets_30d", Int64, "tickets opened in the 30 days up to the as-of day"),
        _f("tickets_90d", Int64, "tickets opened in the 90 days up to the as-of day"),
        _f("share_email_30d", Float64, "share of the 30-day tickets opened by email"),
        _f("share_chat_30d", Float64, "share of the 30-day tickets opened in chat"),
        _f("share_phone_30d", Float64, "share of the 30-day tickets opened by phone"),
        _f("share_web_form_30d", Float64, "share of the 30-day tickets opened with the web form"),
        _f("escalations_90d", Int64, "escalated tickets among outcomes known by the as-of day, 90 days"),
        _f("resolved_tickets_90d", Int64, "tickets whose outcome was known by the as-of day, 90 days"),
        _f("escalation_rate_90d", Float64, "escalations / resolved tickets, over outcomes known by the as-of day"),
    ],
)
