"""A model's rollout policy from the profile (`rollout`), and the two acts that follow it: deploying a new
challenger, and analysing the running rollout on the prediction log's evidence.

`deploy` is what materializing a model's endpoint does; `analyse` is what the canary-analysis sensor and
`loopwise rollout analyse` do. Both record every change in the central state store, which every service
worker follows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from loopwise.config import ConfigError, RolloutPolicy
from loopwise.events.store import EventStore
from loopwise.lake.tables import Lake
from loopwise.lifecycle import Lifecycle, State
from loopwise.registry import CHALLENGER, CHAMPION, Registry
from loopwise.rollout.analysis import (
    ABPlan,
    AnalysisConfig,
    Decision,
    ErrorRate,
    LabelledAccuracy,
    LatencyQuantile,
    Rule,
    ScoreShift,
)
from loopwise.rollout.evidence import arm_evidence, read_outcomes, read_predictions, window_start
from loopwise.rollout.state import (
    Rollout,
    Status,
    Strategy,
    abort,
    advance,
    current,
    evaluate,
    release,
    start,
    subject,
)
from loopwise.usecase import ModelSpec

RULES: dict[str, type[Rule]] = {"error_rate": ErrorRate, "latency": LatencyQuantile, "score_shift": ScoreShift,
                                "accuracy": LabelledAccuracy}


def analysis_config(rules: Sequence[Mapping[str, Any]], where: str = "rollout.rules") -> AnalysisConfig:
    """The analysis a list of rule settings describes; a bad one raises ConfigError naming its key."""
    built = []
    for i, settings in enumerate(rules):
        values = dict(settings)
        kind = values.pop("rule", None)
        if kind not in RULES:
            raise ConfigError(f"{where}[{i}]: `rule` must be one of {', '.join(RULES)}, got {kind!r}")
        values.setdefault("name", kind)
        try:
            built.append(RULES[kind](**values))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}[{i}] ({kind}): {exc}") from None
    try:
        return AnalysisConfig(tuple(built))
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def ab_plan(policy: RolloutPolicy, model: str) -> ABPlan | None:
    if policy.strategy != Strategy.AB.value:
        return None
    if not policy.ab:
        raise ConfigError(f"rollout.models.{model}.ab: an A/B rollout needs its plan (metric, baseline_rate, "
                          "minimum_detectable_effect, ...) declared before it starts")
    try:
        return ABPlan(**policy.ab)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"rollout.models.{model}.ab: {exc}") from None


@dataclass(frozen=True)
class Deployment:
    """What deploying did: `action` is released, started, unchanged or superseded+started."""

    action: str
    rollout: Rollout | None
    version: str


def deploy(store: EventStore, registry: Registry, model: str, policy: RolloutPolicy, *, actor: str,
           reason: str) -> Deployment:
    """Bring the model's newest gated version (its `challenger` alias) towards production by the policy.

    No champion yet: the version is released as champion at once. A champion: a rollout of the challenger
    starts with the policy's strategy; one already running for an older challenger is aborted as superseded,
    one running for this challenger is left alone (deploying twice is a no-op).
    """
    champion, challenger = registry.alias(CHAMPION), registry.alias(CHALLENGER)
    running = current(store, model)
    if challenger is None or challenger == champion:
        if champion is None:
            raise ValueError(f"{model} has no version through the gate: materialize its registered_model first")
        return Deployment("unchanged", running, champion)
    if running is not None and not running.finished and running.challenger_version == challenger:
        return Deployment("unchanged", running, challenger)
    if Lifecycle(store).state(model, challenger) is not State.CHALLENGER:
        # already rolled out and decided (promoted, rolled back): nothing new to deploy
        return Deployment("unchanged", running, champion or challenger)
    if champion is None:
        return Deployment("released", release(store, model, challenger, actor=actor, reason=reason,
                                              move_alias=registry.move_alias), challenger)
    action = "started"
    if running is not None and not running.finished:
        abort(store, model, actor=actor, reason=f"superseded by version {challenger}: {reason}")
        action = "superseded+started"
    analysis_config(policy.rules or [], f"rollout.models.{model}.rules")  # a bad rule fails before anything moves
    rollout = start(store, model, policy.strategy or "canary", champion, challenger, steps=policy.steps or (),
                    plan=ab_plan(policy, model), actor=actor, reason=reason)
    return Deployment(action, rollout, challenger)


def _epoch_started(store: EventStore, rollout: Rollout) -> str:
    """When the rollout's current analysis run began: the time of its latest state change."""
    records = store.read(after=rollout.seq - 1, subject=subject(rollout.model), limit=1)
    return records[0].at if records else rollout.started_at


