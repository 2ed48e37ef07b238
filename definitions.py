"""The composition root: one Definitions for the active profile (LOOPWISE_PROFILE)."""

from __future__ import annotations

import dagster as dg
from loopwise.config import Settings, load_settings
from loopwise.secrets import get_secret, install_log_redaction

from assets import ALL_ASSETS
from assets.usecase import USE_CASE
from jobs import TRAINING_JOBS, data_layer_job, data_layer_schedule
from resources import build_resources
from sensors import SENSORS


def executor_for(settings: Settings) -> dg.ExecutorDefinition:
    """Embedded: one process per run, so the Spark engine starts once and serves every asset. On
    Kubernetes (`executor: k8s`): a pod per step, each with its asset's dagster-k8s tags (the GPU)."""
    if settings.orchestration.executor == "k8s":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor
    return dg.in_process_executor


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
        jobs=[data_layer_job, *TRAINING_JOBS],
        schedules=[data_layer_schedule],
        sensors=SENSORS,
        resources=build_resources(settings, USE_CASE),
        executor=executor_for(settings),
    )


defs = build_definitions(load_settings())
