"""The model lifecycle: an explicit state machine per model version, kept in the event log.

A version's state is the target of its last `lifecycle.transition` event, so the audit trail
is the single source of truth. An illegal transition is refused with a clear error and the
refusal is recorded too.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from loopwise.events.store import Event, EventStore, Record


class State(StrEnum):
    TRAINED = "trained"
    VALIDATED = "validated"
    CHALLENGER = "challenger"
    SHADOW = "shadow"
    CANARY = "canary"
    CHAMPION = "champion"
    RETIRED = "retired"
    ROLLED_BACK = "rolled_back"


ALLOWED: dict[State | None, frozenset[State]] = {
    None: frozenset({State.TRAINED}),
    State.TRAINED: frozenset({State.VALIDATED, State.RETIRED}),
    State.VALIDATED: frozenset({State.CHALLENGER, State.RETIRED}),
    State.CHALLENGER: frozenset({State.SHADOW, State.CANARY, State.RETIRED}),
    State.SHADOW: frozenset({State.CANARY, State.ROLLED_BACK, State.RETIRED}),
    State.CANARY: frozenset({State.CHAMPION, State.ROLLED_BACK}),
    State.CHAMPION: frozenset({State.RETIRED, State.ROLLED_BACK}),
    State.ROLLED_BACK: frozenset({State.RETIRED}),
    State.RETIRED: frozenset(),
}
TRANSITION = "lifecycle.transition"
REFUSED = "lifecycle.refused"


class IllegalTransition(ValueError):
    """A transition the state machine does not allow; it has been recorded as refused."""


def subject(model: str, version: int | str) -> str:
    return f"model:{model}/{version}"


@dataclass(frozen=True)
class VersionState:
    model: str
    version: str
    state: State
    since: str
    seq: int


class Lifecycle:
    """Move model versions between states, only along allowed transitions."""

    def __init__(self, store: EventStore) -> None:
        self.store = store

    def state(self, model: str, version: int | str) -> State | None:
        records = self.store.read(kind=TRANSITION, subject=subject(model, version))
        return State(records[-1].payload["to"]) if records else None

    def transition(self, model: str, version: int | str, to: State | str, actor: str = "system",
                   reason: str = "", evidence: dict[str, Any] | None = None) -> Record:
        """Record the move of a version to `to`, or record the refusal and raise IllegalTransition."""
        target = State(to)
        current = self.state(model, version)
        payload = {"model": model, "version": str(version), "from": current.value if current else None,
                   "to": target.value, "evidence": evidence or {}}
        if target not in ALLOWED[current]:
            allowed = ", ".join(sorted(s.value for s in ALLOWED[current])) or "none (final state)"
            message = (f"{model} version {version}: cannot move from {current.value if current else 'nothing'} "
                       f"to {target.value}; allowed: {allowed}")
            self.store.append(Event(REFUSED, subject(model, version), {**payload, "error": message}, actor, reason))
            raise IllegalTransition(message)
        return self.store.append(Event(TRANSITION, subject(model, version), payload, actor, reason))

    def versions(self, model: str | None = None) -> list[VersionState]:
        """Every known version's current state (of one model, or all)."""
        latest: dict[tuple[str, str], Record] = {}
        for record in self.store.read(kind=TRANSITION):
            key = (record.payload["model"], record.payload["version"])
            if model is None or key[0] == model:
                latest[key] = record
        return [VersionState(m, v, State(r.payload["to"]), r.at, r.seq)
                for (m, v), r in sorted(latest.items(), key=lambda kv: (kv[0][0], _version_key(kv[0][1])))]


def _version_key(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (0, version)
