"""Rollout state in the central state store: one rollout per model at a time, every change an event.

Each change is an event on subject `rollout:<model>` whose payload holds the whole rollout as it stands after the
change, so folding the subject is taking its last snapshot, and a worker polling `traffic()` reads only what was
appended since its last poll (one indexed read, usually empty). Analysis measurements go to
`rollout:<model>/analysis`, so the state subject stays small however often a sensor measures.

Changes are compare-and-set: an event's idempotency key is the rollout's next revision, so of two writers acting
on the same state one wins and the other gets `RolloutConflict` (re-read, decide again). Illegal moves are
refused, recorded as `rollout.refused`, and raise `IllegalMove` naming the allowed ones. Starting, promoting,
rolling back and aborting also move the versions' lifecycle; the rollout event comes first (it is what traffic
follows) and `reconcile` finishes a lifecycle move that a crash interrupted.
"""

from __future__ import annotations

import threading
import uuid
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, NamedTuple, NoReturn

from loopwise.events.store import Event, EventStore, Record
from loopwise.lifecycle import ALLOWED, IllegalTransition, Lifecycle, State
from loopwise.rollout.analysis import (
    ABPlan,
    Action,
    AnalysisConfig,
    ArmEvidence,
    Decision,
    Measurement,
    decide,
)


class Strategy(StrEnum):
    BLUEGREEN = "bluegreen"
    CANARY = "canary"
    SHADOW = "shadow"
    AB = "ab"


class Status(StrEnum):
    PROGRESSING = "progressing"
    PAUSED = "paused"
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"
    ABORTED = "aborted"


class Move(StrEnum):
    START = "start"
    SET_WEIGHTS = "set_weights"
    ADVANCE = "advance"
    PAUSE = "pause"
    RESUME = "resume"
    PROMOTE = "promote"
    ROLLBACK = "rollback"
    ABORT = "abort"
    RELEASE = "release"  # a model's first version becomes champion: nothing to compare it with


CHAMPION, CHALLENGER = "champion", "challenger"  # arm names
DEFAULT_STEPS = (5, 25, 50, 100)
KINDS = {Move.START: "rollout.started", Move.SET_WEIGHTS: "rollout.weights_set", Move.ADVANCE: "rollout.advanced",
         Move.PAUSE: "rollout.paused", Move.RESUME: "rollout.resumed", Move.PROMOTE: "rollout.promoted",
         Move.ROLLBACK: "rollout.rolled_back", Move.ABORT: "rollout.aborted", Move.RELEASE: "rollout.released"}
STATE_KINDS = frozenset(KINDS.values())
REFUSED = "rollout.refused"
MEASURED = "rollout.measured"
FINISHED = frozenset({Status.PROMOTED, Status.ROLLED_BACK, Status.ABORTED})
_BY_STATUS: dict[Status, frozenset[Move]] = {
    Status.PROGRESSING: frozenset({Move.SET_WEIGHTS, Move.ADVANCE, Move.PAUSE, Move.PROMOTE, Move.ROLLBACK, Move.ABORT}),
    Status.PAUSED: frozenset({Move.RESUME, Move.SET_WEIGHTS, Move.PROMOTE, Move.ROLLBACK, Move.ABORT}),
    **{status: frozenset() for status in FINISHED},
}
# Steps and manual weights are a canary's; an A/B split is fixed by its plan; shadow never moves traffic; blue/green
# has two steps: green loaded and warmed with no traffic, then all traffic switched to it (advance), from where a
# rollback switches everything back to blue (still loaded) in one step.
_FINISHING = frozenset({Move.PAUSE, Move.RESUME, Move.PROMOTE, Move.ROLLBACK, Move.ABORT})
_BY_STRATEGY: dict[Strategy, frozenset[Move]] = {
    Strategy.CANARY: frozenset(Move) - {Move.START, Move.RELEASE},
    Strategy.BLUEGREEN: _FINISHING | {Move.ADVANCE},
    **{s: _FINISHING for s in (Strategy.AB, Strategy.SHADOW)},
}
BLUEGREEN_STEPS = (0, 100)
_ORDER = list(Move)


