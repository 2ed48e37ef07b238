"""Rollout analysis: rules that turn per-arm evidence into success / failure / inconclusive, with Argo Rollouts'
semantics, and the decision (advance, promote, rollback, pause, wait, abort) that follows from them.

Every rule measures a "badness" of the challenger against a threshold with two one-sided tests: it fails when
the evidence says the threshold is exceeded (p_exceeds < alpha), succeeds when the evidence says it is not
(p_within < alpha), and is inconclusive otherwise (cause "undecided") or below its minimum sample (cause
"insufficient_sample"). Per rule, as in Argo: more failed measurements than `failure_limit` in the rollout fail
the analysis (rollback); more undecided measurements than `inconclusive_limit` in the current analysis run pause
the rollout; `consecutive_successes` trailing successes in the run pass the rule. A run restarts when the
rollout advances, resumes or has its weights set (the rollout's `epoch`). Too little data is not a verdict: it
waits. Rules that compare with the champion (score shift, accuracy) cannot measure at a canary step where the
champion has no traffic (100%): there they are "no_baseline" and their last measured result stands. Repeated
measurements are not corrected for multiple looks (Argo neither); the A/B test is, by its plan.

A/B rollouts decide on a binary business outcome by an `ABPlan` declared when the rollout starts: a fixed-horizon
two-proportion z-test read once at the planned sample, or an mSPRT (mixture sequential probability ratio test,
Johari et al. 2017) that may be read at every tick and stops at the first crossing or at the declared maximum.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np
from scipy import stats


class Result(StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"
    INCONCLUSIVE = "inconclusive"


class Action(StrEnum):
    ADVANCE = "advance"  # next canary step
    PROMOTE = "promote"  # challenger becomes champion
    ROLLBACK = "rollback"  # evidence against the challenger: traffic back to the champion
    PAUSE = "pause"  # the evidence cannot decide: a person looks
    WAIT = "wait"  # keep measuring at this step
    ABORT = "abort"  # an A/B test ended with no winner: the champion stays


INSUFFICIENT, UNDECIDED, NO_BASELINE = "insufficient_sample", "undecided", "no_baseline"
_EMPTY = np.empty(0)


# -- evidence -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ArmEvidence:
    """What one arm did in the analysis window, from the prediction log.

    `requests` and `errors` count every request (an errored request has no score); `latencies_ms` and `scores`
    are per answered request; `labels` is aligned with `scores`, NaN where the label has not arrived; `outcomes`
    is the binary business outcome per exposed entity in exposure order (A/B only).
    """

    requests: int
    errors: int = 0
    latencies_ms: np.ndarray = field(default_factory=lambda: _EMPTY)
    scores: np.ndarray = field(default_factory=lambda: _EMPTY)
    labels: np.ndarray | None = None
    outcomes: np.ndarray | None = None

    def __post_init__(self) -> None:
        for name in ("latencies_ms", "scores", "labels", "outcomes"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, np.asarray(value, dtype=np.float64).reshape(-1))
        if not 0 <= self.errors <= self.requests:
            raise ValueError(f"errors ({self.errors}) must be between 0 and requests ({self.requests})")
        if self.labels is not None and len(self.labels) != len(self.scores):
            raise ValueError(f"labels ({len(self.labels)}) must align with scores ({len(self.scores)}): NaN where unknown")
        if self.outcomes is not None and not np.isin(self.outcomes, (0.0, 1.0)).all():
            raise ValueError("outcomes must be binary (0 or 1) per exposed entity")

    def labelled(self) -> tuple[np.ndarray, np.ndarray]:
        """(scores, labels) of the requests whose label has arrived."""
        if self.labels is None:
            return _EMPTY, _EMPTY
        known = ~np.isnan(self.labels)
        return self.scores[known], self.labels[known]


# -- rule results -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RuleResult:
    """One rule's measurement: the verdict and every number behind it."""

    rule: str
    metric: str
    result: Result
    cause: str | None  # insufficient_sample | undecided | no_baseline, for an inconclusive result
    value: float | None  # the challenger's statistic (error rate, p99 ms, KS distance, degradation)
    baseline: float | None  # the champion's, where it has one
    threshold: float
    samples: int
    baseline_samples: int
    min_sample: int
    alpha: float
    test: str
    p_exceeds: float | None = None  # evidence that the threshold is exceeded (small: failure)
    p_within: float | None = None  # evidence that it is not (small: success)
    interval: tuple[float, float] | None = None  # 1 - 2 alpha confidence interval of `value`
    detail: dict[str, float] = field(default_factory=dict)

    @property
    def outcome(self) -> str:
        """success, failure, or the cause of an inconclusive result: what the history counts."""
        return self.cause if self.result is Result.INCONCLUSIVE and self.cause else self.result.value


