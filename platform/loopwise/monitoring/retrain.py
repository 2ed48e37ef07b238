"""When a model retrains: on drift, on degradation against its own evaluation, or when its training set is stale,
never twice in one drift episode and never within the cool-down. Each decision is a `retrain.requested` event
carrying its evidence (the reports' sequence numbers and figures) and the run it launched."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from loopwise.events.store import Event, EventStore, Record
from loopwise.monitoring.model import DRIFT_CHECKED, PERFORMANCE_CHECKED, drift_subject, subject

RETRAIN_REQUESTED = "retrain.requested"


@dataclass(frozen=True)
class RetrainPolicy:
    cooldown_seconds: float = 900.0  # after a retrain request, nothing triggers another for this long
    stale_after_days: int = 7  # newly labelled days landed since the training set was built
    max_age_days: float = 30.0  # a training set older than this is stale whatever landed


@dataclass(frozen=True)
class RetrainDecision:
    model: str
    cause: str  # drift, degradation, stale
    reason: str
    evidence: dict[str, Any]


def _at(record: Record) -> datetime:
    return datetime.fromisoformat(record.at)


def drift_episode_start(reports: list[Record]) -> Record | None:
    """The first report of the current run of drifted reports (None when the latest is not drifted)."""
    start = None
    for record in reports:
        start = (start or record) if record.payload.get("drifted") else None
    return start


def decide_retrain(store: EventStore, model: str, policy: RetrainPolicy, *, now: datetime, new_labelled_days: int,
                   trained_at: datetime | None) -> RetrainDecision | None:
    """Whether `model` should retrain now, and why; None when nothing calls for it (or the cool-down holds)."""
    requests = store.read(kind=RETRAIN_REQUESTED, subject=subject(model))
    last = requests[-1] if requests else None
    if last is not None and (now - _at(last)).total_seconds() < policy.cooldown_seconds:
        return None
    after = last.seq if last else 0
    reports = store.read(kind=DRIFT_CHECKED, subject=drift_subject(model))
    episode = drift_episode_start(reports)
    if episode is not None and episode.seq > after:
        latest = reports[-1]
        drifted = [c["name"] for c in latest.payload["columns"] if c["drifted"]]
        return RetrainDecision(model, "drift", f"drift since {episode.payload['partition']}: "
                               f"{latest.payload['share_drifted']:.0%} of columns ({', '.join(drifted)})",
                               {"drift_report_seq": latest.seq, "episode_start_seq": episode.seq,
                                "share_drifted": latest.payload["share_drifted"], "drifted_columns": drifted,
                                "partition": latest.payload["partition"]})
    checks = store.read(kind=PERFORMANCE_CHECKED, subject=subject(model), after=after)
    degraded = [c for c in checks if c.payload.get("degraded")]
    if degraded:
        latest = degraded[-1]
        worst = [v for v in latest.payload["versions"] if v["degraded"]]
        return RetrainDecision(model, "degradation", "; ".join(
            f"version {v['version']} AUC {v['auc']:.3f} vs {v['expected_auc']:.3f} evaluated, on {v['labelled']} labels"
            for v in worst) + f" ({latest.payload['partition']})", {"performance_seq": latest.seq, "versions": worst})
    stale = staleness(policy, now=now, new_labelled_days=new_labelled_days, trained_at=trained_at)
    return RetrainDecision(model, "stale", stale[0], stale[1]) if stale else None


def staleness(policy: RetrainPolicy, *, now: datetime, new_labelled_days: int,
              trained_at: datetime | None) -> tuple[str, dict[str, Any]] | None:
    """Why a training set is stale (reason, evidence), or None: enough newly labelled days landed since it was
    built, or it is older than the profile's maximum age. The retrain decision and the training set's freshness
    check in Dagster both ask this, so the UI shows what triggers a retrain."""
    if new_labelled_days >= policy.stale_after_days:
        return (f"{new_labelled_days} newly labelled days since the training set was built "
                f"(limit {policy.stale_after_days})", {"new_labelled_days": new_labelled_days})
    if trained_at is not None and (now - trained_at).total_seconds() > policy.max_age_days * 86400:
        age = (now - trained_at).total_seconds() / 86400
        return f"the training set is {age:.1f} days old (limit {policy.max_age_days})", {"age_days": round(age, 2)}
    return None


def record_retrain(store: EventStore, decision: RetrainDecision, run_key: str, actor: str = "retraining") -> Record:
    """The decision as an event, keyed by the run it launches (a repeated tick records it once)."""
    return store.append(Event(RETRAIN_REQUESTED, subject(decision.model),
                              {"cause": decision.cause, "evidence": decision.evidence, "run_key": run_key},
                              actor, decision.reason, key=f"retrain:{run_key}"))
