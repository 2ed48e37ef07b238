"""The main job as `loopwise demo` runs it: each step is one Dagster run on the instance, launched
through Dagster's Python API (`dg.materialize`) with the same assets and resources the UI uses."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date

import dagster as dg
from loopwise.config import Settings

from assets import ALL_ASSETS, DATA_PATH
from assets.models import keys
from assets.usecase import USE_CASE
from resources import build_resources
from sensors.audit import sync_once

# The run's events go to the instance (the UI shows them); the terminal gets the demo's own summary.
QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


@dataclass(frozen=True)
class Step:
    title: str
    selection: dg.AssetSelection
    partitioned: bool


def steps() -> list[Step]:
    """The main job's runs, in order, for every declared source, feature table and model."""
    models = [keys(spec) for spec in USE_CASE.models]
    return [
        Step("register features (feast apply)", dg.AssetSelection.assets("feast_registry"), False),
        Step("landing files to silver, features, online store", DATA_PATH, True),
        Step("training sets (point-in-time join through Feast)",
             dg.AssetSelection.assets(*(k["training_set"] for k in models)), False),
        Step("train, evaluate, register each model through its gate, deploy it",
             dg.AssetSelection.assets(*(k[s] for k in models for s in ("trained_model", "model_evaluation",
                                                                          "registered_model", "deployed_endpoint"))),
             False),
    ]


@dataclass
class StepResult:
    title: str
    success: bool
    seconds: float
    run_id: str
    failed_checks: list[str] = field(default_factory=list)  # "asset: check" of every failed blocking check
    error: str = ""


def run(settings: Settings, instance: dg.DagsterInstance, days: list[date],
        on_start: Callable[[Step], None] = lambda step: None) -> Iterator[StepResult]:
    """Run the steps for `days` on `instance`; stop after the first that fails. Yields each step's result."""
    resources = build_resources(settings, USE_CASE)
    first, last = min(days).isoformat(), max(days).isoformat()
    try:
        for step in steps():
            on_start(step)
            started = time.monotonic()
            tags = {"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last} \
                if step.partitioned else {}
            result = dg.materialize(ALL_ASSETS, selection=step.selection, instance=instance, resources=resources,
                                    tags={**tags, "loopwise/step": step.title}, raise_on_error=False,
                                    run_config=QUIET)
            failed = [f"{e.asset_key.to_user_string()}: {e.check_name}" for e in result.get_asset_check_evaluations()
                      if not e.passed and e.severity == dg.AssetCheckSeverity.ERROR]
            error = "" if result.success else _failure(result)
            yield StepResult(step.title, result.success, time.monotonic() - started, result.run_id, failed, error)
            if not result.success:
                return
    finally:
        sync_once(instance, resources["events"])


def _failure(result: dg.ExecuteInProcessResult) -> str:
    """What failed in a run: each failed step's error, without Dagster's framing."""
    messages = []
    for event in result.all_events:
        if event.event_type == dg.DagsterEventType.STEP_FAILURE and event.step_failure_data.error:
            error = event.step_failure_data.error
            cause = error.cause or error
            messages.append(f"{event.step_key}: {cause.message.strip()}")
    return "\n".join(messages) or "the run failed (see its log in the Dagster UI)"


def instance() -> dg.DagsterInstance:
    """The instance in DAGSTER_HOME, as `dg dev` and the daemon see it."""
    return dg.DagsterInstance.get()