def _verdict(p_exceeds: float, p_within: float, alpha: float) -> tuple[Result, str | None]:
    if p_exceeds < alpha:
        return Result.FAILURE, None
    if p_within < alpha:
        return Result.SUCCESS, None
    return Result.INCONCLUSIVE, UNDECIDED


# -- rules ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class Rule:
    """A measurement with Argo's limits; subclasses define what is measured and how it is tested."""

    name: str
    min_sample: int
    alpha: float = 0.05
    failure_limit: int = 0  # failed measurements tolerated in the rollout; one more fails it
    consecutive_successes: int = 1  # trailing successes in the analysis run that pass the rule
    inconclusive_limit: int = 0  # undecided measurements tolerated in the run; one more pauses the rollout

    metric = "rule"
    comparative = False  # compares with the champion's requests, so needs the champion to have traffic

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 0.5:
            raise ValueError(f"rule {self.name}: alpha {self.alpha} must be in (0, 0.5)")
        if self.min_sample < 1 or self.failure_limit < 0 or self.inconclusive_limit < 0 or self.consecutive_successes < 1:
            raise ValueError(f"rule {self.name}: min_sample and consecutive_successes must be >= 1, "
                             "failure_limit and inconclusive_limit >= 0")
        floor = self.smallest_passing_sample()
        if self.min_sample < floor:
            raise ValueError(f"rule {self.name}: min_sample {self.min_sample} is below {floor}, the fewest samples on "
                             f"which even a perfect challenger can pass at alpha {self.alpha}; below it every "
                             f"measurement would be undecided and pause the rollout (set min_sample >= {floor})")

    def smallest_passing_sample(self) -> int:
        return 1

    def measure(self, baseline: ArmEvidence, candidate: ArmEvidence) -> RuleResult:
        raise NotImplementedError

    def _result(self, result: Result, cause: str | None, value: float | None, baseline: float | None,
                samples: int, baseline_samples: int, test: str, **numbers: Any) -> RuleResult:
        return RuleResult(self.name, self.metric, result, cause, value, baseline, self.threshold, samples,
                          baseline_samples, self.min_sample, self.alpha, test, **numbers)

    @property
    def threshold(self) -> float:
        raise NotImplementedError


def _binomial_exceedance(k: int, n: int, rate: float, alpha: float) -> tuple[float, float, tuple[float, float]]:
    """Exact binomial tests of k events in n against `rate`: (p_exceeds, p_within, Clopper-Pearson interval)."""
    p_exceeds = float(stats.binom.sf(k - 1, n, rate))  # P(X >= k | rate)
    p_within = float(stats.binom.cdf(k, n, rate))  # P(X <= k | rate)
    low = float(stats.beta.ppf(alpha, k, n - k + 1)) if k > 0 else 0.0
    high = float(stats.beta.ppf(1 - alpha, k + 1, n - k)) if k < n else 1.0
    return p_exceeds, p_within, (low, high)


@dataclass(frozen=True, kw_only=True)
class ErrorRate(Rule):
    """The challenger's error rate stays at most `max_rate` (exact binomial tests)."""

    name: str = "error_rate"
    max_rate: float = 0.01
    min_sample: int = 500
    metric = "error_rate"

    @property
    def threshold(self) -> float:
        return self.max_rate

    def smallest_passing_sample(self) -> int:
        if not 0 < self.max_rate < 1:
            raise ValueError(f"rule {self.name}: max_rate {self.max_rate} must be in (0, 1)")
        return math.ceil(math.log(self.alpha) / math.log1p(-self.max_rate))

    def measure(self, baseline: ArmEvidence, candidate: ArmEvidence) -> RuleResult:
        n, k = candidate.requests, candidate.errors
        rate = k / n if n else None
        base = baseline.errors / baseline.requests if baseline.requests else None
        if n < self.min_sample:
            return self._result(Result.INCONCLUSIVE, INSUFFICIENT, rate, base, n, baseline.requests, "binomial")
        p_exceeds, p_within, interval = _binomial_exceedance(k, n, self.max_rate, self.alpha)
        result, cause = _verdict(p_exceeds, p_within, self.alpha)
        return self._result(result, cause, rate, base, n, baseline.requests, "binomial", p_exceeds=p_exceeds,
                            p_within=p_within, interval=interval, detail={"errors": k})


