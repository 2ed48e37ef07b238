"""The Spark Connect session every transform asset runs on."""

from __future__ import annotations

import dagster as dg
from loopwise import spark
from pyspark.sql import SparkSession


class SparkResource(dg.ConfigurableResource):
    """Spark Connect: empty `remote` starts the embedded Sail server once per process."""

    remote: str | None = None

    def session(self) -> SparkSession:
        return spark.connect(self.remote)
