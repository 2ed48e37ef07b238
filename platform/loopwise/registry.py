"""The model registry: MLflow versions and aliases (never stages), moved only through the gate.

A version becomes `challenger` only if its holdout metrics clear the configured floors and
ceilings and are not worse than the current champion's on the same holdout beyond a tolerance.
Every decision and every alias move is an event with its evidence, and follows the lifecycle
state machine; a refused version keeps its evidence and moves no alias.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from loopwise.events.store import Event, EventStore
from loopwise.lifecycle import REFUSED, IllegalTransition, Lifecycle, State, subject

CHALLENGER, CHAMPION = "challenger", "champion"
ALIAS_MOVED = "registry.alias_moved"
GATE_EVALUATED = "registry.gate_evaluated"
VERSION_REGISTERED = "registry.version_registered"
HIGHER_IS_BETTER = {"auc", "f1", "accuracy", "precision", "recall"}
# An alias names a version in exactly this lifecycle state: moving it never bypasses the state machine.
ALIAS_STATE = {CHALLENGER: State.CHALLENGER, CHAMPION: State.CHAMPION}


@dataclass(frozen=True)
class GatePolicy:
    floors: dict[str, float] = field(default_factory=dict)
    ceilings: dict[str, float] = field(default_factory=dict)
    tolerance: float = 0.01


@dataclass
class GateDecision:
    """Whether a version may become challenger, and why: the evidence kept with it."""

    version: str
    passed: bool
    reasons: list[str]
    candidate: dict[str, float]
    champion: dict[str, float] | None = None
    champion_version: str | None = None

    def evidence(self) -> dict[str, Any]:
        return asdict(self)


def decide(version: str, candidate: dict[str, float], policy: GatePolicy,
           champion: dict[str, float] | None = None, champion_version: str | None = None) -> GateDecision:
    """Apply floors, ceilings and the champion comparison (metrics from the same holdout)."""
    reasons, passed = [], True
    for metric, floor in sorted(policy.floors.items()):
        value = candidate.get(metric)
        ok = value is not None and value >= floor
        passed &= ok
        reasons.append(f"{metric} {value} {'>=' if ok else '<'} floor {floor}")
    for metric, ceiling in sorted(policy.ceilings.items()):
        value = candidate.get(metric)
        ok = value is not None and value <= ceiling
        passed &= ok
        reasons.append(f"{metric} {value} {'<=' if ok else '>'} ceiling {ceiling}")
    if champion is None:
        reasons.append("no champion yet: nothing to compare against")
    else:
        for metric, theirs in sorted(champion.items()):
            ours = candidate.get(metric)
            if ours is None:
                continue
            worse = theirs - ours if metric in HIGHER_IS_BETTER else ours - theirs
            ok = worse <= policy.tolerance
            passed &= ok
            reasons.append(f"{metric} {ours} vs champion v{champion_version} {theirs}: "
                           f"{'within' if ok else 'worse than'} tolerance {policy.tolerance}")
    return GateDecision(version, passed, reasons, candidate, champion, champion_version)


class Registry:
    """Versions and aliases of one model in MLflow, with every change in the audit trail."""

    def __init__(self, tracking_uri: str, events: EventStore, model: str) -> None:
        import mlflow
        from mlflow import MlflowClient

        if tracking_uri.startswith("sqlite:///"):
            Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        # MLflow resolves a logged model's `models:/m-...` source through the process-wide URIs.
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
        self.client = MlflowClient(tracking_uri, tracking_uri)
        self.events, self.model = events, model
        self.lifecycle = Lifecycle(events)

    def register(self, model_uri: str, run_id: str, tags: dict[str, str] | None = None, actor: str = "system") -> str:
        """A new version of the model (state `trained`), tagged with its lineage."""
        import mlflow

        # register_model links a logged model (models:/m-...) by its id, which a tracking server requires.
        version = mlflow.register_model(model_uri, self.model, tags=tags or {}).version
        self.events.append(Event(VERSION_REGISTERED, subject(self.model, version),
                                 {"model_uri": model_uri, "run_id": run_id, "tags": tags or {}}, actor))
        self.lifecycle.transition(self.model, version, State.TRAINED, actor, "registered", {"run_id": run_id})
        return str(version)

    def alias(self, alias: str) -> str | None:
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client.get_model_version_by_alias(self.model, alias).version)
        except MlflowException:
            return None

    def move_alias(self, alias: str, version: str, actor: str, reason: str, evidence: dict[str, Any]) -> None:
        """Point `alias` at `version` and record the move with its evidence.

        The version must already be in the alias's lifecycle state (`challenger` -> challenger,
        `champion` -> champion); otherwise the move is refused, recorded, and raises IllegalTransition.
        """
        required = ALIAS_STATE.get(alias)
        state = self.lifecycle.state(self.model, version)
        if required is not None and state != required:
            message = (f"{self.model} version {version}: alias {alias} needs lifecycle state {required.value}, "
                       f"the version is {state.value if state else 'unknown'}; move its lifecycle first")
            self.events.append(Event(REFUSED, subject(self.model, version),
                                     {"alias": alias, "state": state.value if state else None, "error": message},
                                     actor, reason))
            raise IllegalTransition(message)
        previous = self.alias(alias)
        self.client.set_registered_model_alias(self.model, alias, version)
        self.events.append(Event(ALIAS_MOVED, subject(self.model, version),
                                 {"alias": alias, "from_version": previous, "to_version": version,
                                  "evidence": evidence}, actor, reason))

    def gate(self, version: str, candidate: dict[str, float], policy: GatePolicy,
             champion: dict[str, float] | None = None, actor: str = "system") -> GateDecision:
        """Decide on a version; only a pass validates it and makes it challenger."""
        decision = decide(version, candidate, policy, champion, self.alias(CHAMPION) if champion else None)
        self.events.append(Event(GATE_EVALUATED, subject(self.model, version), decision.evidence(), actor,
                                 "passed" if decision.passed else "refused"))
        if decision.passed:
            self.lifecycle.transition(self.model, version, State.VALIDATED, actor, "passed the gate", decision.evidence())
            self.lifecycle.transition(self.model, version, State.CHALLENGER, actor, "passed the gate")
            self.move_alias(CHALLENGER, version, actor, "passed the gate", decision.evidence())
        return decision