class IllegalMove(ValueError):
    """A move the rollout's status or strategy does not allow; it has been recorded as refused."""


class RolloutConflict(RuntimeError):
    """The rollout changed between reading it and acting on it: re-read it and decide again."""


# A callback with Registry.move_alias's signature: (alias, version, actor, reason, evidence).
AliasMover = Callable[[str, str, str, str, dict[str, Any]], None]


def subject(model: str) -> str:
    return f"rollout:{model}"


def analysis_subject(model: str) -> str:
    return f"rollout:{model}/analysis"


@dataclass(frozen=True, slots=True)
class Arm:
    name: str
    version: str
    weight: float  # share of requests in [0, 1]; a rollout's weights sum to 1


@dataclass(frozen=True)
class Rollout:
    """A model's rollout as of its last event."""

    id: str
    model: str
    strategy: Strategy
    status: Status
    arms: tuple[Arm, ...]
    champion_version: str
    challenger_version: str
    steps: tuple[int, ...]  # canary: the challenger's percentage at each stage
    stage: int
    epoch: int  # the analysis run: a new one after advance, resume and set_weights
    revision: int  # count of changes; the compare-and-set key of the next one
    started_at: str
    started_by: str
    plan: dict[str, Any] | None = None  # an A/B test's ABPlan, fixed at start
    started_seq: int = 0
    seq: int = 0  # the event this state is as of

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @property
    def final_stage(self) -> bool:
        """Whether the next success promotes (the last canary or blue/green step, or any other strategy)."""
        if self.strategy in (Strategy.CANARY, Strategy.BLUEGREEN) and self.steps:
            return self.stage >= len(self.steps) - 1
        return True

    def allowed(self) -> list[Move]:
        moves = _BY_STATUS[self.status] & _BY_STRATEGY[self.strategy]
        if self.final_stage:
            moves -= {Move.ADVANCE}
        return sorted(moves, key=_ORDER.index)

    def weights(self) -> dict[str, float]:
        return {arm.name: arm.weight for arm in self.arms}

    def ab_plan(self) -> ABPlan | None:
        return ABPlan.from_dict(self.plan) if self.plan else None

    def to_payload(self) -> dict[str, Any]:
        return {"id": self.id, "model": self.model, "strategy": self.strategy.value, "status": self.status.value,
                "arms": [{"name": a.name, "version": a.version, "weight": a.weight} for a in self.arms],
                "champion_version": self.champion_version, "challenger_version": self.challenger_version,
                "steps": list(self.steps), "stage": self.stage, "epoch": self.epoch, "revision": self.revision,
                "started_at": self.started_at, "started_by": self.started_by, "plan": self.plan,
                "started_seq": self.started_seq}

    @classmethod
    def from_record(cls, record: Record) -> Rollout:
        p = record.payload["rollout"]
        return cls(p["id"], p["model"], Strategy(p["strategy"]), Status(p["status"]),
                   tuple(Arm(a["name"], a["version"], float(a["weight"])) for a in p["arms"]),
                   p["champion_version"], p["challenger_version"], tuple(p["steps"]), int(p["stage"]),
                   int(p["epoch"]), int(p["revision"]), p["started_at"], p["started_by"], p["plan"],
                   record.seq if record.kind in (KINDS[Move.START], KINDS[Move.RELEASE]) else int(p["started_seq"]),
                   record.seq)


# -- reading ------------------------------------------------------------------------------------------------
class ArmShare(NamedTuple):
    version: str
    weight: float


class Traffic(dict[str, ArmShare]):
    """arm -> (version, weight), with what a router needs besides: the strategy and the rollout id (A/B salt).

    Empty when the model has never had a rollout (serve the recorded deployment); after a rollout ends it holds
    the one arm `champion` at weight 1.
    """

    def __init__(self, shares: Mapping[str, ArmShare] | None = None, strategy: Strategy | None = None,
                 rollout_id: str | None = None, revision: int = 0) -> None:
        super().__init__(shares or {})
        self.strategy, self.rollout_id, self.revision = strategy, rollout_id, revision

    def __repr__(self) -> str:
        return f"Traffic({dict(self)!r}, strategy={self.strategy}, rollout_id={self.rollout_id!r})"