@dataclass(frozen=True, kw_only=True)
class LatencyQuantile(Rule):
    """The challenger's latency quantile (p99 by default) stays at most `max_ms`.

    Distribution-free: the quantile is at most `max_ms` exactly when at most 1 - quantile of requests take longer,
    so the test is an exact binomial test on the count of requests over `max_ms`.
    """

    name: str = "p99_latency"
    max_ms: float = 250.0
    quantile: float = 0.99
    min_sample: int = 500
    metric = "latency_quantile"

    @property
    def threshold(self) -> float:
        return self.max_ms

    def smallest_passing_sample(self) -> int:
        if not 0 < self.quantile < 1 or self.max_ms <= 0:
            raise ValueError(f"rule {self.name}: quantile must be in (0, 1) and max_ms > 0")
        return math.ceil(math.log(self.alpha) / math.log(self.quantile))

    def measure(self, baseline: ArmEvidence, candidate: ArmEvidence) -> RuleResult:
        lat, base_lat = candidate.latencies_ms, baseline.latencies_ms
        n = len(lat)
        value = float(np.quantile(lat, self.quantile)) if n else None
        base = float(np.quantile(base_lat, self.quantile)) if len(base_lat) else None
        if n < self.min_sample:
            return self._result(Result.INCONCLUSIVE, INSUFFICIENT, value, base, n, len(base_lat), "binomial exceedance")
        over = int(np.count_nonzero(lat > self.max_ms))
        p_exceeds, p_within, interval = _binomial_exceedance(over, n, 1 - self.quantile, self.alpha)
        result, cause = _verdict(p_exceeds, p_within, self.alpha)
        return self._result(result, cause, value, base, n, len(base_lat), "binomial exceedance", p_exceeds=p_exceeds,
                            p_within=p_within, detail={"over_threshold": over, "share_over": over / n,
                                                       "share_over_low": interval[0], "share_over_high": interval[1]})


def _psi(expected: np.ndarray, actual: np.ndarray, bins: int = 10) -> float:
    """Population stability index of `actual` against `expected`, on the deciles of `expected`."""
    edges = np.unique(np.quantile(expected, np.linspace(0, 1, bins + 1)[1:-1]))
    e = np.bincount(np.searchsorted(edges, expected, side="right"), minlength=len(edges) + 1) / len(expected)
    a = np.bincount(np.searchsorted(edges, actual, side="right"), minlength=len(edges) + 1) / len(actual)
    e, a = np.clip(e, 1e-6, None), np.clip(a, 1e-6, None)
    return float(np.sum((a - e) * np.log(a / e)))


