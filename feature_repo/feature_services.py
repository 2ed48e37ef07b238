"""Feature services: the versioned sets of features a model consumes (a model records which)."""

from feast import FeatureService
from feature_views import customer_orders, customer_support

escalation_v1 = FeatureService(
    name="escalation_v1",
    features=[customer_orders, customer_support],
    owner="ml@loopwise.dev",
    description="Everything the ticket-escalation model reads about a customer.",
)

refund_v1 = FeatureService(
    name="refund_v1",
    features=[customer_orders],
    owner="ml@loopwise.dev",
    description="The customer's order history, as the order-refund-risk model reads it.",
)
