"""The composition root: one Definitions for the active profile (LOOPWISE_PROFILE)."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from loopwise.config import Settings, load_settings
from loopwise.secrets import get_secret, install_log_redaction

from assets import ALL_ASSETS
from jobs import data_layer_job, data_layer_schedule
from resources import EventStoreResource, FeatureStoreResource, LakeResource, MlflowResource, SparkResource
from sensors import audit_trail_sensor

FEATURE_REPO = Path(__file__).resolve().parent / "feature_repo"


def build_definitions(settings: Settings) -> dg.Definitions:
    """Everything Dagster shows and runs, configured from one profile.

    Every secret the profile names is read here, so a missing one fails the code location's
    load with its name, before any run starts.
    """
    for name in settings.secret_names():
        get_secret(name)
    install_log_redaction()
    return dg.Definitions(
        assets=ALL_ASSETS,
        jobs=[data_layer_job],
        schedules=[data_layer_schedule],
        sensors=[audit_trail_sensor],
        resources={
            "spark": SparkResource(remote=settings.spark.remote),
            "lake": LakeResource(
                uri=settings.lake_uri,
                landing_dir=str(settings.paths.landing),
                storage_options=settings.lake.storage_options,
                max_bad_row_fraction=settings.validation.max_bad_row_fraction,
            ),
            "events": EventStoreResource(url=settings.events_url, password_secret=settings.events.password_secret),
            "mlflow": MlflowResource(
                tracking_uri=settings.tracking_uri, artifact_uri=settings.artifact_uri,
                model_name=settings.registry.model_name, floors=settings.registry.floors,
                ceilings=settings.registry.ceilings, tolerance=settings.registry.tolerance,
            ),
            "feast": FeatureStoreResource(
                repo_dir=str(FEATURE_REPO), feast_dir=str(settings.paths.feast),
                online_store=settings.features.online_store, redis_url=settings.features.redis_url,
                redis_password_secret=settings.features.redis_password_secret, spark_remote=settings.spark.remote,
            ),
        },
        # One process per run: the embedded Spark engine starts once and serves every asset.
        executor=dg.in_process_executor,
    )


defs = build_definitions(load_settings())
