"""The composition root: one Definitions for the active profile (LOOPWISE_PROFILE)."""

from __future__ import annotations

import dagster as dg
from loopwise.config import Settings, load_settings
from loopwise.secrets import get_secret, install_log_redaction

from assets import ALL_ASSETS
from assets.usecase import USE_CASE
from jobs import data_layer_job, data_layer_schedule
from resources import build_resources
from sensors import SENSORS


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
        sensors=SENSORS,
        resources=build_resources(settings, USE_CASE),
        # One process per run: the embedded Spark engine starts once and serves every asset.
        executor=dg.in_process_executor,
    )


defs = build_definitions(load_settings())