@dataclass(frozen=True, kw_only=True)
class ScoreShift(Rule):
    """The challenger's score distribution stays within KS distance `max_ks` of the champion's.

    The observed KS distance is within sup|F_n - F| + sup|G_m - G| of the true one; the DKW inequality bounds
    each, so P(|D_obs - D| >= t) <= 4 exp(-2 t^2 nm / (sqrt n + sqrt m)^2). Both one-sided p-values come from that
    bound (conservative). PSI and the classic KS p-value (of "no shift at all") are reported alongside.
    """

    name: str = "score_shift"
    max_ks: float = 0.1
    min_sample: int = 1000
    metric = "ks_distance"
    comparative = True

    @property
    def threshold(self) -> float:
        return self.max_ks

    def smallest_passing_sample(self) -> int:
        if not 0 < self.max_ks < 1:
            raise ValueError(f"rule {self.name}: max_ks {self.max_ks} must be in (0, 1)")
        # equal arms: n_eff = n / 4, and a distance of 0 must clear the bound
        return math.ceil(4 * math.log(4 / self.alpha) / (2 * self.max_ks**2))

    def measure(self, baseline: ArmEvidence, candidate: ArmEvidence) -> RuleResult:
        b = baseline.scores[np.isfinite(baseline.scores)]
        c = candidate.scores[np.isfinite(candidate.scores)]
        n, m = len(c), len(b)
        if min(n, m) < self.min_sample:
            return self._result(Result.INCONCLUSIVE, INSUFFICIENT, None, None, n, m, "ks (DKW bound)")
        ks = stats.ks_2samp(b, c, method="asymp")
        d = float(ks.statistic)
        n_eff = n * m / (math.sqrt(n) + math.sqrt(m)) ** 2
        bound = lambda gap: min(1.0, 4 * math.exp(-2 * n_eff * gap * gap))
        p_exceeds = bound(d - self.max_ks) if d > self.max_ks else 1.0
        p_within = bound(self.max_ks - d) if d < self.max_ks else 1.0
        margin = math.sqrt(math.log(4 / self.alpha) / (2 * n_eff))
        result, cause = _verdict(p_exceeds, p_within, self.alpha)
        return self._result(result, cause, d, 0.0, n, m, "ks (DKW bound)", p_exceeds=p_exceeds, p_within=p_within,
                            interval=(max(0.0, d - margin), min(1.0, d + margin)),
                            detail={"ks_pvalue_no_shift": float(ks.pvalue), "psi": _psi(b, c)})