# Per store object, per model: the last seq read and the rollout folded so far. Polls read only newer events.
_views: weakref.WeakKeyDictionary[EventStore, dict[str, tuple[int, Rollout | None]]] = weakref.WeakKeyDictionary()
_views_lock = threading.Lock()


def current(store: EventStore, model: str) -> Rollout | None:
    """The model's latest rollout (finished or not), folded from `rollout:<model>`; None if it never had one."""
    with _views_lock:
        views = _views.setdefault(store, {})
        seen, rollout = views.get(model, (0, None))
    # Appends are serialized and seq follows commit order, so nothing can appear later below `seen`.
    records = store.read(after=seen, subject=subject(model))
    if not records:
        return rollout
    for record in records:
        if record.kind in STATE_KINDS:
            rollout = Rollout.from_record(record)
    with _views_lock:
        if views.get(model, (0, None))[0] < records[-1].seq:
            views[model] = (records[-1].seq, rollout)
    return rollout


def traffic(store: EventStore, model: str) -> Traffic:
    """The split every service worker polls: one indexed read of the events since its last poll."""
    rollout = current(store, model)
    if rollout is None:
        return Traffic()
    return Traffic({a.name: ArmShare(a.version, a.weight) for a in rollout.arms}, rollout.strategy, rollout.id,
                   rollout.revision)


def history(store: EventStore, rollout: Rollout) -> list[Measurement]:
    """The rollout's earlier analysis measurements, oldest first."""
    records = store.read(after=rollout.started_seq, kind=MEASURED, subject=analysis_subject(rollout.model))
    return [Measurement.from_evidence(r.payload["decision"]) for r in records if r.payload["rollout_id"] == rollout.id]


# -- writing ------------------------------------------------------------------------------------------------
def _refuse(store: EventStore, model: str, rollout: Rollout | None, move: Move, actor: str, reason: str,
            message: str) -> NoReturn:
    store.append(Event(REFUSED, subject(model), {
        "move": move.value, "rollout_id": rollout.id if rollout else None,
        "status": rollout.status.value if rollout else None,
        "allowed": [m.value for m in rollout.allowed()] if rollout else [Move.START.value], "error": message},
        actor, reason))
    raise IllegalMove(message)


def _allowed_text(rollout: Rollout) -> str:
    moves = rollout.allowed()
    if moves:
        return ", ".join(m.value for m in moves)
    return "none (it has finished: start a new rollout)"


def _check(store: EventStore, model: str, move: Move, actor: str, reason: str, expected: Rollout | None) -> Rollout:
    rollout = expected if expected is not None else current(store, model)
    if rollout is None:
        _refuse(store, model, None, move, actor, reason,
                f"{model} has no rollout to {move.value}: start one with rollout.start(...)")
    if move not in rollout.allowed():
        why = f"a {rollout.status.value} {rollout.strategy.value} rollout"
        if move is Move.ADVANCE and rollout.strategy is Strategy.CANARY and rollout.final_stage and not rollout.finished:
            why += f" at its last step ({rollout.steps[-1]}%)"
        _refuse(store, model, rollout, move, actor, reason,
                f"{model} rollout {rollout.id}: cannot {move.value} {why}; allowed: {_allowed_text(rollout)}")
    return rollout


def _commit(store: EventStore, seen: Rollout | None, move: Move, new: Rollout, actor: str, reason: str,
            evidence: Mapping[str, Any] | None) -> Rollout:
    """Append the change keyed by the revision it follows: a concurrent change of the same revision wins."""
    op = uuid.uuid4().hex
    # Keys name a rollout by the seq of its start event: unique even if a caller reuses a rollout id.
    if seen is None or move in (Move.START, Move.RELEASE):
        key = f"rollout:{new.model}:start-after:{seen.started_seq if seen else 0}"
    else:
        new = replace(new, revision=seen.revision + 1)
        key = f"rollout:{new.model}:{seen.started_seq}:{new.revision}"
    record = store.append(Event(KINDS[move], subject(new.model),
                                {"op": op, "move": move.value, "rollout": new.to_payload(),
                                 "evidence": dict(evidence or {})}, actor, reason, key))
    if record.payload.get("op") != op:
        raise RolloutConflict(f"{new.model} rollout changed concurrently ({record.kind} by {record.actor} at "
                              f"{record.at}, seq {record.seq}); re-read it with rollout.current() and decide again")
    return Rollout.from_record(record)


