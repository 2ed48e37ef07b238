"""Canary analysis: measures every running rollout on the prediction log and advances, promotes, pauses or
rolls it back. A sensor, not an AutomationCondition: the decision needs evidence from outside Dagster (the
service's logged answers and the outcomes that arrived) and its effect is outside too (the traffic split in
the central state store, the MLflow aliases). Every measurement and decision is an event with its evidence."""

from __future__ import annotations

import dagster as dg
from loopwise.config import load_settings

from assets.usecase import USE_CASE
from resources import EventStoreResource, FeatureStoreResource, LakeResource, MlflowResource

_settings = load_settings()


def analyse_all(events: EventStoreResource, lake: LakeResource, mlflow: MlflowResource,
                feast: FeatureStoreResource, key: str | None = None) -> list[str]:
    """One analysis of each model's running rollout; a line per model that had one, saying what was decided."""
    from loopwise.rollout import RolloutConflict, current
    from loopwise.rollout.policy import analyse
    from loopwise.serving.models import join_keys_of

    store, settings, lines = events.store(), load_settings(), []
    for spec in USE_CASE.models:
        rollout = current(store, spec.name)
        if rollout is None or rollout.finished:
            continue
        entity_key = join_keys_of(feast.current_store(), spec.feature_service)[0] if rollout.plan else None
        try:
            decision = analyse(store, lake.lake(), spec, settings.rollout.policy(spec.name),
                               mlflow.registry(spec.name, store), entity_key=entity_key,
                               key=f"{key}:{spec.name}" if key else None)
        except RolloutConflict as exc:  # changed by hand meanwhile: the next tick measures the new state
            lines.append(f"{spec.name}: {exc}")
            continue
        if decision is not None:
            lines.append(f"{spec.name} ({rollout.strategy.value} {rollout.id}, step {rollout.stage}): "
                         f"{decision.action.value}: {decision.reason}")
    return lines


@dg.sensor(minimum_interval_seconds=_settings.rollout.analysis_interval_seconds,
           default_status=dg.DefaultSensorStatus.RUNNING
           if _settings.automation.on_by_default and _settings.automation.closed_loop else dg.DefaultSensorStatus.STOPPED,
           description="Measures each running rollout (error rate, latency, score shift, accuracy on labels that "
                       "arrived, the A/B test) on the prediction log and advances, promotes, pauses or rolls it back.")
def canary_analysis(context: dg.SensorEvaluationContext, events: EventStoreResource, lake: LakeResource,
                    mlflow: MlflowResource, feast: FeatureStoreResource) -> dg.SkipReason:
    lines = analyse_all(events, lake, mlflow, feast, key=f"tick:{context.cursor or 0}")
    context.update_cursor(str(int(context.cursor or 0) + 1))
    for line in lines:
        context.log.info(line)
    return dg.SkipReason("\n".join(lines) or "no rollout running")
