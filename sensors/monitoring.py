"""Closing the loop: a day's predictions are checked for drift and accuracy as they arrive, and a model retrains
when the evidence says so. Sensors, not AutomationConditions: the first watches the prediction log (outside
Dagster); the second decides on evidence (drift and performance verdicts, the training set's staleness) under a
cool-down and records each decision, with its evidence and the run it launched, in the audit trail."""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg
from loopwise.config import load_settings

from assets.models import keys
from assets.monitoring import monitoring_keys
from assets.usecase import USE_CASE
from resources import EventStoreResource, LakeResource, MlflowResource

_settings = load_settings()
_LOOP_ON = _settings.automation.on_by_default and _settings.automation.closed_loop
_STATUS = dg.DefaultSensorStatus.RUNNING if _LOOP_ON else dg.DefaultSensorStatus.STOPPED
CHAIN = ("training_set", "trained_model", "model_evaluation", "registered_model", "deployed_endpoint")


def prediction_checks(lake: LakeResource, events: EventStoreResource, mlflow: MlflowResource, cursor: dict[str, int],
                      now: datetime) -> list[tuple[str, str, int]]:
    """(model, day, answered) for each model with a champion whose answers today grew by `min_rows` since the
    last check (the cursor holds the count checked per model and day), and past its served baseline."""
    from loopwise.monitoring.model import day_window
    from loopwise.registry import CHAMPION
    from loopwise.rollout.evidence import read_predictions

    settings = load_settings().monitoring
    day = now.date()
    since, until = day_window(day)
    # A served reference is the champion's first `baseline_rows` answers: nothing to check before they are in.
    first_check = settings.min_rows + (settings.baseline_rows if settings.reference == "served" else 0)
    due = []
    for spec in USE_CASE.models:
        if mlflow.registry(spec.name, events.store()).alias(CHAMPION) is None:
            continue
        rows = read_predictions(lake.lake(), spec.name, since, until)
        answered = int((rows["served"].fillna(True) & (rows["status"].fillna("ok") == "ok")).sum()) if len(rows) else 0
        if answered >= first_check and answered - cursor.get(f"{spec.name}:{day}", 0) >= settings.min_rows:
            due.append((spec.name, day.isoformat(), answered))
    return due


@dg.sensor(minimum_interval_seconds=_settings.monitoring.check_interval_seconds, default_status=_STATUS,
           asset_selection=[key for spec in USE_CASE.models for key in
                            (monitoring_keys(spec)["drift_report"], monitoring_keys(spec)["model_performance"])],
           description="Checks each model's answered predictions of the day for drift and accuracy once enough "
                       "new ones arrived (monitoring.min_rows).")
def prediction_monitor(context: dg.SensorEvaluationContext, lake: LakeResource, events: EventStoreResource,
                       mlflow: MlflowResource) -> dg.SensorResult | dg.SkipReason:
    import json

    cursor = json.loads(context.cursor) if context.cursor else {}
    due = prediction_checks(lake, events, mlflow, cursor, datetime.now(UTC))
    if not due:
        return dg.SkipReason("no model answered enough new predictions since its last check")
    # One run per day for every model due: each run is a process to start, on the cores that serve and train.
    by_day: dict[str, list[tuple[str, int]]] = {}
    for model, day, answered in due:
        cursor[f"{model}:{day}"] = answered
        by_day.setdefault(day, []).append((model, answered))
    requests = [dg.RunRequest(run_key=f"monitor:{day}:" + ",".join(f"{model}={n}" for model, n in models),
                              partition_key=day,
                              asset_selection=[monitoring_keys(USE_CASE.model(model))[asset] for model, _ in models
                                               for asset in ("drift_report", "model_performance")],
                              tags={"loopwise/monitoring": ",".join(model for model, _ in models)})
                for day, models in by_day.items()]
    return dg.SensorResult(run_requests=requests, cursor=json.dumps(cursor))


def new_labelled_days(lake: LakeResource, spec_name: str) -> int:
    """Days of outcomes landed in silver after the latest day the model's training set holds."""
    from loopwise.pipelines.stages import silver_table

    spec = USE_CASE.model(spec_name)
    if spec.outcomes is None:
        return 0
    training = lake.lake().table(spec.training_table).delta()
    outcomes = silver_table(lake.lake(), spec.outcomes.source).delta()
    if training is None or outcomes is None:
        return 0
    built = max((p["partition_date"] for p in training.partitions()), default="")
    return sum(1 for p in outcomes.partitions() if str(p["partition_date"]) > str(built))


def ready_for_first_training(instance: dg.DagsterInstance, lake: LakeResource, spec_name: str) -> str | None:
    """Why a never-trained model can train now (every landed day of the sources it reads, its outcomes included,
    reached silver, and every feature table covers those days, in Delta and in Dagster's record), or None."""
    from loopwise.pipelines.stages import raw_table, silver_table

    spec = USE_CASE.model(spec_name)
    if spec.outcomes is None:
        return None
    sources = sorted({*spec.reads, spec.outcomes.source})
    landed: set[str] = set()
    for source in sources:
        raw = raw_table(lake.lake(), source).delta()
        if raw is None:
            return None
        landed |= {str(p["partition_date"]) for p in raw.partitions()}
    if not landed:
        return None
    needed = {f"silver_{source}": silver_table(lake.lake(), source).delta() for source in sources}
    needed |= {table.name: lake.lake().table(table.name).delta() for table in USE_CASE.feature_tables}
    for name, delta in needed.items():
        if delta is None or not landed <= {str(p["partition_date"]) for p in delta.partitions()}:
            return None  # landed days are still on their way to silver or the feature tables
        # A step commits its Delta table before Dagster records the materialization: training earlier would
        # leave the training set older than a parent in the lineage graph.
        if not landed <= instance.get_materialized_partitions(dg.AssetKey(name)):
            return None
    return f"{', '.join(sources)} and the features landed through {max(landed)}; the model was never trained"