def _route(state: State | None, target: State) -> list[State] | None:
    """The shortest lifecycle path to `target` through shadow/canary only; [] if there; None if none."""
    if state == target:
        return []
    paths: list[tuple[State | None, list[State]]] = [(state, [])]
    seen: set[State | None] = {state}
    while paths:
        at, path = paths.pop(0)
        for step in sorted(ALLOWED[at], key=list(State).index):
            if step == target:
                return [*path, step]
            if step in (State.SHADOW, State.CANARY) and step not in seen:
                seen.add(step)
                paths.append((step, [*path, step]))
    return None


def _plan_lifecycle(store: EventStore, model: str, rollout: Rollout | None, move: Move, moves: list[tuple[str, State]],
                    actor: str, reason: str) -> list[tuple[str, list[State]]]:
    """Check that each (version, target) has a legal lifecycle path before anything is written."""
    lifecycle, planned = Lifecycle(store), []
    for version, target in moves:
        state = lifecycle.state(model, version)
        path = _route(state, target)
        if path is None:
            _refuse(store, model, rollout, move, actor, reason,
                    f"{model} version {version} is {state.value if state else 'unknown to the lifecycle'} and cannot "
                    f"become {target.value}; a rollout needs a gated challenger and the current champion")
        planned.append((version, path))
    return planned


def _walk(store: EventStore, model: str, planned: list[tuple[str, list[State]]], actor: str, reason: str,
          evidence: Mapping[str, Any]) -> list[str]:
    lifecycle, done = Lifecycle(store), []
    for version, path in planned:
        for state in path:
            lifecycle.transition(model, version, state, actor, reason, dict(evidence))
            done.append(f"{version} -> {state.value}")
    return done


def _lifecycle_targets(rollout: Rollout) -> list[tuple[str, State]]:
    if rollout.status is Status.PROMOTED:
        # the new champion first, so the model always has one
        return [(rollout.challenger_version, State.CHAMPION),
                *([(rollout.champion_version, State.RETIRED)] if rollout.champion_version else [])]
    if rollout.status in (Status.ROLLED_BACK, Status.ABORTED):
        return [(rollout.challenger_version, State.ROLLED_BACK)]
    return [(rollout.challenger_version, State.SHADOW if rollout.strategy is Strategy.SHADOW else State.CANARY)]


def _initial_weights(strategy: Strategy, steps: tuple[int, ...], plan: ABPlan | None) -> tuple[float, float]:
    if strategy is Strategy.CANARY:
        return 1 - steps[0] / 100, steps[0] / 100
    if strategy is Strategy.AB:
        return 1 - plan.split, plan.split  # type: ignore[union-attr]
    return 1.0, 0.0  # shadow: the challenger scores mirrored requests; blue/green: it waits for the switch


