"""The service's Prometheus metrics: requests, latency, errors by cause, predictions per version and arm,
the score distribution, missing features. With several workers, each process writes to
PROMETHEUS_MULTIPROC_DIR and `/metrics` aggregates them (prometheus_client's multiprocess mode).

State gauges (drift per feature, rollout stage and traffic share, freshness per asset group) come from the central
state store at scrape time (`install_state_collector`), so every worker of every replica reports the same values.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client import values as _values
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from loopwise import rollout
from loopwise.events.store import EventStore, Record

if TYPE_CHECKING:
    from loopwise.usecase import UseCase

log = logging.getLogger(__name__)

REQUESTS = Counter("loopwise_requests_total", "HTTP requests by route and status", ["route", "status"])
LATENCY = Histogram("loopwise_request_seconds", "request latency by route", ["route"],
                    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
ERRORS = Counter("loopwise_errors_total", "errors by cause", ["cause"])
PREDICTIONS = Counter("loopwise_predictions_total", "answered instances by model, version and arm",
                      ["model", "version", "arm"])
SCORES = Histogram("loopwise_score", "the distribution of scores by model", ["model"],
                   buckets=tuple(i / 10 for i in range(1, 11)))
MISSING_FEATURES = Counter("loopwise_missing_features_total", "feature values missing at prediction time", ["model"])

# The events the state gauges fold. The drift check writes DRIFT_CHECKED on `drift:<model>` with the payload
# {"model", "partition": "YYYY-MM-DD", "share_drifted", "drifted", "columns": [{"name", "kind", "test",
# "statistic", "threshold", "drifted", "p_value" (optional)}]} (loopwise.monitoring.drift's DriftReport.to_dict()
# holds all but model and partition); the audit trail writes MATERIALIZED on `asset:<asset key>`.
DRIFT_CHECKED = "drift.checked"
MATERIALIZED = "asset.materialized"


def first_component(asset_key: str) -> str:
    """The default asset group: the first part of the key (`<model>/trained_model` -> `<model>`)."""
    return asset_key.split("/", 1)[0]


# The engine's own feature-store stages (the Feast apply and the online-store push), grouped with the feature tables.
_FEATURE_STORE_ASSETS = ("feast_registry", "online_features")


def use_case_groups(use_case: UseCase) -> Callable[[str], str]:
    """Asset groups as the lineage graph names them for a use case: `raw_`, `bronze_`, `silver_<source>` in their
    stage, the feature tables and the feature store in `features`, a model's chain in its own group (the key's first
    part); any other key is its own group."""
    groups = {f"{stage}_{source.name}": stage for source in use_case.sources for stage in ("raw", "bronze", "silver")}
    groups.update({name: "features" for name in (*(t.name for t in use_case.feature_tables), *_FEATURE_STORE_ASSETS)})
    return lambda key: groups.get(key) or first_component(key)


def _seconds(at: str) -> float:
    return datetime.fromisoformat(at).timestamp()


def _number(value: Any) -> float:
    """A payload number as a float; NaN for anything missing or not numeric (the series stays, its value says so)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


@dataclass(frozen=True)
class _Drift:
    checked_at: float
    payload: dict[str, Any]


