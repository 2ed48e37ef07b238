"""A served model's monitoring: its reference profiled once from the champion's training set, a day's drift of
what it was served with against that reference, and its accuracy per day and version as outcomes arrive.

Every check is recorded in the central state store (`drift.checked`, `performance.checked`, subject
`monitoring:<model>`), where the retraining decision and the service's metrics read it.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from loopwise.events.store import Event, EventStore
from loopwise.lake.tables import Lake
from loopwise.monitoring.drift import DriftConfig, DriftReport, ReferenceProfile, check_drift, profile_reference
from loopwise.rollout.evidence import input_column, read_outcomes, read_predictions
from loopwise.training.data import InputLayout
from loopwise.usecase import ModelSpec

DRIFT_CHECKED = "drift.checked"
PERFORMANCE_CHECKED = "performance.checked"
SCORE = "score"


def subject(model: str) -> str:
    return f"monitoring:{model}"


def drift_subject(model: str) -> str:
    return f"drift:{model}"


def monitored_columns(layout: InputLayout) -> dict[str, str]:
    """The columns a model's drift is measured on: its features, its request-time inputs, and its score."""
    kinds = {name: "numeric" for name in (*layout.features, *layout.numeric)}
    kinds |= {name: "categorical" for name in layout.categorical}
    if layout.text:
        kinds[layout.text] = "text"
    return kinds | {SCORE: "numeric"}


def reference_frame(training_set: pd.DataFrame, layout: InputLayout, scores: pd.Series) -> pd.DataFrame:
    """The champion's training rows in the served frame's shape: features, inputs and the champion's score."""
    columns = [c for c in monitored_columns(layout) if c != SCORE]
    frame = training_set.reindex(columns=columns).copy()
    frame[SCORE] = np.asarray(scores, dtype=float)
    return frame


def served_frame(predictions: pd.DataFrame, layout: InputLayout) -> pd.DataFrame:
    """What the model was served with, from the prediction log's answered rows: features, inputs, score."""
    answered = predictions[(predictions["served"].fillna(True)) & (predictions["status"].fillna("ok") == "ok")]
    features = pd.DataFrame([json.loads(t) for t in answered["features"]], index=answered.index)
    inputs = pd.DataFrame([json.loads(t) for t in answered["inputs"]], index=answered.index)
    frame = pd.concat([features, inputs.drop(columns=[c for c in inputs if c in features], errors="ignore")], axis=1)
    kinds = monitored_columns(layout)
    frame = frame.reindex(columns=[c for c in kinds if c != SCORE])
    for name, kind in kinds.items():
        if kind == "numeric" and name != SCORE:
            frame[name] = pd.to_numeric(frame[name], errors="coerce").astype("float64")
        elif kind in ("categorical", "text"):
            frame[name] = frame[name].astype("string")
    frame[SCORE] = answered["score"].astype(float)
    return frame.reset_index(drop=True)


@dataclass(frozen=True)
class Reference:
    """A profiled reference and what it is of."""

    model: str
    version: str  # the champion's
    training_set_version: int  # -1 for a served baseline
    rows: int
    profile: ReferenceProfile
    source: str = "training"  # training: the champion's training set; served: its first answered predictions
    until: str | None = None  # a served baseline's last prediction time: later ones are checked against it

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "version": self.version, "training_set_version": self.training_set_version,
                "rows": self.rows, "profile": self.profile.to_dict(), "source": self.source, "until": self.until}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Reference:
        return cls(d["model"], str(d["version"]), int(d["training_set_version"]), int(d["rows"]),
                   ReferenceProfile.from_dict(d["profile"]), d.get("source", "training"), d.get("until"))


def reference_path(root: Path, model: str, version: str) -> Path:
    return root / model / f"reference-v{version}.json"


def served_baseline(lake: Lake, spec: ModelSpec, version: str, rows: int) -> pd.DataFrame | None:
    """The first `rows` predictions `version` answered (served, ok), or None while it has answered fewer."""
    from datetime import UTC

    predictions = read_predictions(lake, spec.name, datetime(1970, 1, 1, tzinfo=UTC))
    answered = predictions[(predictions["version"] == version) & predictions["served"].fillna(True)
                           & (predictions["status"].fillna("ok") == "ok")]
    return answered.head(rows) if len(answered) >= rows else None


def build_reference(model: str, version: str, training_set_version: int, frame: pd.DataFrame, layout: InputLayout,
                    config: DriftConfig | None = None, embed: Any = None, *, source: str = "training",
                    until: str | None = None) -> Reference:
    """Profile a reference frame once (histograms and sketches, kept small)."""
    kinds = monitored_columns(layout)
    text = [c for c, k in kinds.items() if k == "text"]
    if text and embed is None:
        from loopwise.monitoring.text import minilm_embed

        embed = minilm_embed()
    profile = profile_reference(frame, {c: k for c, k in kinds.items() if k != "text"}, text_columns=text, embed=embed,
                                config=config)
    return Reference(model, version, training_set_version, len(frame), profile, source, until)


def save_reference(root: Path, reference: Reference) -> Path:
    path = reference_path(root, reference.model, reference.version)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(reference.to_dict()))
    tmp.replace(path)  # readers see the old file or the whole new one
    return path


def load_reference(root: Path, model: str, version: str) -> Reference | None:
    path = reference_path(root, model, version)
    return Reference.from_dict(json.loads(path.read_text())) if path.exists() else None


