"""The registry gate: aliases move only for a version that clears floors and the champion, as events."""

import mlflow
import pytest
from loopwise.events import open_store
from loopwise.lifecycle import REFUSED, IllegalTransition, State
from loopwise.registry import ALIAS_MOVED, CHALLENGER, CHAMPION, GATE_EVALUATED, GatePolicy, Registry, decide

POLICY = GatePolicy(floors={"auc": 0.65}, ceilings={"brier": 0.25}, tolerance=0.01)
MODEL = "ticket-escalation"


class ConstantModel(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input: list[str], params=None) -> list[float]:  # type: ignore[no-untyped-def]
        return [0.5] * len(model_input)


@pytest.fixture
def registry(tmp_path) -> Registry:
    uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    reg = Registry(uri, open_store(f"sqlite:///{tmp_path / 'events.db'}"), MODEL)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment_id=reg.client.create_experiment(
        "loopwise", artifact_location=(tmp_path / "artifacts").as_uri()))
    return reg


def new_version(registry: Registry, auc: float) -> str:
    with mlflow.start_run() as run:
        mlflow.log_metric("auc", auc)
        info = mlflow.pyfunc.log_model(name="model", python_model=ConstantModel())
    return registry.register(info.model_uri, run.info.run_id, {"feature_service": "escalation_v1"})


def promote_to_champion(registry: Registry, version: str, actor: str = "alice") -> None:
    """The lifecycle path from challenger to champion, then the alias that names it."""
    for state in (State.CANARY, State.CHAMPION):
        registry.lifecycle.transition(registry.model, version, state, actor, f"to {state.value}")
    registry.move_alias(CHAMPION, version, actor, "manual promotion for the test", {})


def test_the_decision_names_every_reason() -> None:
    d = decide("2", {"auc": 0.70, "brier": 0.3}, POLICY, {"auc": 0.75}, "1")
    assert not d.passed
    assert "brier 0.3 > ceiling 0.25" in d.reasons and "auc 0.7 >= floor 0.65" in d.reasons
    assert "auc 0.7 vs champion v1 0.75: worse than tolerance 0.01" in d.reasons
    assert decide("1", {"auc": 0.70, "brier": 0.2}, POLICY).reasons[-1] == "no champion yet: nothing to compare against"


def test_a_first_good_version_becomes_challenger_with_its_evidence_in_the_trail(registry: Registry) -> None:
    version = new_version(registry, 0.8)
    decision = registry.gate(version, {"auc": 0.8, "brier": 0.15}, POLICY)
    assert decision.passed and registry.alias(CHALLENGER) == version
    assert registry.lifecycle.state(registry.model, version) == State.CHALLENGER
    moved = registry.events.read(kind=ALIAS_MOVED)
    assert len(moved) == 1 and moved[0].payload["alias"] == CHALLENGER and moved[0].payload["to_version"] == version
    assert "no champion yet: nothing to compare against" in moved[0].payload["evidence"]["reasons"]
    assert registry.events.verify().ok


def test_the_gate_refuses_a_worse_model_and_leaves_aliases_untouched(registry: Registry) -> None:
    first = new_version(registry, 0.8)
    registry.gate(first, {"auc": 0.8, "brier": 0.15}, POLICY)
    promote_to_champion(registry, first)
    worse = new_version(registry, 0.7)
    decision = registry.gate(worse, {"auc": 0.7, "brier": 0.15}, POLICY, champion={"auc": 0.8, "brier": 0.15})
    assert not decision.passed
    assert registry.alias(CHALLENGER) == first and registry.alias(CHAMPION) == first
    assert registry.lifecycle.state(registry.model, worse) == State.TRAINED
    refused = [e for e in registry.events.read(kind=GATE_EVALUATED) if e.reason == "refused"]
    assert len(refused) == 1 and refused[0].payload["champion"] == {"auc": 0.8, "brier": 0.15}
    assert not [e for e in registry.events.read(kind=ALIAS_MOVED) if e.payload["to_version"] == worse]


def test_a_version_below_the_floor_is_refused_even_without_a_champion(registry: Registry) -> None:
    version = new_version(registry, 0.6)
    assert not registry.gate(version, {"auc": 0.6, "brier": 0.2}, POLICY).passed
    assert registry.alias(CHALLENGER) is None


def test_an_alias_moves_only_to_a_version_in_its_lifecycle_state(registry: Registry) -> None:
    version = new_version(registry, 0.8)
    for alias in (CHAMPION, CHALLENGER):  # a trained version: neither alias may name it
        with pytest.raises(IllegalTransition, match=f"alias {alias} needs lifecycle state {alias}, the version is trained"):
            registry.move_alias(alias, version, "mallory", "skip the gate", {})
    assert registry.alias(CHAMPION) is None and registry.alias(CHALLENGER) is None
    assert registry.lifecycle.state(registry.model, version) == State.TRAINED
    refused = registry.events.read(kind=REFUSED)
    assert [(e.subject, e.actor, e.reason, e.payload["alias"], e.payload["state"]) for e in refused] == [
        (f"model:{MODEL}/{version}", "mallory", "skip the gate", alias, "trained") for alias in (CHAMPION, CHALLENGER)]
    assert not registry.events.read(kind=ALIAS_MOVED)

    assert registry.gate(version, {"auc": 0.8, "brier": 0.15}, POLICY).passed  # challenger, by the state machine
    with pytest.raises(IllegalTransition, match="alias champion needs lifecycle state champion, the version is challenger"):
        registry.move_alias(CHAMPION, version, "mallory", "skip the canary", {})
    assert registry.alias(CHAMPION) is None and registry.alias(CHALLENGER) == version
    assert len(registry.events.read(kind=REFUSED)) == 3

    promote_to_champion(registry, version)  # along the lifecycle, the same move is allowed
    assert registry.alias(CHAMPION) == version
    assert [e.payload["alias"] for e in registry.events.read(kind=ALIAS_MOVED)] == [CHALLENGER, CHAMPION]
    assert registry.events.verify().ok
