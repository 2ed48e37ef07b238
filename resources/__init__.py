"""Dagster resources: each wraps one engine backend behind a narrow interface."""

from resources.lake import LakeResource
from resources.spark import SparkResource

__all__ = ["LakeResource", "SparkResource"]