def start(store: EventStore, model: str, strategy: Strategy | str, champion_version: str | int,
          challenger_version: str | int, *, steps: tuple[int, ...] | list[int] = DEFAULT_STEPS,
          plan: ABPlan | None = None, actor: str, reason: str, rollout_id: str | None = None) -> Rollout:
    """Start a rollout of `challenger_version` (a gated challenger) against `champion_version` (the champion).

    canary: the challenger takes `steps[0]`% and moves through `steps`; ab: the split of `plan`, sticky per entity;
    shadow: the champion answers and the challenger scores the same requests; bluegreen: the challenger takes no
    traffic until promoted. The challenger's lifecycle moves to canary (shadow for a shadow rollout).
    """
    try:
        strategy = Strategy(strategy)
    except ValueError:
        raise ValueError(f"unknown strategy {strategy!r}: use one of {', '.join(s.value for s in Strategy)}") from None
    champion_version, challenger_version = str(champion_version), str(challenger_version)
    if champion_version == challenger_version:
        raise ValueError(f"champion and challenger are the same version ({champion_version})")
    steps = tuple(int(s) for s in steps) if strategy is Strategy.CANARY else (
        BLUEGREEN_STEPS if strategy is Strategy.BLUEGREEN else ())
    if strategy is Strategy.CANARY and (not steps or any(not 0 < s <= 100 for s in steps)
                                        or any(a >= b for a, b in zip(steps, steps[1:], strict=False))):
        raise ValueError(f"canary steps {list(steps)} must be increasing percentages in (0, 100], e.g. [5, 25, 50, 100]")
    if (strategy is Strategy.AB) != (plan is not None):
        raise ValueError("an A/B rollout needs its ABPlan declared at start (and only an A/B rollout takes one)")
    previous = current(store, model)
    if previous is not None and not previous.finished:
        _refuse(store, model, previous, Move.START, actor, reason,
                f"{model} already has a {previous.status.value} {previous.strategy.value} rollout {previous.id}; "
                f"finish it first (allowed: {_allowed_text(previous)})")
    state = Lifecycle(store).state(model, champion_version)
    if state is not State.CHAMPION:
        _refuse(store, model, previous, Move.START, actor, reason,
                f"{model} version {champion_version} is {state.value if state else 'unknown to the lifecycle'}, "
                "not champion: a rollout compares a challenger with the current champion")
    champion_weight, challenger_weight = _initial_weights(strategy, steps, plan)
    rollout = Rollout(rollout_id or uuid.uuid4().hex[:16], model, strategy, Status.PROGRESSING,
                      (Arm(CHAMPION, champion_version, champion_weight), Arm(CHALLENGER, challenger_version, challenger_weight)),
                      champion_version, challenger_version, steps, 0, 0, 0,
                      datetime.now(UTC).isoformat(timespec="seconds"), actor, plan.to_dict() if plan else None)
    planned = _plan_lifecycle(store, model, previous, Move.START, _lifecycle_targets(rollout), actor, reason)
    started = _commit(store, previous, Move.START, rollout, actor, reason, {"plan": rollout.plan})
    _walk(store, model, planned, actor, f"rollout {started.id} ({strategy.value}) started: {reason}",
          {"rollout_id": started.id})
    return started


def release(store: EventStore, model: str, version: str | int, *, actor: str, reason: str,
            move_alias: AliasMover | None = None) -> Rollout:
    """Make a model's first gated version its champion at once: with no champion there is nothing to compare.

    Refused when the model has a champion (start a rollout instead). The version's lifecycle moves
    challenger -> canary -> champion and `move_alias` points the MLflow `champion` alias at it.
    """
    version = str(version)
    previous = current(store, model)
    lifecycle = Lifecycle(store)
    if any(v.state is State.CHAMPION for v in lifecycle.versions(model)):
        _refuse(store, model, previous, Move.RELEASE, actor, reason,
                f"{model} has a champion already: roll version {version} out with rollout.start(...)")
    if previous is not None and not previous.finished:
        _refuse(store, model, previous, Move.RELEASE, actor, reason,
                f"{model} already has a {previous.status.value} rollout {previous.id}; finish it first")
    rollout = Rollout(uuid.uuid4().hex[:16], model, Strategy.BLUEGREEN, Status.PROMOTED, (Arm(CHAMPION, version, 1.0),),
                      "", version, (), 0, 0, 0, datetime.now(UTC).isoformat(timespec="seconds"), actor)
    planned = _plan_lifecycle(store, model, previous, Move.RELEASE, _lifecycle_targets(rollout), actor, reason)
    done = _commit(store, previous, Move.RELEASE, rollout, actor, reason, {})
    why = f"first release {done.id}: {reason}"
    _walk(store, model, planned, actor, why, {"rollout_id": done.id})
    if move_alias is not None:
        move_alias(CHAMPION, version, actor, why, {"rollout_id": done.id})
    return done


