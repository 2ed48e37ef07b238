"""Progressive delivery's engine on a real SQLite event store: rollout state, arm assignment, and the analysis that
advances, promotes, pauses or rolls back a challenger on evidence (Argo Rollouts' semantics)."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from loopwise.events import EventStore, open_store
from loopwise.lifecycle import Lifecycle, State
from loopwise.rollout import (
    ABPlan,
    Action,
    AnalysisConfig,
    ArmEvidence,
    ErrorRate,
    IllegalMove,
    LabelledAccuracy,
    LatencyQuantile,
    Measurement,
    Result,
    RolloutConflict,
    Router,
    ScoreShift,
    Status,
    Strategy,
    Traffic,
    Verdict,
    advance,
    current,
    decide,
    decide_ab,
    evaluate,
    pause,
    promote,
    resume,
    rollback,
    set_weights,
    start,
    traffic,
)
from loopwise.rollout.state import MEASURED, REFUSED, analysis_subject, subject
from scipy import stats

MODEL = "risk-model"
WHO = {"actor": "alice", "reason": "test"}
RULES = AnalysisConfig((
    ErrorRate(max_rate=0.01, min_sample=500, consecutive_successes=2),
    LatencyQuantile(max_ms=250, min_sample=500, consecutive_successes=2),
    ScoreShift(max_ks=0.1, min_sample=1000, consecutive_successes=2),
    LabelledAccuracy(measure_by="log_loss", max_degradation=0.05, min_sample=200, consecutive_successes=2),
))


# -- fixtures and simulated evidence ---------------------------------------------------------------------------
@pytest.fixture
def db(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/e.db"


@pytest.fixture
def store(db: str) -> Iterator[EventStore]:
    s = open_store(db)
    _versions(s)
    yield s
    s.close()


def _versions(store: EventStore) -> None:
    """Version 1 is champion; 2 and 3 are gated challengers; 4 was only trained."""
    lifecycle = Lifecycle(store)
    for version, path in {"1": [State.TRAINED, State.VALIDATED, State.CHALLENGER, State.CANARY, State.CHAMPION],
                          "2": [State.TRAINED, State.VALIDATED, State.CHALLENGER],
                          "3": [State.TRAINED, State.VALIDATED, State.CHALLENGER], "4": [State.TRAINED]}.items():
        for state in path:
            lifecycle.transition(MODEL, version, state, "setup", "fixture")


def arm(rng: np.random.Generator, n: int, *, error_rate: float = 0.001, p99_ms: float = 120.0, rho: float = 1.0,
        labelled: float = 0.5, outcome_rate: float | None = None) -> ArmEvidence:
    """n requests of a model: errors on a random share of inputs, lognormal latency with the given p99, and a
    score whose correlation with the label's driver is `rho` (1: calibrated; lower: same score distribution,
    worse predictions); `labelled` of the labels have arrived."""
    errors = int(rng.binomial(n, error_rate))
    k = n - errors
    latencies = rng.lognormal(np.log(40), np.log(p99_ms / 40) / 2.326, k)
    x = rng.standard_normal(k)
    y = (rng.random(k) < 1 / (1 + np.exp(-2 * x))).astype(float)
    z = rho * x + np.sqrt(1 - rho**2) * rng.standard_normal(k)
    labels = np.where(rng.random(k) < labelled, y, np.nan)
    outcomes = None if outcome_rate is None else (rng.random(n) < outcome_rate).astype(float)
    return ArmEvidence(n, errors, latencies, 1 / (1 + np.exp(-2 * z)), labels, outcomes)


def window(rng: np.random.Generator, store: EventStore, total: int = 100_000, **challenger: Any) -> dict[str, ArmEvidence]:
    """One analysis window of `total` requests split as the live traffic says."""
    share = traffic(store, MODEL)["challenger"].weight
    return {"champion": arm(rng, int(total * (1 - share))), "challenger": arm(rng, int(total * share), **challenger)}


def states(store: EventStore) -> dict[str, State | None]:
    lifecycle = Lifecycle(store)
    return {v: lifecycle.state(MODEL, v) for v in ("1", "2")}


# -- state --------------------------------------------------------------------------------------------------
def test_state_folds_every_change_and_pause_resume(store: EventStore, db: str) -> None:
    started = start(store, MODEL, "canary", 1, 2, steps=[5, 25, 50, 100], **WHO)
    assert (started.status, started.stage, started.weights()) == (Status.PROGRESSING, 0, {"champion": 0.95, "challenger": 0.05})
    assert states(store)["2"] is State.CANARY  # the challenger is live: its lifecycle says so
    advance(store, MODEL, **WHO)
    set_weights(store, MODEL, {"champion": 0.7, "challenger": 0.3}, actor="bob", reason="hand tuning")
    paused = pause(store, MODEL, actor="bob", reason="looking at a dashboard")
    assert (paused.status, paused.stage, paused.weights()["challenger"]) == (Status.PAUSED, 1, 0.3)
    resumed = resume(store, MODEL, actor="bob", reason="looks fine")
    assert resumed.status is Status.PROGRESSING and resumed.epoch == paused.epoch + 1
    # A fresh connection folds the same state from the events alone.
    assert current(open_store(db), MODEL) == current(store, MODEL) == resumed
    kinds = [r.kind for r in store.read(subject=subject(MODEL))]
    assert kinds == ["rollout.started", "rollout.advanced", "rollout.weights_set", "rollout.paused", "rollout.resumed"]
    last = store.read(subject=subject(MODEL))[-1]
    assert (last.actor, last.reason, last.payload["rollout"]["revision"]) == ("bob", "looks fine", 4)
    assert store.verify().ok


def test_illegal_moves_are_refused_with_the_allowed_ones_and_recorded(store: EventStore) -> None:
    with pytest.raises(IllegalMove, match="no rollout to advance"):
        advance(store, MODEL, **WHO)
    with pytest.raises(IllegalMove, match="version 4 is trained and cannot become canary"):
        start(store, MODEL, "canary", 1, 4, **WHO)
    assert current(store, MODEL) is None  # nothing was started
    start(store, MODEL, "canary", 1, 2, steps=[10, 100], **WHO)
    with pytest.raises(IllegalMove, match="already has a progressing canary rollout"):
        start(store, MODEL, "canary", 1, 3, **WHO)
    pause(store, MODEL, **WHO)
    with pytest.raises(IllegalMove, match="cannot advance a paused canary rollout; allowed: set_weights, resume, "
                                          "promote, rollback, abort"):
        advance(store, MODEL, **WHO)
    resume(store, MODEL, **WHO)
    advance(store, MODEL, **WHO)
    with pytest.raises(IllegalMove, match=r"at its last step \(100%\); allowed: set_weights, pause, promote"):
        advance(store, MODEL, **WHO)
    rollback(store, MODEL, actor="carol", reason="bad dashboard")
    with pytest.raises(IllegalMove, match="cannot advance a rolled_back canary rollout; allowed: none"):
        advance(store, MODEL, actor="dave", reason="try anyway")
    refusals = store.read(kind=REFUSED, subject=subject(MODEL))
    assert [r.payload["move"] for r in refusals] == ["advance", "start", "start", "advance", "advance", "advance"]
    assert (refusals[-1].actor, refusals[-1].payload["status"], refusals[-1].payload["allowed"]) == ("dave", "rolled_back", [])
    assert current(store, MODEL).status is Status.ROLLED_BACK  # a refusal changes nothing


def test_strategy_rules_and_an_ab_test_needs_its_plan_up_front(store: EventStore) -> None:
    with pytest.raises(ValueError, match="ABPlan declared at start"):
        start(store, MODEL, "ab", 1, 2, **WHO)
    with pytest.raises(ValueError, match="unknown strategy 'linear': use one of bluegreen, canary, shadow, ab"):
        start(store, MODEL, "linear", 1, 2, **WHO)
    with pytest.raises(ValueError, match="increasing percentages"):
        start(store, MODEL, "canary", 1, 2, steps=[50, 25], **WHO)
    start(store, MODEL, "ab", 1, 2, plan=ABPlan("converted", 0.1, 0.03), **WHO)
    with pytest.raises(IllegalMove, match="cannot advance a progressing ab rollout"):
        advance(store, MODEL, **WHO)
    with pytest.raises(IllegalMove, match="cannot set_weights a progressing ab rollout"):
        set_weights(store, MODEL, {"champion": 0.9, "challenger": 0.1}, **WHO)


def test_promotion_moves_the_lifecycle_and_the_champion_alias(store: EventStore) -> None:
    start(store, MODEL, "bluegreen", 1, 2, **WHO)
    assert traffic(store, MODEL) == {"champion": ("1", 1.0), "challenger": ("2", 0.0)}
    moved: list[tuple[str, ...]] = []
    done = promote(store, MODEL, actor="alice", reason="preview checked",
                   move_alias=lambda alias, version, actor, reason, evidence: moved.append((alias, version, actor)))
    assert done.status is Status.PROMOTED and traffic(store, MODEL) == {"champion": ("2", 1.0)}
    assert states(store) == {"1": State.RETIRED, "2": State.CHAMPION}
    assert moved == [("champion", "2", "alice")]
    path = [(r.payload["from"], r.payload["to"]) for r in store.read(kind="lifecycle.transition", subject="model:risk-model/2")]
    assert path[-2:] == [("challenger", "canary"), ("canary", "champion")]
    # The next rollout compares a new challenger with the new champion.
    with pytest.raises(IllegalMove, match="version 1 is retired, not champion"):
        start(store, MODEL, "canary", 1, 3, **WHO)
    start(store, MODEL, "shadow", 2, 3, **WHO)
    assert Lifecycle(store).state(MODEL, "3") is State.SHADOW


def test_rollback_moves_the_challenger_out_and_keeps_the_champion(store: EventStore) -> None:
    start(store, MODEL, "canary", 1, 2, **WHO)
    rollback(store, MODEL, actor="alice", reason="page from on-call", evidence={"incident": "INC-1"})
    assert traffic(store, MODEL) == {"champion": ("1", 1.0)}
    assert states(store) == {"1": State.CHAMPION, "2": State.ROLLED_BACK}
    event = store.read(kind="rollout.rolled_back")[-1]
    assert event.payload["evidence"] == {"incident": "INC-1"} and event.actor == "alice"


def test_concurrent_changes_conflict_instead_of_overwriting(store: EventStore, db: str) -> None:
    start(store, MODEL, "canary", 1, 2, **WHO)
    other = open_store(db)
    seen = current(store, MODEL)
    pause(other, MODEL, actor="bob", reason="hold on")
    with pytest.raises(RolloutConflict, match="rollout.paused by bob"):
        advance(store, MODEL, actor="sensor", reason="analysis passed", expected=seen)
    assert current(store, MODEL).status is Status.PAUSED and current(store, MODEL).stage == 0


def test_traffic_agrees_across_two_connections_after_every_change(store: EventStore, db: str) -> None:
    a, b = store, open_store(db)  # two workers, each with its own connection and poll cursor
    assert traffic(a, MODEL) == traffic(b, MODEL) == {}
    changes = [
        (a, lambda s: start(s, MODEL, "canary", 1, 2, steps=[5, 25, 100], **WHO), {"champion": ("1", 0.95), "challenger": ("2", 0.05)}),
        (b, lambda s: advance(s, MODEL, **WHO), {"champion": ("1", 0.75), "challenger": ("2", 0.25)}),
        (a, lambda s: set_weights(s, MODEL, {"champion": 0.6, "challenger": 0.4}, **WHO),
         {"champion": ("1", 0.6), "challenger": ("2", 0.4)}),
        (b, lambda s: pause(s, MODEL, **WHO), {"champion": ("1", 0.6), "challenger": ("2", 0.4)}),
        (a, lambda s: resume(s, MODEL, **WHO), {"champion": ("1", 0.6), "challenger": ("2", 0.4)}),
        (b, lambda s: advance(s, MODEL, **WHO), {"champion": ("1", 0.0), "challenger": ("2", 1.0)}),
        (a, lambda s: promote(s, MODEL, **WHO), {"champion": ("2", 1.0)}),
        (b, lambda s: start(s, MODEL, "ab", 2, 3, plan=ABPlan("converted", 0.1, 0.03, split=0.3), **WHO),
         {"champion": ("2", 0.7), "challenger": ("3", 0.3)}),
    ]
    for writer, change, expected in changes:
        change(writer)
        seen_a, seen_b = traffic(a, MODEL), traffic(b, MODEL)
        assert seen_a == seen_b == expected
        assert (seen_a.rollout_id, seen_a.revision, seen_a.strategy) == (seen_b.rollout_id, seen_b.revision, seen_b.strategy)
    # Polling is one read of what is new; measured here, reported by the test run (-s).
    polls = 2000
    began = time.perf_counter()
    for _ in range(polls):
        traffic(b, MODEL)
    per_poll = (time.perf_counter() - began) / polls
    print(f"traffic() poll: {per_poll * 1e6:.0f} us")
    assert per_poll < 0.005


def test_reconcile_finishes_lifecycle_moves_a_crash_interrupted(store: EventStore, monkeypatch: pytest.MonkeyPatch) -> None:
    import loopwise.rollout.state as state

    start(store, MODEL, "canary", 1, 2, **WHO)

    def crash(*args: Any, **kwargs: Any) -> list[str]:
        raise SystemExit("killed between the rollout event and the lifecycle moves")

    monkeypatch.setattr(state, "_walk", crash)
    with pytest.raises(SystemExit):
        promote(store, MODEL, **WHO)
    monkeypatch.undo()
    assert traffic(store, MODEL) == {"champion": ("2", 1.0)}  # traffic follows the rollout event at once
    assert states(store) == {"1": State.CHAMPION, "2": State.CANARY}
    assert state.reconcile(store, MODEL) == ["2 -> champion", "1 -> retired"]
    assert state.reconcile(store, MODEL) == []  # idempotent
    assert states(store) == {"1": State.RETIRED, "2": State.CHAMPION}


def test_a_repeated_sensor_tick_measures_once(store: EventStore) -> None:
    start(store, MODEL, "canary", 1, 2, **WHO)
    evidence = window(np.random.default_rng(9), store)
    assert evaluate(store, MODEL, RULES, evidence, key="tick-1") is not None
    assert evaluate(store, MODEL, RULES, evidence, key="tick-1") is None
    assert len(store.read(kind=MEASURED)) == 1


# -- assignment ---------------------------------------------------------------------------------------------
def test_ab_assignment_is_sticky_per_entity_and_balanced(store: EventStore, db: str) -> None:
    start(store, MODEL, "ab", 1, 2, plan=ABPlan("converted", 0.1, 0.03), rollout_id="ab-0001", **WHO)
    keys = [f"entity-{i}" for i in range(20_000)]
    here, there = Router(traffic(store, MODEL)), Router(traffic(open_store(db), MODEL))  # two processes
    arms = here.route_many(keys=keys)
    assert np.array_equal(arms, there.route_many(keys=keys))
    assert [here.route(k).arm for k in keys[:500]] == [there.arms[i] for i in arms[:500]]
    assert all(here.route(k) == here.route(k) for k in keys[:500])
    counts = np.bincount(arms, minlength=2)
    assert stats.chisquare(counts, [10_000, 10_000]).pvalue > 0.01, counts
    with pytest.raises(ValueError, match="pass the entity key"):
        here.route()


def test_ab_split_follows_the_plan_and_a_new_rollout_reshuffles(store: EventStore) -> None:
    start(store, MODEL, "ab", 1, 2, plan=ABPlan("converted", 0.1, 0.03, split=0.2), rollout_id="ab-0002", **WHO)
    keys = [f"entity-{i}" for i in range(20_000)]
    first = Router(traffic(store, MODEL)).route_many(keys=keys)
    assert stats.chisquare(np.bincount(first, minlength=2), [16_000, 4_000]).pvalue > 0.01
    other_rollout = Router(Traffic(traffic(store, MODEL), Strategy.AB, "ab-0003"))  # same split, another rollout id
    second = other_rollout.route_many(keys=keys)
    assert 0.6 < np.mean(first == second) < 0.75  # independent draws agree 0.8^2 + 0.2^2 = 68% of the time


def test_canary_routing_follows_the_weights_and_shadow_scores_with_both(store: EventStore) -> None:
    start(store, MODEL, "canary", 1, 2, steps=[20, 100], **WHO)
    router = Router(traffic(store, MODEL), rng=random.Random(7))
    counts = np.bincount(router.route_many(50_000), minlength=2)
    assert stats.chisquare(counts, [40_000, 10_000]).pvalue > 0.01
    singles = [router.route().arm for _ in range(20_000)]
    assert stats.chisquare([singles.count("champion"), singles.count("challenger")], [16_000, 4_000]).pvalue > 0.01
    rollback(store, MODEL, **WHO)
    start(store, MODEL, "shadow", 1, 3, **WHO)
    shadow = Router(traffic(store, MODEL)).route("any")
    assert (shadow.arm, shadow.version, shadow.shadow) == ("champion", "1", (("challenger", "3"),))  # both score


def test_bluegreen_sends_everything_to_one_arm_then_switches(store: EventStore) -> None:
    start(store, MODEL, "bluegreen", 1, 2, **WHO)
    before = Router(traffic(store, MODEL))
    assert {before.route().version for _ in range(100)} == {"1"} and not before.route().shadow
    assert set(before.route_many(1000).tolist()) == {0}
    promote(store, MODEL, **WHO)
    assert {Router(traffic(store, MODEL)).route().version for _ in range(100)} == {"2"}


# -- canary analysis ----------------------------------------------------------------------------------------
def test_a_good_challenger_passes_each_step_and_is_promoted_after_consecutive_successes(store: EventStore) -> None:
    start(store, MODEL, "canary", 1, 2, steps=[5, 25, 50, 100], **WHO)
    rng = np.random.default_rng(1)
    moved: list[str] = []
    actions, stages = [], []
    while not current(store, MODEL).finished and len(actions) < 20:
        stages.append(current(store, MODEL).stage)
        decision = evaluate(store, MODEL, RULES, window(rng, store),
                            move_alias=lambda alias, version, *_: moved.append(f"{alias}={version}"))
        expected = {"error_rate": "success", "p99_latency": "success", "score_shift": "success", "accuracy": "success"}
        if stages[-1] == 3:  # the champion has no traffic left: comparisons rest on the step before
            expected |= {"score_shift": "no_baseline", "accuracy": "no_baseline"}
        assert {r.rule: r.outcome for r in decision.results} == expected, decision.reason
        actions.append(decision.action)
    assert actions == [Action.WAIT, Action.ADVANCE] * 3 + [Action.WAIT, Action.PROMOTE]
    assert stages == [0, 0, 1, 1, 2, 2, 3, 3]
    assert states(store) == {"1": State.RETIRED, "2": State.CHAMPION} and moved == ["champion=2"]
    assert traffic(store, MODEL) == {"champion": ("2", 1.0)}
    # Every measurement is recorded with its numbers; every move points back at the measurement behind it.
    measured = store.read(kind=MEASURED, subject=analysis_subject(MODEL))
    assert len(measured) == 8
    rule = measured[0].payload["decision"]["rules"][0]
    assert {"rule", "result", "value", "threshold", "samples", "min_sample", "p_exceeds", "p_within", "test"} <= set(rule)
    promoted = store.read(kind="rollout.promoted")[-1]
    assert promoted.actor == "analysis" and promoted.payload["evidence"]["measurement_seq"] == measured[-1].seq
    json.dumps(measured[-1].payload, allow_nan=False)


@pytest.mark.parametrize(("fault", "rule"), [
    ({"error_rate": 0.05}, "error_rate"),  # fails on 5% of inputs
    ({"p99_ms": 600.0}, "p99_latency"),  # much slower in the tail
    ({"rho": 0.6}, "accuracy"),  # same score distribution, worse on the labels that arrived
])
def test_a_bad_challenger_is_rolled_back_by_the_rule_it_breaks(store: EventStore, fault: dict[str, float], rule: str) -> None:
    start(store, MODEL, "canary", 1, 2, **WHO)
    decision = evaluate(store, MODEL, RULES, window(np.random.default_rng(2), store, **fault))
    failed = {r.rule for r in decision.results if r.result is Result.FAILURE}
    assert decision.action is Action.ROLLBACK and failed == {rule}, decision.reason
    failure = next(r for r in decision.results if r.rule == rule)
    assert failure.p_exceeds < failure.alpha and failure.samples >= failure.min_sample
    assert current(store, MODEL).status is Status.ROLLED_BACK
    assert states(store) == {"1": State.CHAMPION, "2": State.ROLLED_BACK}
    assert traffic(store, MODEL) == {"champion": ("1", 1.0)}
    assert rule in store.read(kind="rollout.rolled_back")[-1].reason


def test_the_accuracy_rule_also_reads_auc() -> None:
    rng = np.random.default_rng(3)
    rules = AnalysisConfig((LabelledAccuracy(measure_by="auc", max_degradation=0.03),))
    good = decide(rules, {"champion": arm(rng, 20_000), "challenger": arm(rng, 5000)})
    worse = decide(rules, {"champion": arm(rng, 20_000), "challenger": arm(rng, 5000, rho=0.6)})
    assert good.action is Action.PROMOTE and worse.action is Action.ROLLBACK
    assert worse.results[0].detail["champion_auc"] - worse.results[0].detail["challenger_auc"] > 0.05


def test_below_the_minimum_sample_the_analysis_waits_and_never_promotes(store: EventStore) -> None:
    start(store, MODEL, "canary", 1, 2, steps=[50], **WHO)  # one step: any pass would promote
    rng = np.random.default_rng(4)
    for _ in range(5):
        decision = evaluate(store, MODEL, RULES, window(rng, store, total=300))
        assert decision.action is Action.WAIT
        assert {(r.result, r.cause) for r in decision.results} == {(Result.INCONCLUSIVE, "insufficient_sample")}
    assert current(store, MODEL).status is Status.PROGRESSING and states(store)["2"] is State.CANARY


def test_an_undecided_measurement_pauses_and_a_paused_rollout_only_rolls_back(store: EventStore) -> None:
    start(store, MODEL, "canary", 1, 2, steps=[50, 100], **WHO)
    rng = np.random.default_rng(5)
    # An error rate right at the threshold, on enough requests: the test cannot tell.
    decision = evaluate(store, MODEL, RULES, window(rng, store, total=4000, error_rate=0.01))
    err = decision.results[0]
    assert (err.result, err.cause, decision.action) == (Result.INCONCLUSIVE, "undecided", Action.PAUSE)
    assert current(store, MODEL).status is Status.PAUSED
    # Paused: a passing measurement is recorded but moves nothing...
    for _ in range(2):
        assert evaluate(store, MODEL, RULES, window(rng, store)).action is not Action.ROLLBACK
    assert (current(store, MODEL).status, current(store, MODEL).stage) == (Status.PAUSED, 0)
    assert [r.payload["applied"] for r in store.read(kind=MEASURED)] == [True, False, False]
    # ...resuming starts a new analysis run, which needs its own consecutive successes...
    resume(store, MODEL, actor="bob", reason="error rate looks fine on the dashboard")
    assert evaluate(store, MODEL, RULES, window(rng, store)).action is Action.WAIT
    assert evaluate(store, MODEL, RULES, window(rng, store)).action is Action.ADVANCE
    # ...and a paused rollout is still rolled back on a failure.
    pause(store, MODEL, **WHO)
    assert evaluate(store, MODEL, RULES, window(rng, store, p99_ms=900.0)).action is Action.ROLLBACK
    assert current(store, MODEL).status is Status.ROLLED_BACK


def test_failure_limit_tolerates_that_many_failed_measurements() -> None:
    rules = AnalysisConfig((ErrorRate(max_rate=0.01, failure_limit=1, consecutive_successes=3),))
    rng = np.random.default_rng(6)
    bad = {"champion": arm(rng, 5000), "challenger": arm(rng, 5000, error_rate=0.05)}
    good = {"champion": arm(rng, 5000), "challenger": arm(rng, 5000)}
    first = decide(rules, bad)
    assert first.action is Action.WAIT and first.counts["error_rate"]["failures"] == 1
    history = [first.measurement()]
    for _ in range(2):  # successes after a failure: the streak counts, the failure is not forgotten
        d = decide(rules, good, history)
        history.append(d.measurement())
    assert d.action is Action.WAIT and d.counts["error_rate"] == {"failures": 1, "undecided": 0, "streak": 2}
    assert decide(rules, good, history).action is Action.PROMOTE
    second = decide(rules, bad, history)
    assert second.action is Action.ROLLBACK and second.counts["error_rate"]["failures"] == 2
    # Measurements read back from recorded evidence count the same.
    assert [Measurement.from_evidence(json.loads(json.dumps(decide(rules, bad).evidence()))).outcomes] == [{"error_rate": "failure"}]


def test_rules_refuse_a_minimum_sample_on_which_nothing_could_pass() -> None:
    with pytest.raises(ValueError, match="min_sample 100 is below 299"):
        LatencyQuantile(max_ms=200, min_sample=100)
    with pytest.raises(ValueError, match="min_sample 50 is below 299"):
        ErrorRate(max_rate=0.01, min_sample=50)
    with pytest.raises(ValueError, match="rule names must be unique"):
        AnalysisConfig((ErrorRate(), ErrorRate()))


# -- A/B ----------------------------------------------------------------------------------------------------
def outcomes(seed: int, champion_rate: float, challenger_rate: float, n: int) -> tuple[ArmEvidence, ArmEvidence]:
    rng = np.random.default_rng(seed)
    return (ArmEvidence(n, outcomes=(rng.random(n) < champion_rate).astype(float)),
            ArmEvidence(n, outcomes=(rng.random(n) < challenger_rate).astype(float)))


@pytest.mark.parametrize("test", ["fixed", "sequential"])
def test_ab_test_finds_a_known_effect_and_declares_no_winner_without_one(test: str) -> None:
    plan = ABPlan("converted", baseline_rate=0.10, minimum_detectable_effect=0.03, alpha=0.05, power=0.8, test=test)
    n = plan.max_sample_per_arm
    seeds = range(200)
    null = [decide_ab(plan, *outcomes(s, 0.10, 0.10, n)).verdict for s in seeds]
    false_positive = np.mean([v in (Verdict.CHALLENGER_WINS, Verdict.CHAMPION_WINS) for v in null])
    assert false_positive <= 0.08, false_positive  # alpha 0.05; 200 seeds: sd 0.015
    assert all(v is not Verdict.CONTINUE for v in null)  # the stopping rule always ends the test
    effect = [decide_ab(plan, *outcomes(1000 + s, 0.10, 0.13, n)).verdict for s in range(100)]
    assert np.mean([v is Verdict.CHALLENGER_WINS for v in effect]) >= 0.75  # power 0.8 planned
    assert Verdict.CHAMPION_WINS not in effect
    print(f"{test}: false positives {false_positive:.3f}, power {np.mean([v is Verdict.CHALLENGER_WINS for v in effect]):.2f}")


def test_ab_plan_is_validated_and_fixes_its_sample() -> None:
    plan = ABPlan("converted", 0.10, 0.03, test="fixed")
    assert plan.min_sample_per_arm == plan.max_sample_per_arm == max(plan.planned_samples()) > 1000
    with pytest.raises(ValueError, match="baseline_rate 1.2 must be in"):
        ABPlan("converted", 1.2, 0.03)
    with pytest.raises(ValueError, match="alpha 0.7 .*; test 'bayes' must be fixed or sequential"):
        ABPlan("converted", 0.1, 0.03, alpha=0.7, test="bayes")
    with pytest.raises(ValueError, match="a fixed test reads once"):
        ABPlan("converted", 0.1, 0.03, test="fixed", min_sample_per_arm=10)
    with pytest.raises(ValueError, match="min_sample_per_arm"):
        ABPlan("converted", 0.1, 0.03, min_sample_per_arm=5000, max_sample_per_arm=1000)
    # A fixed test does not peek: before its planned sample it continues, whatever the data say.
    early = decide_ab(plan, *outcomes(0, 0.05, 0.30, plan.max_sample_per_arm - 1))
    assert early.verdict is Verdict.CONTINUE


def test_an_ab_rollout_is_promoted_on_a_win_and_rolled_back_on_a_loss(store: EventStore) -> None:
    guardrails = AnalysisConfig((ErrorRate(max_rate=0.01), LatencyQuantile(max_ms=250)))
    plan = ABPlan("converted", 0.10, 0.03)
    start(store, MODEL, "ab", 1, 2, plan=plan, **WHO)
    rng = np.random.default_rng(7)
    few = {"champion": arm(rng, 150, outcome_rate=0.10), "challenger": arm(rng, 150, outcome_rate=0.13)}
    assert evaluate(store, MODEL, guardrails, few).action is Action.WAIT  # below the guardrails' minimum
    many = {"champion": arm(rng, plan.max_sample_per_arm, outcome_rate=0.10),
            "challenger": arm(rng, plan.max_sample_per_arm, outcome_rate=0.13)}
    decision = evaluate(store, MODEL, guardrails, many)
    assert decision.action is Action.PROMOTE and decision.ab.verdict is Verdict.CHALLENGER_WINS
    assert decision.evidence()["ab"]["p_value"] < plan.alpha
    assert states(store) == {"1": State.RETIRED, "2": State.CHAMPION}
    start(store, MODEL, "ab", 2, 3, plan=plan, **WHO)
    worse = {"champion": arm(rng, plan.max_sample_per_arm, outcome_rate=0.10),
             "challenger": arm(rng, plan.max_sample_per_arm, outcome_rate=0.06)}
    assert evaluate(store, MODEL, guardrails, worse).action is Action.ROLLBACK
    assert Lifecycle(store).state(MODEL, "3") is State.ROLLED_BACK and traffic(store, MODEL) == {"champion": ("2", 1.0)}


def test_an_ab_rollout_with_no_effect_ends_without_a_winner(store: EventStore) -> None:
    plan = ABPlan("converted", 0.10, 0.03, test="fixed")
    start(store, MODEL, "ab", 1, 2, plan=plan, **WHO)
    rng = np.random.default_rng(8)
    same = {"champion": arm(rng, plan.max_sample_per_arm, outcome_rate=0.10),
            "challenger": arm(rng, plan.max_sample_per_arm, outcome_rate=0.10)}
    decision = evaluate(store, MODEL, AnalysisConfig((ErrorRate(),)), same)
    assert decision.action is Action.ABORT and decision.ab.verdict is Verdict.NO_DIFFERENCE
    assert current(store, MODEL).status is Status.ABORTED
    assert states(store) == {"1": State.CHAMPION, "2": State.ROLLED_BACK}


def test_evidence_from_the_log_joins_labels_and_ignores_stragglers_of_an_arm_given_nothing(store: EventStore) -> None:
    import pandas as pd
    from loopwise.rollout.evidence import arm_evidence

    start(store, MODEL, "canary", 1, 2, steps=[50, 100], **WHO)
    log = pd.DataFrame({
        "arm": ["champion", "challenger", "challenger", "champion"], "version": ["1", "2", "2", "1"],
        "inputs": [json.dumps({"key": k}) for k in ("a", "b", "c", "d")], "score": [0.2, 0.9, float("nan"), 0.4],
        "latency_ms": [5.0, 7.0, 9.0, 6.0], "status": ["ok", "ok", "error", "ok"], "served": [True] * 4})
    outcomes = pd.Series({"a": 0.0, "b": 1.0})
    evidence = arm_evidence(log, current(store, MODEL), outcomes, split_key="key")
    assert (evidence["challenger"].requests, evidence["challenger"].errors) == (2, 1)
    assert evidence["challenger"].labels.tolist() == [1.0]  # aligned with the answered request
    assert np.isnan(evidence["champion"].labels[1])  # label not arrived yet
    advance(store, MODEL, **WHO)  # 100 %: the champion's stragglers (workers on the old split) are no sample
    assert arm_evidence(log, current(store, MODEL), outcomes, split_key="key")["champion"].requests == 0
