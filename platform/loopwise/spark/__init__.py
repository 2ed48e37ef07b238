"""Spark Connect sessions: the embedded Sail server, or any Spark Connect URL."""

from loopwise.spark.session import connect, stop

__all__ = ["connect", "stop"]