def _change(store: EventStore, model: str, move: Move, actor: str, reason: str, evidence: Mapping[str, Any] | None,
            expected: Rollout | None, **changes: Any) -> Rollout:
    seen = _check(store, model, move, actor, reason, expected)
    return _commit(store, seen, move, replace(seen, **changes), actor, reason, evidence)


def set_weights(store: EventStore, model: str, weights: Mapping[str, float], *, actor: str, reason: str,
                evidence: Mapping[str, Any] | None = None, expected: Rollout | None = None) -> Rollout:
    """Set a canary's split by hand (every arm, summing to 1); a new analysis run starts."""
    seen = _check(store, model, Move.SET_WEIGHTS, actor, reason, expected)
    names = {a.name for a in seen.arms}
    if set(weights) != names or any(not 0 <= w <= 1 for w in weights.values()) or abs(sum(weights.values()) - 1) > 1e-9:
        raise ValueError(f"weights {dict(weights)} must give every arm ({', '.join(sorted(names))}) a share in [0, 1], "
                         "summing to 1")
    arms = tuple(replace(a, weight=float(weights[a.name])) for a in seen.arms)
    return _commit(store, seen, Move.SET_WEIGHTS, replace(seen, arms=arms, epoch=seen.epoch + 1), actor, reason, evidence)


def advance(store: EventStore, model: str, *, actor: str, reason: str, evidence: Mapping[str, Any] | None = None,
            expected: Rollout | None = None) -> Rollout:
    """Move a canary to its next step, or switch a blue/green rollout's traffic to green; a new analysis run starts."""
    seen = _check(store, model, Move.ADVANCE, actor, reason, expected)
    stage = seen.stage + 1
    share = seen.steps[stage] / 100
    arms = tuple(replace(a, weight=share if a.name == CHALLENGER else 1 - share) for a in seen.arms)
    return _commit(store, seen, Move.ADVANCE, replace(seen, arms=arms, stage=stage, epoch=seen.epoch + 1), actor,
                   reason, evidence)


def pause(store: EventStore, model: str, *, actor: str, reason: str, evidence: Mapping[str, Any] | None = None,
          expected: Rollout | None = None) -> Rollout:
    """Hold the rollout where it is: traffic stays, analysis keeps measuring, only a rollback still applies."""
    return _change(store, model, Move.PAUSE, actor, reason, evidence, expected, status=Status.PAUSED)


def resume(store: EventStore, model: str, *, actor: str, reason: str, evidence: Mapping[str, Any] | None = None,
           expected: Rollout | None = None) -> Rollout:
    """Let a paused rollout progress again; a new analysis run starts (earlier undecided results are forgotten)."""
    seen = _check(store, model, Move.RESUME, actor, reason, expected)
    return _commit(store, seen, Move.RESUME, replace(seen, status=Status.PROGRESSING, epoch=seen.epoch + 1), actor,
                   reason, evidence)


def _finish(store: EventStore, model: str, move: Move, status: Status, actor: str, reason: str,
            evidence: Mapping[str, Any] | None, expected: Rollout | None, move_alias: AliasMover | None) -> Rollout:
    seen = _check(store, model, move, actor, reason, expected)
    serving = seen.challenger_version if status is Status.PROMOTED else seen.champion_version
    new = replace(seen, status=status, arms=(Arm(CHAMPION, serving, 1.0),))
    planned = _plan_lifecycle(store, model, seen, move, _lifecycle_targets(new), actor, reason)
    done = _commit(store, seen, move, new, actor, reason, evidence)
    why = f"rollout {done.id} {status.value}: {reason}"
    _walk(store, model, planned, actor, why, {"rollout_id": done.id, **dict(evidence or {})})
    if status is Status.PROMOTED and move_alias is not None:
        move_alias(CHAMPION, done.challenger_version, actor, why, {"rollout_id": done.id, **dict(evidence or {})})
    return done


