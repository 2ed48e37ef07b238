"""Progressive delivery, the engine half: rollout state in the central state store, arm assignment, and the
analysis rules that decide each step (Argo Rollouts' semantics). No service or orchestrator code here: a service
polls `traffic()` and routes with `Router`; a sensor builds `ArmEvidence` from the prediction log and calls
`evaluate()`."""

from loopwise.rollout.analysis import (
    ABPlan,
    ABResult,
    Action,
    AnalysisConfig,
    ArmEvidence,
    Decision,
    ErrorRate,
    LabelledAccuracy,
    LatencyQuantile,
    Measurement,
    Result,
    Rule,
    RuleResult,
    ScoreShift,
    Verdict,
    decide,
    decide_ab,
)
from loopwise.rollout.assign import Route, Router, unit, units
from loopwise.rollout.state import (
    CHALLENGER,
    CHAMPION,
    Arm,
    ArmShare,
    IllegalMove,
    Move,
    Rollout,
    RolloutConflict,
    Status,
    Strategy,
    Traffic,
    abort,
    advance,
    current,
    evaluate,
    history,
    pause,
    promote,
    reconcile,
    release,
    resume,
    rollback,
    set_weights,
    start,
    traffic,
)

__all__ = [
    "CHALLENGER", "CHAMPION", "ABPlan", "ABResult", "Action", "AnalysisConfig", "Arm", "ArmEvidence", "ArmShare",
    "Decision", "ErrorRate", "IllegalMove", "LabelledAccuracy", "LatencyQuantile", "Measurement", "Move", "Result",
    "Rollout", "RolloutConflict", "Route", "Router", "Rule", "RuleResult", "ScoreShift", "Status", "Strategy",
    "Traffic", "Verdict", "abort", "advance", "current", "decide", "decide_ab", "evaluate", "history", "pause",
    "promote", "reconcile", "release", "resume", "rollback", "set_weights", "start", "traffic", "unit", "units",
]
