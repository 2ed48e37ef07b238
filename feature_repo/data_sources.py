"""Data sources: the daily feature tables in the lake (Delta), read by Feast's file offline store."""

from feast import FileSource
from feast.data_format import DeltaFormat
from loopwise.config import load_settings

_lake = load_settings().lake_uri

customer_orders_source = FileSource(
    name="customer_orders_daily",
    path=f"{_lake}/features_customer_orders",
    file_format=DeltaFormat(),
    timestamp_field="event_timestamp",
    description="features_customer_orders: one row per customer and day, as of the end of that day.",
)

customer_support_source = FileSource(
    name="customer_support_daily",
    path=f"{_lake}/features_customer_support",
    file_format=DeltaFormat(),
    timestamp_field="event_timestamp",
    description="features_customer_support: one row per customer and day, as of the end of that day.",
)
