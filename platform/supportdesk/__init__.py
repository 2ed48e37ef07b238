"""The reference use case: an online shop's support desk. Replace this package with your own.

It declares what Loopwise runs: the landed sources with their silver transforms, the daily
feature tables behind the Feast views in `feature_repo/`, the models, and a synthetic feed.
Nothing here imports Dagster; the Dagster layer generates the assets from `USE_CASE`.
"""

from __future__ import annotations

from pathlib import Path

from loopwise.usecase import FeatureTable, Feed, Source, UseCase

from supportdesk import contracts, features, feed, transforms
from supportdesk.models import MODELS

USE_CASE = UseCase(
    name="supportdesk",
    sources=(
        Source(contracts.TICKETS, transforms.silver_tickets,
               "Tickets with normalized text (subject and body) and its length."),
        Source(contracts.ORDERS, transforms.silver_orders, "Orders with EUR amounts, status flags and order date."),
        Source(contracts.TICKET_OUTCOMES, transforms.silver_ticket_outcomes,
               "Escalation labels with the time they became known."),
    ),
    feature_tables=(
        FeatureTable(features.ORDER_FEATURES, "customer_orders", ("orders",), features.build_order_features,
                     "Per customer and day: orders, EUR amounts, refund and cancel rates over 7/30/90 days, "
                     "days since the last order, tenure (feature view customer_orders)."),
        FeatureTable(features.SUPPORT_FEATURES, "customer_support", ("tickets", "ticket_outcomes"),
                     features.build_support_features,
                     "Per customer and day: tickets over 7/30/90 days, channel shares, escalation rate over "
                     "outcomes known by then (feature view customer_support)."),
    ),
    models=MODELS,
    feed=Feed(feed.generate, feed.DriftSpec.ASPECTS),
    feature_repo=Path(__file__).resolve().parents[2] / "feature_repo",
)
