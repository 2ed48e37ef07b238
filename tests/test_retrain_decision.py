"""When a model retrains: drift (once per episode), degradation, staleness, and the cool-down, decided on the
verdicts recorded in a real event store; and the served frame a day's drift is measured on."""

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from loopwise.events import open_store
from loopwise.events.store import Event, EventStore
from loopwise.monitoring.model import DRIFT_CHECKED, PERFORMANCE_CHECKED, drift_subject, served_frame, subject
from loopwise.monitoring.retrain import RetrainPolicy, decide_retrain, record_retrain
from loopwise.training.data import InputLayout

MODEL = "m"
NOW = datetime.now(UTC)  # events carry real times: the cool-down tests count from the recorded ones
POLICY = RetrainPolicy(cooldown_seconds=600, stale_after_days=3, max_age_days=10)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EventStore]:
    s = open_store(f"sqlite:///{tmp_path}/e.db")
    yield s
    s.close()


def drift(store: EventStore, day: str, drifted: bool) -> None:
    store.append(Event(DRIFT_CHECKED, drift_subject(MODEL), {
        "model": MODEL, "partition": day, "share_drifted": 0.6 if drifted else 0.1, "drifted": drifted,
        "columns": [{"name": "amount", "kind": "numeric", "test": "wasserstein", "statistic": 0.3 if drifted else 0.01,
                     "threshold": 0.1, "drifted": drifted}]}, "monitoring"))


def decide(store: EventStore, now: datetime = NOW, new_days: int = 0, trained_at: datetime | None = NOW):
    return decide_retrain(store, MODEL, POLICY, now=now, new_labelled_days=new_days, trained_at=trained_at)


def test_nothing_calls_for_a_retrain_without_evidence(store: EventStore) -> None:
    assert decide(store) is None
    drift(store, "2026-11-23", False)
    assert decide(store) is None


def test_drift_retrains_once_per_episode_and_again_after_it_ends(store: EventStore) -> None:
    drift(store, "2026-11-22", False)
    drift(store, "2026-11-23", True)
    decision = decide(store)
    assert decision is not None and decision.cause == "drift" and decision.evidence["drifted_columns"] == ["amount"]
    record_retrain(store, decision, "run-1")
    drift(store, "2026-11-24", True)  # the same episode goes on
    assert decide(store, NOW + timedelta(hours=2)) is None, "one retrain per drift episode"
    drift(store, "2026-11-25", False)  # the episode ends
    drift(store, "2026-11-26", True)  # a new one starts
    again = decide(store, NOW + timedelta(hours=3))
    assert again is not None and again.evidence["episode_start_seq"] > decision.evidence["episode_start_seq"]


def test_the_cooldown_holds_every_cause(store: EventStore) -> None:
    drift(store, "2026-11-23", True)
    record_retrain(store, decide(store, datetime.now(UTC)), "run-1")
    requested = datetime.fromisoformat(store.read(kind="retrain.requested")[-1].at)  # the cool-down counts from here
    drift(store, "2026-11-24", False)
    drift(store, "2026-11-25", True)
    assert decide(store, requested + timedelta(seconds=60), new_days=9) is None
    assert decide(store, requested + timedelta(seconds=601)).cause == "drift"


def test_degradation_and_staleness_retrain(store: EventStore) -> None:
    store.append(Event(PERFORMANCE_CHECKED, subject(MODEL), {"model": MODEL, "partition": "2026-11-23", "degraded": True,
                                                             "versions": [{"version": "3", "auc": 0.61, "expected_auc": 0.72,
                                                                           "labelled": 400, "degraded": True}]},
                       "monitoring"))
    decision = decide(store)
    assert decision.cause == "degradation" and "0.610 vs 0.720" in decision.reason
    record_retrain(store, decision, "run-1")
    later = NOW + timedelta(hours=1)
    assert decide(store, later) is None  # that verdict was acted on
    assert decide(store, later, new_days=3).cause == "stale"
    assert decide(store, later, trained_at=NOW - timedelta(days=11)).cause == "stale"
    assert decide(store, later, trained_at=NOW - timedelta(days=9)) is None


def test_a_retrain_decision_is_recorded_once_per_run(store: EventStore) -> None:
    drift(store, "2026-11-23", True)
    decision = decide(store)
    first = record_retrain(store, decision, "run-7")
    assert record_retrain(store, decision, "run-7").seq == first.seq
    record = store.read(kind="retrain.requested")[-1]
    assert record.reason == decision.reason and record.payload["run_key"] == "run-7"
    assert record.payload["evidence"]["drift_report_seq"] > 0


def test_the_served_frame_holds_features_inputs_and_score_of_answered_rows() -> None:
    layout = InputLayout(features=("orders", "spend"), numeric=("amount",), categorical={"channel": ("a", "b")},
                         text="text")
    predictions = pd.DataFrame({
        "features": [json.dumps({"orders": 2, "spend": 10.5}), json.dumps({"orders": None, "spend": None}),
                     json.dumps({"orders": 1, "spend": 1.0})],
        "inputs": [json.dumps({"id": "x", "amount": 3, "channel": "a", "text": "hello"}),
                   json.dumps({"id": "y", "amount": 4, "channel": "b", "text": "world"}),
                   json.dumps({"id": "z", "amount": 5, "channel": "b", "text": "shadow"})],
        "score": [0.2, 0.7, 0.9], "served": [True, True, False], "status": ["ok", "ok", "ok"]})
    frame = served_frame(predictions, layout)
    assert list(frame.columns) == ["orders", "spend", "amount", "channel", "text", "score"]
    assert frame["score"].tolist() == [0.2, 0.7]  # a shadow's score is not what was served
    assert frame["orders"].isna().tolist() == [False, True] and frame["amount"].tolist() == [3.0, 4.0]


def test_degradation_needs_a_significant_drop_below_the_evaluation() -> None:
    import numpy as np
    from loopwise.monitoring.model import auc_degradation

    rng = np.random.default_rng(4)
    labels = (rng.random(400) < 0.3).astype(float)
    noise = rng.normal(size=400)
    decent = labels * 0.8 + noise  # AUC about 0.71
    useless = noise  # AUC about 0.5
    auc, degraded = auc_degradation(decent, labels, 0.72, tolerance=0.05, min_labelled=50, alpha=0.05)
    assert 0.65 < auc < 0.78 and not degraded  # sampling noise of 400 labels is not a degradation
    auc, degraded = auc_degradation(useless, labels, 0.72, tolerance=0.05, min_labelled=50, alpha=0.05)
    assert auc < 0.6 and degraded
    assert auc_degradation(useless[:40], labels[:40], 0.72, tolerance=0.05, min_labelled=50, alpha=0.05)[1] is False