def day_window(day: date) -> tuple[datetime, datetime]:
    from datetime import UTC

    start = datetime.combine(day, time(0), tzinfo=UTC)
    return start, start + timedelta(days=1)


def check_day(lake: Lake, spec: ModelSpec, layout: InputLayout, reference: Reference, day: date,
              config: DriftConfig | None = None, embed: Any = None) -> tuple[DriftReport, int]:
    """The day's drift of what the model was served with against its reference; (report, rows checked)."""
    since, until = day_window(day)
    if reference.until is not None:  # a served baseline: check what came after it
        since = max(since, datetime.fromisoformat(reference.until) + timedelta(microseconds=1))
    current = served_frame(read_predictions(lake, spec.name, since, until), layout)
    if not len(current):
        raise ValueError(f"{spec.name} answered no prediction on {day} after its reference: nothing to check yet")
    if layout.text and embed is None:
        from loopwise.monitoring.text import minilm_embed

        embed = minilm_embed()
    return check_drift(reference.profile, current, config, embed=embed), len(current)


def record_drift(store: EventStore, model: str, day: date, reference: Reference, report: DriftReport, rows: int,
                 run_id: str | None = None) -> None:
    """The `drift.checked` event: the per-feature table the service's metrics and the retrain decision read."""
    columns = [{"name": c.name, "kind": c.kind, "test": c.test, "statistic": _finite(c.statistic),
                "threshold": _finite(c.threshold), "drifted": bool(report.counted(c))} for c in report.columns]
    store.append(Event(DRIFT_CHECKED, drift_subject(model), {
        "model": model, "partition": day.isoformat(), "share_drifted": float(report.share_drifted),
        "drifted": bool(report.drifted), "columns": columns, "rows": rows, "reference_version": reference.version,
        "run_id": run_id}, "monitoring", f"{'drift' if report.drifted else 'no drift'} on {day}: "
                                          f"{report.number_drifted}/{len(report.columns)} columns"))


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


@dataclass(frozen=True)
class VersionDay:
    """One version's accuracy on one day's answered predictions whose outcomes have arrived."""

    version: str
    answered: int
    labelled: int
    auc: float | None
    log_loss: float | None
    expected_auc: float | None = None  # the version's own holdout evaluation
    degraded: bool = False


@dataclass(frozen=True)
class DayPerformance:
    model: str
    day: str
    versions: list[VersionDay] = field(default_factory=list)

    @property
    def degraded(self) -> bool:
        return any(v.degraded for v in self.versions)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "partition": self.day, "degraded": self.degraded,
                "versions": [asdict(v) for v in self.versions]}


def day_performance(lake: Lake, spec: ModelSpec, day: date, expected_auc: dict[str, float], *, min_labelled: int = 50,
                    tolerance: float = 0.05, alpha: float = 0.05) -> DayPerformance:
    """AUC and log-loss per version that answered on `day`, on the outcomes that arrived. A version is degraded when
    its AUC is below its own evaluation minus `tolerance` with significance `alpha` (one-sided, DeLong's variance),
    on at least `min_labelled` labels of both classes: a few hundred labels alone vary by several points."""
    from loopwise.rollout.analysis import _log_loss_terms

    since, until = day_window(day)
    rows = read_predictions(lake, spec.name, since, until)
    rows = rows[(rows["served"].fillna(True)) & (rows["status"].fillna("ok") == "ok")]
    outcomes = read_outcomes(lake, spec)
    out = []
    for version, group in rows.groupby("version", sort=True):
        labels = input_column(group, spec.split_key).map(outcomes).to_numpy(dtype=float) if len(outcomes) \
            else np.full(len(group), np.nan)
        known = ~np.isnan(labels)
        scores, y = group["score"].to_numpy(dtype=float)[known], labels[known]
        loss = float(_log_loss_terms(scores, y).mean()) if len(y) else None
        expected = expected_auc.get(str(version))
        auc, degraded = auc_degradation(scores, y, expected, tolerance=tolerance, min_labelled=min_labelled, alpha=alpha)
        out.append(VersionDay(str(version), len(group), int(known.sum()), auc, loss, expected, degraded))
    return DayPerformance(spec.name, day.isoformat(), out)


def auc_degradation(scores: np.ndarray, labels: np.ndarray, expected: float | None, *, tolerance: float,
                    min_labelled: int, alpha: float) -> tuple[float | None, bool]:
    """(AUC, degraded): degraded when the AUC is significantly (one-sided, DeLong) below `expected - tolerance`."""
    from loopwise.rollout.analysis import _auc_delong

    if len(labels) < 3 or not 1 < labels.sum() < len(labels) - 1:
        return None, False
    auc, variance = _auc_delong(scores, labels)
    if expected is None or len(labels) < min_labelled:
        return float(auc), False
    z = (expected - tolerance - auc) / max(math.sqrt(variance), 1e-9)
    return float(auc), bool(stats.norm.sf(z) < alpha)  # P(an AUC this low | the floor holds) < alpha


def record_performance(store: EventStore, performance: DayPerformance, run_id: str | None = None) -> None:
    store.append(Event(PERFORMANCE_CHECKED, subject(performance.model), {**performance.to_dict(), "run_id": run_id},
                       "monitoring", f"{'degraded' if performance.degraded else 'as evaluated'} on {performance.day}"))