class StateCollector(Collector):
    """Gauges computed at scrape time from the central state store: drift per feature, rollout stage and traffic
    share per version, last materialization per asset and asset group.

    Drift checks and materializations are folded into a small view: a process's first scrape reads their history
    once, every later one only what was appended since the one before (seq order is commit order, so nothing
    appears later below a seq already read). Rollouts are read through `loopwise.rollout.current`, which keeps its
    own folded view. A store that does not answer leaves the last values exported and `loopwise_state_store_up` 0.
    """

    def __init__(self, events: EventStore, models: Iterable[str], group_of: Callable[[str], str] | None = None) -> None:
        self.events, self.models = events, list(models)
        self.group_of = group_of or first_component
        self._lock = threading.Lock()
        self._after = {DRIFT_CHECKED: 0, MATERIALIZED: 0}
        self._drift: dict[str, _Drift] = {}
        self._assets: dict[str, tuple[float, str]] = {}  # asset key -> (last materialized, group)
        self._rollouts: dict[str, rollout.Rollout | None] = {}

    def describe(self) -> list[Metric]:
        return []  # nothing at registration: the store is read when scraped, not when installed

    # -- folding -----------------------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Fold the events appended since the last call; read each model's rollout."""
        # Everything up to `seen` is committed (seq order is commit order), so the reads below find all of it and
        # the next scrape starts there, whichever kinds it held.
        seen = self.events.last_seq()
        for kind, fold in ((DRIFT_CHECKED, self._fold_drift), (MATERIALIZED, self._fold_materialized)):
            records = self.events.read(after=self._after[kind], kind=kind)
            for record in records:
                fold(record)
            self._after[kind] = max(seen, records[-1].seq if records else 0)
        self._rollouts = {model: rollout.current(self.events, model) for model in self.models}

    def _fold_drift(self, record: Record) -> None:
        model = str(record.payload.get("model") or record.subject.removeprefix("drift:"))
        if model in self.models:
            self._drift[model] = _Drift(_seconds(record.at), record.payload)

    def _fold_materialized(self, record: Record) -> None:
        asset = record.subject.removeprefix("asset:")
        group = str(record.payload.get("group") or self.group_of(asset))
        at = _seconds(record.at)
        if at >= self._assets.get(asset, (0.0, ""))[0]:
            self._assets[asset] = (at, group)

    # -- exporting ---------------------------------------------------------------------------------------------
    def collect(self) -> Iterator[Metric]:
        with self._lock:  # two scrapes at once fold once each, in turn
            started = time.perf_counter()
            try:
                self.refresh()
                up = 1.0
            except Exception as exc:  # noqa: BLE001 - an unreachable store must not fail the whole scrape
                log.warning("state gauges: the event store did not answer, exporting the last values read: %s", exc)
                up = 0.0
            families = [*self._drift_families(), *self._rollout_families(), *self._freshness_families()]
            store_up = GaugeMetricFamily("loopwise_state_store_up",
                                         "1 if the last scrape read the central state store, 0 if it failed")
            store_up.add_metric([], up)
            took = GaugeMetricFamily("loopwise_state_collect_seconds", "time the last scrape spent reading state")
            took.add_metric([], time.perf_counter() - started)
        yield from (*families, store_up, took)

    def _drift_families(self) -> list[Metric]:
        statistic = GaugeMetricFamily("loopwise_feature_drift_statistic",
                                      "the drift test's statistic per feature, as of the model's last drift check",
                                      labels=["model", "feature", "test"])
        threshold = GaugeMetricFamily("loopwise_feature_drift_threshold",
                                      "the test's threshold: compared with the p-value for the p-value tests, with the "
                                      "statistic otherwise", labels=["model", "feature", "test"])
        p_value = GaugeMetricFamily("loopwise_feature_drift_p_value", "the test's p-value (p-value tests only)",
                                    labels=["model", "feature", "test"])
        drifted = GaugeMetricFamily("loopwise_feature_drifted", "1 if the feature drifted in the last check",
                                    labels=["model", "feature"])
        share = GaugeMetricFamily("loopwise_dataset_drift_share", "share of the model's features that drifted",
                                  labels=["model"])
        dataset = GaugeMetricFamily("loopwise_dataset_drifted", "1 if the last drift check found dataset drift",
                                    labels=["model"])
        checked = GaugeMetricFamily("loopwise_drift_checked_timestamp_seconds", "when the last drift check was recorded",
                                    labels=["model"])
        partition = GaugeMetricFamily("loopwise_drift_partition_timestamp_seconds",
                                      "the day (00:00 UTC) the last drift check compared", labels=["model"])
        for model, drift in sorted(self._drift.items()):
            p = drift.payload
            tests: dict[tuple[str, str], dict[str, Any]] = {}
            features: dict[str, bool] = {}  # a feature judged by several tests drifted if any says so
            for column in p.get("columns", []):
                name = str(column.get("name"))
                tests[(name, str(column.get("test", "")))] = column
                features[name] = features.get(name, False) or bool(column.get("drifted"))
            for (name, test), column in tests.items():
                statistic.add_metric([model, name, test], _number(column.get("statistic")))
                threshold.add_metric([model, name, test], _number(column.get("threshold")))
                if column.get("p_value") is not None:
                    p_value.add_metric([model, name, test], _number(column.get("p_value")))
            for name, drifted_now in features.items():
                drifted.add_metric([model, name], float(drifted_now))
            share.add_metric([model], _number(p.get("share_drifted")))
            dataset.add_metric([model], float(bool(p.get("drifted"))))
            checked.add_metric([model], drift.checked_at)
            try:
                day = date.fromisoformat(str(p.get("partition")))
                partition.add_metric([model], datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp())
            except ValueError:
                pass
        return [statistic, threshold, p_value, drifted, share, dataset, checked, partition]

    def _rollout_families(self) -> list[Metric]:
        share = GaugeMetricFamily("loopwise_traffic_share",
                                  "share of requests the state store assigns to each arm (its version in a label)",
                                  labels=["model", "arm", "version"])
        info = GaugeMetricFamily("loopwise_rollout_info", "the model's latest rollout (1; its state in the labels)",
                                 labels=["model", "rollout", "strategy", "status", "champion_version",
                                         "challenger_version"])
        stage = GaugeMetricFamily("loopwise_rollout_stage", "the rollout's step index (canary and blue/green steps; 0 otherwise)",
                                  labels=["model", "strategy", "status"])
        percent = GaugeMetricFamily("loopwise_rollout_challenger_percent", "the challenger's share of requests, in %",
                                    labels=["model", "strategy", "status"])
        active = GaugeMetricFamily("loopwise_rollout_active", "1 while a rollout is progressing or paused",
                                   labels=["model"])
        paused = GaugeMetricFamily("loopwise_rollout_paused", "1 while the model's rollout is paused", labels=["model"])
        for model in self.models:
            r = self._rollouts.get(model)
            if r is None:  # never rolled out: it answers with its MLflow alias, which the state store does not hold
                continue
            for arm in r.arms:
                share.add_metric([model, arm.name, arm.version], arm.weight)
            strategy, status = r.strategy.value, r.status.value
            info.add_metric([model, r.id, strategy, status, r.champion_version, r.challenger_version], 1.0)
            stage.add_metric([model, strategy, status], float(r.stage))
            percent.add_metric([model, strategy, status], 100 * r.weights().get(rollout.CHALLENGER, 0.0))
            active.add_metric([model], float(not r.finished))
            paused.add_metric([model], float(r.status is rollout.Status.PAUSED))
        return [share, info, stage, percent, active, paused]

    def _freshness_families(self) -> list[Metric]:
        asset = GaugeMetricFamily("loopwise_asset_last_materialized_timestamp_seconds",
                                  "when the asset was last materialized (the audit trail's record)",
                                  labels=["asset", "group"])
        group = GaugeMetricFamily("loopwise_asset_group_last_materialized_timestamp_seconds",
                                  "the latest materialization of any asset of the group", labels=["group"])
        latest: dict[str, float] = {}
        for key, (at, name) in sorted(self._assets.items()):
            asset.add_metric([key, name], at)
            latest[name] = max(at, latest.get(name, 0.0))
        for name, at in sorted(latest.items()):
            group.add_metric([name], at)
        return [asset, group]


_state: StateCollector | None = None
# Where this process's metric values live was fixed when prometheus_client was imported: in files under
# PROMETHEUS_MULTIPROC_DIR if it was set then, else in memory. Follow that, not the variable now: importing Feast
# sets it in a single-process service (feast.metrics), and reading files that nothing writes would drop every counter.
_MULTIPROCESS = _values.ValueClass is not _values.MutexValue


def install_state_collector(events: EventStore, models: Iterable[str],
                            group_of: Callable[[str], str] | None = None) -> StateCollector:
    """Export the state gauges of `models` from `events` on this process's `/metrics` (once per process; a second
    call replaces the first). `group_of(asset_key)` names an asset's group (default: the key's first part);
    a materialization event whose payload carries `group` wins over it."""
    global _state
    collector = StateCollector(events, models, group_of)
    if not _MULTIPROCESS:
        if _state is not None:
            REGISTRY.unregister(_state)
        REGISTRY.register(collector)
    _state = collector  # multiprocess mode: render() adds it to the registry it builds
    return collector


def render() -> tuple[bytes, str]:
    """The exposition text: this process's metrics, or every worker's in multiprocess mode, plus the state gauges."""
    if _MULTIPROCESS:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        if _state is not None:
            registry.register(_state)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
