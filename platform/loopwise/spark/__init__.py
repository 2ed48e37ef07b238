"""Spark Connect sessions: the embedded Sail server, or any Spark Connect URL."""

from loopwise.spark.session import connect, engine_version, stop

__all__ = ["connect", "engine_version", "stop"]
