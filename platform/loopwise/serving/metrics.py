"""The service's Prometheus metrics: requests, latency, errors by cause, predictions per version and arm,
the score distribution, missing features. With several workers, each process writes to
PROMETHEUS_MULTIPROC_DIR and `/metrics` aggregates them (prometheus_client's multiprocess mode)."""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

REQUESTS = Counter("loopwise_requests_total", "HTTP requests by route and status", ["route", "status"])
LATENCY = Histogram("loopwise_request_seconds", "request latency by route", ["route"],
                    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
ERRORS = Counter("loopwise_errors_total", "errors by cause", ["cause"])
PREDICTIONS = Counter("loopwise_predictions_total", "answered instances by model, version and arm",
                      ["model", "version", "arm"])
SCORES = Histogram("loopwise_score", "the distribution of scores by model", ["model"],
                   buckets=tuple(i / 10 for i in range(1, 11)))
MISSING_FEATURES = Counter("loopwise_missing_features_total", "feature values missing at prediction time", ["model"])


def render() -> tuple[bytes, str]:
    """The exposition text: this process's metrics, or every worker's in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
