"""Dagster resources: each wraps one engine backend behind a narrow interface, all built by one factory."""

from __future__ import annotations

from typing import Any

from loopwise.config import Settings
from loopwise.usecase import UseCase

from resources.events import EventStoreResource
from resources.features import FeatureStoreResource
from resources.lake import LakeResource
from resources.mlflow import MlflowResource
from resources.spark import SparkResource
from resources.training import TrainingResource


def build_resources(settings: Settings, use_case: UseCase) -> dict[str, Any]:
    """Every resource, configured from one profile: the definitions, the sensors and `loopwise demo` use this."""
    t = settings.training
    return {
        "spark": SparkResource(remote=settings.spark.remote),
        "lake": LakeResource(uri=settings.lake_uri, landing_dir=str(settings.paths.landing),
                             storage_options=settings.lake.storage_options,
                             max_bad_row_fraction=settings.validation.max_bad_row_fraction),
        "events": EventStoreResource(url=settings.events_url, password_secret=settings.events.password_secret),
        "mlflow": MlflowResource(
            tracking_uri=settings.tracking_uri, artifact_uri=settings.artifact_uri,
            gates={m.name: settings.registry.gate(m.name).model_dump() for m in use_case.models},
        ),
        "feast": FeatureStoreResource(
            repo_dir=str(use_case.feature_repo), feast_dir=str(settings.paths.feast),
            online_store=settings.features.online_store, redis_url=settings.features.redis_url,
            redis_password_secret=settings.features.redis_password_secret, spark_remote=settings.spark.remote,
            stale_after_hours=settings.features.stale_after_hours, lake_uri=settings.lake_uri,
        ),
        "training": TrainingResource(
            epochs=t.epochs, batch_size=t.batch_size, learning_rate=t.learning_rate,
            gradient_accumulation=t.gradient_accumulation, patience=t.patience, seed=t.seed, device=t.device,
            distributed=t.distributed, freeze_encoder=t.freeze_encoder,
            checkpoint_dir=str(settings.paths.root / "checkpoints"), embedding_dir=str(settings.paths.embeddings),
            runtime_dir=str(settings.paths.root / "runtime"),
        ),
    }


__all__ = ["EventStoreResource", "FeatureStoreResource", "LakeResource", "MlflowResource", "SparkResource",
           "TrainingResource", "build_resources"]