def training_staleness(instance: dg.DagsterInstance, lake: LakeResource, spec_name: str,
                       now: datetime) -> tuple[str, dict] | None | bool:
    """Why the model's training set is stale (reason, evidence), None when it is not, False when none was built."""
    from loopwise.monitoring.retrain import RetrainPolicy, staleness

    built = instance.get_latest_materialization_event(keys(USE_CASE.model(spec_name))["training_set"])
    if built is None:
        return False
    settings = load_settings().monitoring
    policy = RetrainPolicy(settings.retrain_cooldown_seconds, settings.stale_after_days, settings.max_age_days)
    return staleness(policy, now=now, new_labelled_days=new_labelled_days(lake, spec_name),
                     trained_at=datetime.fromtimestamp(built.timestamp, UTC))


def report_training_freshness(context: dg.SensorEvaluationContext, lake: LakeResource,
                              now: datetime) -> list[dg.AssetCheckEvaluation]:
    """Each training set's `fresh_for_training` check, reported to the instance when what the retrain decision
    sees changes (stale, or fresh again by configuration): the UI shows the reason a staleness retrain acts on."""
    import json

    from assets.models import FRESH_FOR_TRAINING

    seen = json.loads(context.cursor) if context.cursor else {}
    reported = []
    for spec in USE_CASE.models:
        stale = training_staleness(context.instance, lake, spec.name, now)
        if stale is False or seen.get(spec.name, "") == (stale[0] if stale else ""):
            continue
        seen[spec.name] = stale[0] if stale else ""
        evaluation = dg.AssetCheckEvaluation(
            asset_key=keys(spec)["training_set"], check_name=FRESH_FOR_TRAINING, passed=stale is None,
            severity=dg.AssetCheckSeverity.WARN, description=stale[0] if stale else "fresh for training",
            metadata={k: float(v) for k, v in (stale[1] if stale else {}).items()})
        context.instance.report_runless_asset_event(evaluation)
        reported.append(evaluation)
    context.update_cursor(json.dumps(seen))
    return reported


def retrain_requests(context: dg.SensorEvaluationContext, lake: LakeResource, events: EventStoreResource,
                     now: datetime) -> list[dg.RunRequest]:
    """A run of the model's chain for each model the evidence says should retrain, each recorded with why."""
    from loopwise.monitoring.model import subject
    from loopwise.monitoring.retrain import (
        RETRAIN_REQUESTED,
        RetrainDecision,
        RetrainPolicy,
        decide_retrain,
        record_retrain,
    )

    settings = load_settings().monitoring
    policy = RetrainPolicy(settings.retrain_cooldown_seconds, settings.stale_after_days, settings.max_age_days)
    store, requests = events.store(), []
    # Retrains queue one at a time (the loopwise/retrain concurrency limit): shortest first, so the models without
    # a text input, whose training embeds nothing, reach their rollout while a text model still trains.
    for spec in sorted(USE_CASE.models, key=lambda spec: spec.text is not None):
        k = keys(spec)
        built = context.instance.get_latest_materialization_event(k["training_set"])
        if built is None:
            why = ready_for_first_training(context.instance, lake, spec.name)
            decision = RetrainDecision(spec.name, "missing", why, {}) if why and not store.read(
                kind=RETRAIN_REQUESTED, subject=subject(spec.name)) else None
        else:
            decision = decide_retrain(store, spec.name, policy, now=now,
                                      new_labelled_days=new_labelled_days(lake, spec.name),
                                      trained_at=datetime.fromtimestamp(built.timestamp, UTC))
        if decision is None:
            continue
        run_key = f"retrain:{spec.name}:{int(now.timestamp())}"
        record = record_retrain(store, decision, run_key)
        requests.append(dg.RunRequest(run_key=run_key, asset_selection=[k[step] for step in CHAIN],
                                      tags={"loopwise/retrain": decision.cause, "loopwise/model": spec.name,
                                            "loopwise/decision_seq": str(record.seq)}))
        context.log.info(f"{spec.name}: retrain on {decision.cause}: {decision.reason}")
    return requests


@dg.sensor(minimum_interval_seconds=_settings.monitoring.check_interval_seconds, default_status=_STATUS,
           asset_selection=[keys(spec)[step] for spec in USE_CASE.models for step in CHAIN],
           description="Retrains a model's chain (training set -> ... -> rollout) on drift, on degradation against "
                       "its own evaluation, or when its training set is stale; one retrain per drift episode, "
                       "under a cool-down; each decision is an audit event with its evidence and run.")
def model_retraining(context: dg.SensorEvaluationContext, lake: LakeResource,
                     events: EventStoreResource) -> dg.SensorResult | dg.SkipReason:
    now = datetime.now(UTC)
    report_training_freshness(context, lake, now)
    requests = retrain_requests(context, lake, events, now)
    if not requests:
        return dg.SkipReason("no drift, degradation or staleness calls for a retrain (or the cool-down holds)")
    return dg.SensorResult(run_requests=requests)
