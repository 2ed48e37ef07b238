"""The support desk's silver transforms: bronze rows conformed for features and training.

Pure PySpark DataFrame functions, the same on Sail and Apache Spark.
"""

from __future__ import annotations

from decimal import Decimal

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

# Fixed conversion rates into EUR: silver amounts are comparable across currencies. Decimal, so
# that amount x rate is exact and rounds half up alike on every engine (in doubles, 43.50 x 1.17
# is 50.894999...: Apache Spark rounded it to 50.89, Sail to 50.90).
EUR_RATES = {"EUR": Decimal("1.00"), "USD": Decimal("0.92"), "GBP": Decimal("1.17")}


def _eur_rate(currency: Column) -> Column:
    """The EUR rate of `currency`, null for an unknown one: a CASE, as a map lookup costs 7x more on Sail."""
    (first, first_rate), *rest = EUR_RATES.items()
    rate = F.when(currency == first, F.lit(first_rate))
    for code, eur in rest:
        rate = rate.when(currency == code, F.lit(eur))
    return rate


def silver_orders(bronze_orders: DataFrame) -> DataFrame:
    """Orders conformed for features: EUR amounts, status flags, order date."""
    return bronze_orders.select(
        "order_id",
        "customer_id",
        "ordered_at",
        F.to_date("ordered_at").alias("order_date"),
        "amount",
        "currency",
        F.round(F.col("amount") * _eur_rate(F.col("currency")), 2).cast("double").alias("amount_eur"),
        "status",
        (F.col("status") == "refunded").alias("is_refunded"),
        (F.col("status") == "cancelled").alias("is_cancelled"),
        "partition_date",
    )


def silver_tickets(bronze_tickets: DataFrame) -> DataFrame:
    """Tickets conformed for features and training: the text the model reads, its length."""
    text = F.concat_ws(". ", F.col("subject"), F.col("body"))
    return bronze_tickets.select(
        "ticket_id",
        "customer_id",
        "created_at",
        F.to_date("created_at").alias("created_date"),
        "channel",
        "subject",
        "body",
        text.alias("text"),
        F.length(text).alias("text_length"),
        "partition_date",
    )


def silver_ticket_outcomes(bronze_outcomes: DataFrame) -> DataFrame:
    """Ticket outcomes: the label and the time it became known (for point-in-time joins)."""
    return bronze_outcomes.select(
        "ticket_id",
        "escalated",
        "resolved_at",
        F.to_date("resolved_at").alias("resolved_date"),
        "partition_date",
    )



