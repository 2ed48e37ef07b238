"""Entities: who features describe."""

from feast import Entity, ValueType

customer = Entity(
    name="customer",
    join_keys=["customer_id"],
    value_type=ValueType.STRING,
    description="A customer of the shop; ids look like C004217.",
    owner="data-platform@loopwise.dev",
)