def analyse(store: EventStore, lake: Lake, spec: ModelSpec, policy: RolloutPolicy, registry: Registry, *,
            entity_key: str | None = None, actor: str = "analysis", key: str | None = None) -> Decision | None:
    """Measure the model's running rollout on the predictions logged since its analysis run began, decide by
    the policy's rules and apply the decision (recorded with its evidence). None when no rollout runs.

    `entity_key` is the request field an A/B split is sticky on (the feature service's join key).
    """
    rollout = current(store, spec.name)
    if rollout is None or rollout.finished:
        return None
    if rollout.strategy is Strategy.BLUEGREEN and rollout.stage == 0 and rollout.status is Status.PROGRESSING:
        # Green was loaded and warmed beside blue when the rollout started: switch everything to it; the
        # analysis then judges green on live traffic, and a rollback switches back to blue in one step.
        advance(store, spec.name, actor=actor, reason="blue/green: all traffic switches to green", expected=rollout)
        return None
    since = window_start(_epoch_started(store, rollout))
    predictions = read_predictions(lake, spec.name, since)
    evidence = arm_evidence(predictions, rollout, read_outcomes(lake, spec), split_key=spec.split_key,
                            entity_key=entity_key)
    config = analysis_config(policy.rules or [], f"rollout.models.{spec.name}.rules")
    return evaluate(store, spec.name, config, evidence, actor=actor, move_alias=registry.move_alias, key=key)



MANUAL = ("promote", "rollback", "pause", "resume", "abort", "advance")


def act(store: EventStore, registry: Registry, model: str, action: str, *, actor: str, reason: str) -> Rollout:
    """Do by hand what the analysis does (`loopwise rollout ...`, the admin routes); recorded with who and why.

    Raises IllegalMove (recorded as refused) when the rollout's state or strategy does not allow it.
    """
    from loopwise.rollout import state

    if action not in MANUAL:
        raise ValueError(f"unknown rollout action {action!r}: use one of {', '.join(MANUAL)}")
    if not reason.strip():
        raise ValueError("a manual rollout action needs a reason (it is recorded in the audit trail)")
    evidence = {"manual": True}
    if action == "promote":
        return state.promote(store, model, actor=actor, reason=reason, evidence=evidence, move_alias=registry.move_alias)
    move = getattr(state, action)
    return move(store, model, actor=actor, reason=reason, evidence=evidence)


def describe(store: EventStore, model: str, history: int = 10) -> dict[str, Any]:
    """A model's rollout as JSON: its state, arms, allowed moves, and its latest decisions with their evidence."""
    rollout = current(store, model)
    if rollout is None:
        return {"model": model, "rollout": None}
    from loopwise.rollout.state import analysis_subject

    measured = [r for r in store.read(subject=analysis_subject(model)) if r.payload.get("rollout_id") == rollout.id]
    changes = [r for r in store.read(subject=subject(model)) if r.seq >= rollout.started_seq]
    return {"model": model, "rollout": {**rollout.to_payload(), "allowed": [m.value for m in rollout.allowed()]},
            "changes": [{"seq": r.seq, "at": r.at, "kind": r.kind, "actor": r.actor, "reason": r.reason}
                        for r in changes[-history:]],
            "decisions": [{"seq": r.seq, "at": r.at, "applied": r.payload.get("applied"), "reason": r.reason,
                           "action": r.payload["decision"].get("action")} for r in measured[-history:]]}
