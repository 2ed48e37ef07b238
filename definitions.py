"""The composition root: one Definitions for the active profile (LOOPWISE_PROFILE)."""

from __future__ import annotations

import dagster as dg

from assets import DATA_LAYER_ASSETS
from jobs import data_layer_job, data_layer_schedule
from loopwise.config import Settings, load_settings
from resources import LakeResource, SparkResource


def build_definitions(settings: Settings) -> dg.Definitions:
    """Everything Dagster shows and runs, configured from one profile."""
    return dg.Definitions(
        assets=DATA_LAYER_ASSETS,
        jobs=[data_layer_job],
        schedules=[data_layer_schedule],
        resources={
            "spark": SparkResource(remote=settings.spark.remote),
            "lake": LakeResource(
                uri=settings.lake_uri,
                landing_dir=str(settings.paths.landing),
                storage_options=settings.lake.storage_options,
                max_bad_row_fraction=settings.validation.max_bad_row_fraction,
            ),
        },
        # One process per run: the embedded Spark engine starts once and serves every asset.
        executor=dg.in_process_executor,
    )


defs = build_definitions(load_settings())