def promote(store: EventStore, model: str, *, actor: str, reason: str, evidence: Mapping[str, Any] | None = None,
            expected: Rollout | None = None, move_alias: AliasMover | None = None) -> Rollout:
    """All traffic to the challenger, which becomes champion; the previous champion retires.

    `move_alias` (e.g. `Registry(...).move_alias`) then points the MLflow `champion` alias at it.
    """
    return _finish(store, model, Move.PROMOTE, Status.PROMOTED, actor, reason, evidence, expected, move_alias)


def rollback(store: EventStore, model: str, *, actor: str, reason: str, evidence: Mapping[str, Any] | None = None,
             expected: Rollout | None = None) -> Rollout:
    """All traffic back to the champion; the challenger is rolled back."""
    return _finish(store, model, Move.ROLLBACK, Status.ROLLED_BACK, actor, reason, evidence, expected, None)


def abort(store: EventStore, model: str, *, actor: str, reason: str, evidence: Mapping[str, Any] | None = None,
          expected: Rollout | None = None) -> Rollout:
    """End without a verdict against the challenger (an A/B test with no winner, or a person's call): traffic back
    to the champion; the challenger leaves live traffic (lifecycle rolled_back, the only way out of canary)."""
    return _finish(store, model, Move.ABORT, Status.ABORTED, actor, reason, evidence, expected, None)


def reconcile(store: EventStore, model: str, *, actor: str = "system") -> list[str]:
    """Finish the lifecycle moves the latest rollout implies (after a crash between its event and them)."""
    rollout = current(store, model)
    if rollout is None:
        return []
    lifecycle, planned = Lifecycle(store), []
    for version, target in _lifecycle_targets(rollout):
        path = _route(lifecycle.state(model, version), target)
        if path is None:
            raise IllegalTransition(f"{model} version {version} cannot reach {target.value} for rollout {rollout.id}")
        planned.append((version, path))
    return _walk(store, model, planned, actor, f"reconciled with rollout {rollout.id} ({rollout.status.value})",
                 {"rollout_id": rollout.id})


# -- analysis -----------------------------------------------------------------------------------------------
_APPLY: dict[Action, Callable[..., Rollout]] = {Action.ADVANCE: advance, Action.PAUSE: pause,
                                                Action.ROLLBACK: rollback, Action.ABORT: abort}


def evaluate(store: EventStore, model: str, config: AnalysisConfig, evidence: Mapping[str, ArmEvidence], *,
             actor: str = "analysis", move_alias: AliasMover | None = None, key: str | None = None) -> Decision | None:
    """Measure the model's active rollout, record the decision with its evidence, and apply it.

    Returns None when there is nothing to do: no active rollout, or `key` (a sensor tick's id) was measured
    already. A paused rollout is measured and recorded, but only a rollback is applied to it (pausing stops
    progress, never protection).
    Raises RolloutConflict if the rollout changed while deciding (the measurement stays recorded).
    """
    rollout = current(store, model)
    if rollout is None or rollout.finished:
        return None
    decision = decide(config, evidence, history(store, rollout), epoch=rollout.epoch,
                      final_stage=rollout.final_stage, plan=rollout.ab_plan())
    applies = decision.action is not Action.WAIT and (
        rollout.status is Status.PROGRESSING or decision.action is Action.ROLLBACK)
    op = uuid.uuid4().hex
    record = store.append(Event(MEASURED, analysis_subject(model), {
        "op": op, "rollout_id": rollout.id, "stage": rollout.stage, "revision": rollout.revision, "applied": applies,
        "decision": decision.evidence()}, actor, decision.reason, key))
    if record.payload.get("op") != op:
        return None  # this key was measured already: nothing recorded or applied twice
    if not applies:
        return decision
    because = {"measurement_seq": record.seq, **decision.evidence()}
    if decision.action is Action.PROMOTE:
        promote(store, model, actor=actor, reason=decision.reason, evidence=because, expected=rollout,
                move_alias=move_alias)
    else:
        _APPLY[decision.action](store, model, actor=actor, reason=decision.reason, evidence=because, expected=rollout)
    return decision
