"""Holdout evaluation per task: for a binary task AUC, F1, calibration (Brier, a reliability plot) and
metrics per declared segment. Another task adds its own function to `EVALUATORS`."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd


@dataclass
class Evaluation:
    metrics: dict[str, float]
    segments: dict[str, dict[str, float]] = field(default_factory=dict)
    reliability_png: bytes = b""

    def reliability_markdown(self) -> str:
        return f"![reliability](data:image/png;base64,{base64.b64encode(self.reliability_png).decode()})"


def _metrics(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import brier_score_loss, f1_score, roc_auc_score

    if len(labels) == 0:
        return {"rows": 0.0}  # an empty segment (e.g. a segment with no rows in a short history)
    out = {"rows": float(len(labels)), "positive_rate": float(labels.mean()),
           "brier": float(brier_score_loss(labels, probabilities))}
    out["auc"] = float(roc_auc_score(labels, probabilities)) if len(set(labels.tolist())) == 2 else float("nan")
    # Flag as many rows as are actually positive: F1 at the base-rate threshold, comparable across versions.
    threshold = float(np.quantile(probabilities, 1 - labels.mean())) if labels.mean() > 0 else 0.5
    out["f1"] = float(f1_score(labels, probabilities >= threshold, zero_division=0))
    return {k: round(v, 5) for k, v in out.items()}


def reliability_plot(labels: np.ndarray, probabilities: np.ndarray, bins: int = 10) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(probabilities, edges) - 1, 0, bins - 1)
    centers, observed = [], []
    for b in range(bins):
        mask = which == b
        if mask.any():
            centers.append(probabilities[mask].mean())
            observed.append(labels[mask].mean())
    fig, ax = plt.subplots(figsize=(4, 4), dpi=80)
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfectly calibrated")
    ax.plot(centers, observed, "o-", label="model")
    ax.set_xlabel("predicted probability")
    ax.set_ylabel("observed positive rate")
    ax.legend(loc="upper left")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def evaluate_binary(frame: pd.DataFrame, probabilities: np.ndarray, label: str, segments: Mapping[str, str],
                    segment_by: tuple[str, ...] = ()) -> Evaluation:
    """Overall metrics, metrics per value of each `segment_by` column and per named query, a reliability plot."""
    labels = frame[label].astype(int).to_numpy()
    out: dict[str, dict[str, float]] = {}
    for column in segment_by:
        for value in sorted(frame[column].dropna().unique()):
            mask = (frame[column] == value).to_numpy()
            out[f"{column}={value}"] = _metrics(labels[mask], probabilities[mask])
    for name, query in segments.items():
        mask = frame.eval(query).fillna(False).to_numpy(dtype=bool)
        out[name] = _metrics(labels[mask], probabilities[mask])
    return Evaluation(_metrics(labels, probabilities), out, reliability_plot(labels, probabilities))


EVALUATORS: dict[str, Callable[..., Evaluation]] = {"binary": evaluate_binary}


def evaluate(task: str, frame: pd.DataFrame, probabilities: np.ndarray, label: str, segments: Mapping[str, str],
             segment_by: tuple[str, ...] = ()) -> Evaluation:
    """Evaluate holdout scores with the task's evaluator."""
    if task not in EVALUATORS:
        raise ValueError(f"no evaluation for task {task!r}; known tasks: {sorted(EVALUATORS)}")
    return EVALUATORS[task](frame, probabilities, label, segments, segment_by)
