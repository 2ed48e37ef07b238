"""Dagster resources: each wraps one engine backend behind a narrow interface."""

from resources.events import EventStoreResource
from resources.features import FeatureStoreResource
from resources.lake import LakeResource
from resources.mlflow import MlflowResource
from resources.spark import SparkResource

__all__ = ["EventStoreResource", "FeatureStoreResource", "LakeResource", "MlflowResource", "SparkResource"]