def _log_loss_terms(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    p = np.clip(scores, 1e-7, 1 - 1e-7)
    return -(labels * np.log(p) + (1 - labels) * np.log1p(-p))


def _auc_delong(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """AUC and its DeLong variance, from midranks (no pairwise loop)."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    m, n = len(pos), len(neg)
    ranks = stats.rankdata(np.concatenate([pos, neg]))
    v10 = (ranks[:m] - stats.rankdata(pos)) / n  # per positive: share of negatives below it (ties half)
    v01 = 1 - (ranks[m:] - stats.rankdata(neg)) / m  # per negative: share of positives above it
    return float(v10.mean()), float(v10.var(ddof=1) / m + v01.var(ddof=1) / n)


@dataclass(frozen=True, kw_only=True)
class LabelledAccuracy(Rule):
    """On the requests whose labels have arrived, the challenger is no worse than the champion beyond
    `max_degradation` (log-loss increase, or AUC decrease): a non-inferiority test on the difference, with a
    Welch normal approximation (log-loss) or DeLong variances (AUC) for the two arms' independent requests."""

    name: str = "accuracy"
    measure_by: str = "log_loss"  # log_loss | auc
    max_degradation: float = 0.02
    min_sample: int = 200
    metric = "labelled_accuracy"
    comparative = True

    @property
    def threshold(self) -> float:
        return self.max_degradation

    def smallest_passing_sample(self) -> int:
        if self.measure_by not in ("log_loss", "auc"):
            raise ValueError(f"rule {self.name}: measure_by {self.measure_by!r} must be log_loss or auc")
        if self.max_degradation < 0:
            raise ValueError(f"rule {self.name}: max_degradation must be >= 0")
        return 2

    def measure(self, baseline: ArmEvidence, candidate: ArmEvidence) -> RuleResult:
        cs, cy = candidate.labelled()
        bs, by = baseline.labelled()
        n, m = len(cs), len(bs)
        test = f"{self.measure_by} non-inferiority ({'Welch' if self.measure_by == 'log_loss' else 'DeLong'})"
        both_classes = all(0 < y.sum() < len(y) for y in (cy, by)) if min(n, m) else False
        if min(n, m) < self.min_sample or (self.measure_by == "auc" and not both_classes):
            return self._result(Result.INCONCLUSIVE, INSUFFICIENT, None, None, n, m, test)
        if self.measure_by == "log_loss":
            cl, bl = _log_loss_terms(cs, cy), _log_loss_terms(bs, by)
            ours, theirs = float(cl.mean()), float(bl.mean())
            degradation, se = ours - theirs, math.sqrt(cl.var(ddof=1) / n + bl.var(ddof=1) / m)
        else:
            (ours, v_ours), (theirs, v_theirs) = _auc_delong(cs, cy), _auc_delong(bs, by)
            degradation, se = theirs - ours, math.sqrt(v_ours + v_theirs)
        se = max(se, 1e-12)
        z = (degradation - self.max_degradation) / se
        p_exceeds, p_within = float(stats.norm.sf(z)), float(stats.norm.cdf(z))
        half = float(stats.norm.ppf(1 - self.alpha)) * se
        result, cause = _verdict(p_exceeds, p_within, self.alpha)
        return self._result(result, cause, degradation, 0.0, n, m, test, p_exceeds=p_exceeds, p_within=p_within,
                            interval=(degradation - half, degradation + half),
                            detail={f"challenger_{self.measure_by}": ours, f"champion_{self.measure_by}": theirs})


@dataclass(frozen=True)
class AnalysisConfig:
    """The rules of one model's rollouts, and which arms they compare."""

    rules: tuple[Rule, ...]
    baseline_arm: str = "champion"
    candidate_arm: str = "challenger"

    def __post_init__(self) -> None:
        object.__setattr__(self, "rules", tuple(self.rules))
        if not self.rules:
            raise ValueError("an analysis needs at least one rule (error rate, latency, score shift, accuracy)")
        names = [r.name for r in self.rules]
        if len(set(names)) != len(names):
            raise ValueError(f"rule names must be unique, got {names}")


# -- A/B ---------------------------------------------------------------------------------------------------
class Verdict(StrEnum):
    CHALLENGER_WINS = "challenger_wins"
    CHAMPION_WINS = "champion_wins"
    NO_DIFFERENCE = "no_difference"  # the stopping rule was reached without a significant effect
    CONTINUE = "continue"  # the plan says: not yet


@dataclass(frozen=True)
class ABPlan:
    """An A/B test on a binary business outcome, declared before the rollout starts and never changed.

    `test="fixed"`: a two-sided two-proportion z-test read once, on exactly the first planned samples per arm.
    `test="sequential"`: an mSPRT with a normal mixture (sd `mixture_sd`, default the effect), always valid, read
    at any time once each arm has `min_sample_per_arm`; it stops at the first crossing of 1/alpha, or with no
    winner at `max_sample_per_arm` (default twice the fixed-horizon sample: about the same power).
    """

    metric: str
    baseline_rate: float
    minimum_detectable_effect: float  # absolute difference of rates to detect
    alpha: float = 0.05
    power: float = 0.8
    test: str = "sequential"
    split: float = 0.5  # the challenger's share of entities
    min_sample_per_arm: int | None = None
    max_sample_per_arm: int | None = None
    mixture_sd: float | None = None

    def __post_init__(self) -> None:
        problems = []
        if not self.metric:
            problems.append("metric must name the business outcome")
        if not 0 < self.baseline_rate < 1:
            problems.append(f"baseline_rate {self.baseline_rate} must be in (0, 1)")
        if self.minimum_detectable_effect <= 0 or not 0 < self.baseline_rate + self.minimum_detectable_effect < 1:
            problems.append(f"minimum_detectable_effect {self.minimum_detectable_effect} must be > 0 and keep "
                            "baseline_rate + effect in (0, 1)")
        if not 0 < self.alpha < 0.5:
            problems.append(f"alpha {self.alpha} must be in (0, 0.5)")
        if not 0.5 <= self.power < 1:
            problems.append(f"power {self.power} must be in [0.5, 1)")
        if self.test not in ("fixed", "sequential"):
            problems.append(f"test {self.test!r} must be fixed or sequential")
        if not 0.05 <= self.split <= 0.95:
            problems.append(f"split {self.split} must be in [0.05, 0.95]")
        if problems:
            raise ValueError("invalid A/B plan: " + "; ".join(problems))
        planned = max(self.planned_samples())
        if self.test == "fixed":
            if self.min_sample_per_arm not in (None, planned) or self.max_sample_per_arm not in (None, planned):
                raise ValueError(f"invalid A/B plan: a fixed test reads once at its planned sample ({planned} per arm "
                                 "at most); leave min/max_sample_per_arm unset or use test='sequential'")
            object.__setattr__(self, "min_sample_per_arm", planned)
            object.__setattr__(self, "max_sample_per_arm", planned)
        else:
            low = 100 if self.min_sample_per_arm is None else self.min_sample_per_arm
            high = 2 * planned if self.max_sample_per_arm is None else self.max_sample_per_arm
            if not 30 <= low <= high:
                raise ValueError(f"invalid A/B plan: need 30 <= min_sample_per_arm ({low}) <= max_sample_per_arm ({high})")
            object.__setattr__(self, "min_sample_per_arm", low)
            object.__setattr__(self, "max_sample_per_arm", high)
        if self.mixture_sd is None:
            object.__setattr__(self, "mixture_sd", self.minimum_detectable_effect)
        elif self.mixture_sd <= 0:
            raise ValueError("invalid A/B plan: mixture_sd must be > 0")

    def planned_samples(self) -> tuple[int, int]:
        """(champion, challenger) samples of a fixed-horizon test with the plan's alpha, power and effect."""
        p1, s = self.baseline_rate, self.split
        p2 = p1 + self.minimum_detectable_effect
        pooled = (1 - s) * p1 + s * p2
        za, zb = stats.norm.ppf(1 - self.alpha / 2), stats.norm.ppf(self.power)
        total = (za * math.sqrt(pooled * (1 - pooled) * (1 / s + 1 / (1 - s)))
                 + zb * math.sqrt(p1 * (1 - p1) / (1 - s) + p2 * (1 - p2) / s)) ** 2 / self.minimum_detectable_effect**2
        return math.ceil(total * (1 - s)), math.ceil(total * s)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ABPlan:
        return cls(**data)


@dataclass(frozen=True)
class ABResult:
    """The A/B test's state: its verdict and the numbers behind it."""

    verdict: Verdict
    test: str
    samples: dict[str, int]  # per arm, as used by the test
    rates: Mapping[str, float | None]
    difference: float | None  # challenger - champion
    p_value: float | None  # two-sided (fixed) or always-valid (sequential)
    statistic: float | None  # z (fixed) or log likelihood ratio (sequential)
    threshold: float  # alpha, or log(1/alpha)
    stopped_at: dict[str, int] | None = None
    planned: dict[str, int] = field(default_factory=dict)


def decide_ab(plan: ABPlan, baseline: ArmEvidence, candidate: ArmEvidence) -> ABResult:
    """Apply the plan's test to the arms' outcomes (in exposure order); vectorized over every look."""
    if baseline.outcomes is None or candidate.outcomes is None:
        raise ValueError(f"an A/B analysis needs the outcome {plan.metric!r} per exposed entity of both arms")
    assert plan.min_sample_per_arm is not None and plan.max_sample_per_arm is not None
    cap = plan.max_sample_per_arm
    h, c = baseline.outcomes[:cap], candidate.outcomes[:cap]
    rates = {"champion": float(h.mean()) if len(h) else None, "challenger": float(c.mean()) if len(c) else None}
    samples = {"champion": len(h), "challenger": len(c)}
    if plan.test == "fixed":
        nh, nc = plan.planned_samples()
        planned = {"champion": nh, "challenger": nc}
        if len(h) < nh or len(c) < nc:
            return ABResult(Verdict.CONTINUE, "fixed", samples, rates, None, None, None, plan.alpha, planned=planned)
        xh, xc = float(h[:nh].sum()), float(c[:nc].sum())
        ph, pc = xh / nh, xc / nc
        pooled = (xh + xc) / (nh + nc)
        se = math.sqrt(max(pooled * (1 - pooled) * (1 / nh + 1 / nc), 1e-18))
        z = (pc - ph) / se
        p = float(2 * stats.norm.sf(abs(z)))
        verdict = Verdict.NO_DIFFERENCE if p >= plan.alpha else (Verdict.CHALLENGER_WINS if z > 0 else Verdict.CHAMPION_WINS)
        fixed_rates: dict[str, float | None] = {"champion": ph, "challenger": pc}
        return ABResult(verdict, "fixed", planned, fixed_rates, pc - ph, p, z, plan.alpha,
                        stopped_at=planned, planned=planned)
    # Sequential: looks at every total exposure count t, each arm holding its planned share of t.
    s = plan.split
    limit = np.log(1 / plan.alpha)
    planned = {"champion": cap, "challenger": cap}
    total = int(min(len(h) / (1 - s), len(c) / s))
    t = np.arange(1, total + 1)
    nh, nc = np.floor(t * (1 - s)).astype(np.int64), np.floor(t * s).astype(np.int64)
    looks = (nh >= plan.min_sample_per_arm) & (nc >= plan.min_sample_per_arm)
    nh, nc = nh[looks], nc[looks]
    if len(nh) == 0:
        return ABResult(Verdict.CONTINUE, "sequential", samples, rates, None, None, None, float(limit), planned=planned)
    xh = np.concatenate([[0.0], np.cumsum(h)])[nh]
    xc = np.concatenate([[0.0], np.cumsum(c)])[nc]
    # plug-in Bernoulli variances, kept off zero while a rate is still 0 or 1
    ph_s, pc_s = (xh + 0.5) / (nh + 1), (xc + 0.5) / (nc + 1)
    v = ph_s * (1 - ph_s) / nh + pc_s * (1 - pc_s) / nc
    diff = xc / nc - xh / nh
    tau2 = plan.mixture_sd**2  # type: ignore[operator]
    log_lr = 0.5 * np.log(v / (v + tau2)) + tau2 * diff * diff / (2 * v * (v + tau2))
    crossed = np.flatnonzero(log_lr >= limit)
    i = int(crossed[0]) if len(crossed) else len(log_lr) - 1
    p_value = float(min(1.0, np.exp(-np.max(log_lr[: i + 1]))))
    at = {"champion": int(nh[i]), "challenger": int(nc[i])}
    at_rates = {"champion": float(xh[i] / nh[i]), "challenger": float(xc[i] / nc[i])}
    if len(crossed):
        verdict = Verdict.CHALLENGER_WINS if diff[i] > 0 else Verdict.CHAMPION_WINS
    elif len(h) >= cap and len(c) >= cap:
        verdict = Verdict.NO_DIFFERENCE
    else:
        return ABResult(Verdict.CONTINUE, "sequential", samples, at_rates, float(diff[i]), p_value, float(log_lr[i]),
                        float(limit), planned=planned)
    return ABResult(verdict, "sequential", at, at_rates, float(diff[i]), p_value, float(log_lr[i]), float(limit),
                    stopped_at=at, planned=planned)


# -- decisions ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Measurement:
    """One earlier measurement of a rollout, as the decision counts it: each rule's outcome, in its run."""

    epoch: int
    outcomes: dict[str, str]  # rule -> success | failure | insufficient_sample | undecided

    @classmethod
    def from_evidence(cls, evidence: Mapping[str, Any]) -> Measurement:
        return cls(int(evidence["epoch"]), {r["rule"]: r["outcome"] for r in evidence["rules"]})


@dataclass(frozen=True)
class Decision:
    """What the analysis decided, and everything needed to record why."""

    action: Action
    reason: str
    results: tuple[RuleResult, ...]
    epoch: int
    final_stage: bool
    counts: dict[str, dict[str, int]]  # per rule: failures (rollout), undecided and streak (run)
    ab: ABResult | None = None

    def measurement(self) -> Measurement:
        return Measurement(self.epoch, {r.rule: r.outcome for r in self.results})

    def evidence(self) -> dict[str, Any]:
        """A JSON-able record of the decision: action, reason, per-rule numbers, limits and counts."""
        rules = [{**_jsonable(asdict(r)), "outcome": r.outcome, **self.counts[r.rule]} for r in self.results]
        return {"action": self.action.value, "reason": self.reason, "epoch": self.epoch, "final_stage": self.final_stage,
                "rules": rules, "ab": _jsonable(asdict(self.ab)) if self.ab else None}


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, StrEnum):
        return value.value
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _no_baseline(rule: Rule) -> RuleResult:
    return rule._result(Result.INCONCLUSIVE, NO_BASELINE, None, None, 0, 0, "not measured")


def _describe(r: RuleResult) -> str:
    value = "n/a" if r.value is None else f"{r.value:.4g}"
    if r.cause == INSUFFICIENT:
        return f"{r.rule}: {r.samples} challenger / {r.baseline_samples} champion samples, minimum {r.min_sample}"
    if r.cause == NO_BASELINE:
        return f"{r.rule}: the champion has no traffic at this step (its last measured result stands)"
    p = r.p_exceeds if r.result is Result.FAILURE else r.p_within
    return f"{r.rule} {value} vs threshold {r.threshold:g} ({r.result.value}, p={p:.3g})"


def decide(config: AnalysisConfig, evidence: Mapping[str, ArmEvidence], history: Sequence[Measurement] = (), *,
           epoch: int = 0, final_stage: bool = True, plan: ABPlan | None = None) -> Decision:
    """Measure every rule on the arms' evidence and decide, counting this rollout's earlier measurements.

    Precedence: a failed rule (more failures than its limit) rolls back; so does an A/B loss. Then too many
    undecided measurements pause. Then every rule passed (its streak of successes in this run) advances, or
    promotes at the final stage; an A/B rollout promotes only on a win with every rule passed, and ends (abort)
    with no winner. Anything else waits.
    """
    missing = [arm for arm in (config.baseline_arm, config.candidate_arm) if arm not in evidence]
    if missing:
        raise ValueError(f"no evidence for arm(s) {missing}; got {sorted(evidence)}")
    base, cand = evidence[config.baseline_arm], evidence[config.candidate_arm]
    results = tuple(_no_baseline(rule) if rule.comparative and base.requests == 0 else rule.measure(base, cand)
                    for rule in config.rules)
    counts: dict[str, dict[str, int]] = {}
    failed, stuck, passed = [], [], []
    for rule, result in zip(config.rules, results, strict=True):
        everything = [m.outcomes.get(rule.name) for m in history] + [result.outcome]
        run = [m.outcomes.get(rule.name) for m in history if m.epoch == epoch] + [result.outcome]
        streak = next((i for i, o in enumerate(reversed(run)) if o != Result.SUCCESS), len(run))
        # A canary step at 100% leaves no champion to compare with: the rule's last measured result stands.
        measured = [o for o in everything if o != NO_BASELINE]
        carried = result.cause == NO_BASELINE and bool(measured) and measured[-1] == Result.SUCCESS
        counts[rule.name] = {"failures": everything.count(Result.FAILURE.value), "undecided": run.count(UNDECIDED),
                             "streak": streak}
        if counts[rule.name]["failures"] > rule.failure_limit:
            failed.append(result)
        elif counts[rule.name]["undecided"] > rule.inconclusive_limit:
            stuck.append(result)
        elif streak >= rule.consecutive_successes or carried:
            passed.append(result)
    ab = decide_ab(plan, base, cand) if plan is not None else None
    all_passed = len(passed) == len(results)
    pending = [r for r in results if all(r is not p for p in passed)]

    def done(action: Action, reason: str) -> Decision:
        return Decision(action, reason, results, epoch, final_stage, counts, ab)

    if failed:
        return done(Action.ROLLBACK, "failed: " + "; ".join(
            f"{_describe(r)}, {counts[r.rule]['failures']} failure(s) > limit "
            f"{next(x.failure_limit for x in config.rules if x.name == r.rule)}" for r in failed))
    if stuck and (ab is None or ab.verdict is not Verdict.CHAMPION_WINS):
        return done(Action.PAUSE, "inconclusive: " + "; ".join(_describe(r) for r in stuck))
    if ab is not None and plan is not None:
        numbers = f"difference {ab.difference or 0:+.4g}, p={'n/a' if ab.p_value is None else f'{ab.p_value:.3g}'}"
        if ab.verdict is Verdict.CHAMPION_WINS:
            return done(Action.ROLLBACK, f"A/B: the challenger lowers {plan.metric} ({numbers} < alpha {plan.alpha})")
        if ab.verdict is Verdict.NO_DIFFERENCE:
            return done(Action.ABORT, f"A/B: no significant effect on {plan.metric} at the planned stop ({numbers}); "
                                      "the champion stays")
        if ab.verdict is Verdict.CHALLENGER_WINS and all_passed:
            return done(Action.PROMOTE, f"A/B: the challenger raises {plan.metric} ({numbers}) and every rule passed")
        if ab.verdict is Verdict.CHALLENGER_WINS:
            return done(Action.WAIT, "A/B: the challenger wins; waiting for: " + "; ".join(_describe(r) for r in pending))
        return done(Action.WAIT, f"A/B: continue ({ab.samples['champion']}/{ab.samples['challenger']} samples, {numbers})")
    if all_passed:
        action = Action.PROMOTE if final_stage else Action.ADVANCE
        return done(action, "every rule passed: " + "; ".join(_describe(r) for r in results))
    return done(Action.WAIT, "waiting for: " + "; ".join(
        f"{_describe(r)} (streak {counts[r.rule]['streak']})" for r in pending))
