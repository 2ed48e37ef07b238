"""No false alarm: undrifted days of the reference feed, on several seeds, trigger no retraining (issue #15).

Stands in for the closed loop's daemon path (tests/test_loop.py: `loopwise loop`, seed 7 only, minutes a run), which
cannot be repeated per seed. The world is the loop's, on the dev profile: three normal days (`demo.dates`,
`demo.rows_per_day`), then a day's requests shuffled as `jobs.loop.instances` shuffles them; the baseline is the
champion's first answers and the check is on other requests: later ones of the same day, or the next day's (where
the loop lands its drifted day). A control drifts the checked requests as the loop does (order amounts x1.8).

Real: the use case's feed, its bronze and silver transforms and feature tables on the session's Sail session;
the `built` session's registered models, loaded and scored as the service does (`load_version`,
`score_instances`, on the profile's `serving.runtime`), their answers written through the write-ahead prediction log into Delta; then the
monitoring assets' calls on the dev profile's settings: the served baseline (`served_baseline`,
`build_reference(source="served")`), the prediction monitor's first check after it (`check_day`), the verdict
recorded (`record_drift`) and the retraining sensor's decision (`decide_retrain`). Stands in: landing, validation
and the raw and bronze Delta tables (the feed's frames go through the bronze transform in memory), the online
store (a request gets its customer's feature rows as of the day: what that day's push leaves there), the HTTP
service, and the Dagster runs and sensor ticks around those calls.
"""

from __future__ import annotations

import functools
import inspect
import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from loopwise.config import load_settings
from loopwise.events import open_store
from loopwise.features.retrieval import EntityFeatures, FeatureValue, Status
from loopwise.lake.tables import DateRange, Lake
from loopwise.monitoring.drift import ColumnDrift, DriftConfig, DriftReport
from loopwise.monitoring.model import build_reference, check_day, record_drift, served_baseline, served_frame
from loopwise.monitoring.retrain import RetrainDecision, RetrainPolicy, decide_retrain
from loopwise.pipelines.transforms import bronze
from loopwise.serving.models import LoadedVersion, load_version, resolve_version
from loopwise.serving.predlog import Prediction, PredictionLog
from loopwise.training import runtime
from loopwise.usecase import FeatureTable, ModelSpec, Reader
from pyspark.sql import DataFrame, SparkSession
from supportdesk import USE_CASE
from supportdesk import feed as feed_module
from supportdesk.features import LOOKBACK_DAYS
from supportdesk.feed import DriftSpec, Population, TicketDay, generate_day, orders_for

from tests.conftest import Built

DEV = load_settings("dev", environ={})  # the profile `loopwise loop` runs, without this process's overrides
MONITORING = DEV.monitoring
DAYS = DEV.demo.dates[:3]  # `loopwise loop` lands three normal days (jobs.loop.run_loop), then replays the last's
LAST, NEXT = DAYS[-1], DAYS[-1] + timedelta(days=1)  # NEXT: where the loop lands its drifted day
SEEDS = (1, 2, 3)  # the feed's seeds: 7 is the loop's own (tests/test_loop.py), 11 the test profile's
TEXT_SEED = SEEDS[0]  # the text model scores and embeds ~2,000 texts a seed (~60 CPU-seconds): one seed
DRIFT = "amounts=1.8"  # what `loopwise loop` lands as its drifted day
ENTITY_KEY = "customer_id"  # feature_repo/entities.py: the one entity both feature views are keyed by
CUSTOMERS = inspect.signature(generate_day).parameters["customers"].default
TICKETS_FOR = feed_module.tickets_for


@functools.cache
def population_of(seed: int) -> Population:
    return Population.create(seed, CUSTOMERS)


def feed_day(day: date, seed: int, drift: str | None, sources: frozenset[str]) -> dict[str, pd.DataFrame]:
    """The feed's clean frames of one day for `sources` (`generate_day`)."""
    if sources == {"orders"}:
        # generate_day's own orders call, alone: drawing the day's tickets and their texts is ~98% of its cost.
        population = population_of(seed)
        return {"orders": orders_for(day, population, DEV.demo.rows_per_day, seed, DriftSpec.parse(drift))}
    # A day's outcomes draw the tickets of that day and the three before it again: each day's are drawn once.
    with mock.patch.object(feed_module, "tickets_for", tickets_once):
        return generate_day(day, DEV.demo.rows_per_day, seed, DriftSpec.parse(drift)).frames


@functools.cache
def _tickets(day: date, per_day: int, seed: int, drift: DriftSpec) -> TicketDay:
    return TICKETS_FOR(day, population_of(seed), per_day, seed, drift)


def tickets_once(day: date, population: Population, per_day: int, seed: int, drift: DriftSpec) -> TicketDay:
    """`supportdesk.feed.tickets_for`, drawn once per day (deterministic per seed: the population is the seed's)."""
    return _tickets(day, per_day, seed, drift)


def silver_tables(spark: SparkSession, days: dict[date, dict[str, pd.DataFrame]]) -> dict[str, DataFrame]:
    """Each source's silver rows of `days`: the landed strings through the bronze transform and the use case's
    silver transform (no row is malformed in the clean feed: validation would quarantine none), computed once
    (Sail does not persist: every query would run both transforms again)."""
    tables = {}
    for name in next(iter(days.values())):
        source = USE_CASE.source(name)
        columns = source.contract.column_names
        landed = pd.concat([frames[name][columns].assign(partition_date=day, _line=range(1, len(frames[name]) + 1))
                            for day, frames in days.items()], ignore_index=True)
        schema = ", ".join(f"{c} string" for c in columns) + ", partition_date date, _line long"
        none_bad = spark.createDataFrame([], "partition_date date, _line long")
        silver = source.silver(bronze(spark.createDataFrame(landed, schema), none_bad, source.contract))
        tables[name] = spark.createDataFrame(silver.toArrow())
    return tables


def reader_through(tables: dict[str, DataFrame], day: date) -> Reader:
    """Silver as it stands once `day` has landed."""
    def read(source: str, window: DateRange | None = None) -> DataFrame:
        rows = tables[source].where(DateRange(DateRange.EPOCH, day).predicate())
        return rows if window is None else rows.where(window.predicate())

    return read


def feature_tables_of(champion: LoadedVersion) -> list[FeatureTable]:
    """The feature tables behind the model's feature service (`layout_for` names a flag has_<view> per view)."""
    views = {flag.removeprefix("has_") for flag, _ in champion.layout.presence}
    return [table for table in USE_CASE.feature_tables if table.view in views]


def request_source(spec: ModelSpec) -> str:
    """The source whose rows the model scores as they are created (tickets, orders)."""
    return next(s for s in spec.reads if USE_CASE.source(s).contract.key == spec.split_key)


@dataclass
class Traffic:
    """A day's requests in the order they arrive, with the online features each is served with."""

    day: date
    instances: list[dict[str, Any]]
    features: list[EntityFeatures]

    def __len__(self) -> int:
        return len(self.instances)

    def span(self, start: int, stop: int) -> Traffic:
        return Traffic(self.day, self.instances[start:stop], self.features[start:stop])


class Feed:
    """The loop's world per seed (each day drawn once per module), and each model's traffic on one day of it."""

    def __init__(self, spark: SparkSession) -> None:
        self.spark = spark
        self.frames: dict[tuple[date, int, str | None, frozenset[str]], dict[str, pd.DataFrame]] = {}
        self.served: dict[tuple[str, int, date, str | None, int], Traffic] = {}
        self.silver: dict[tuple[int, frozenset[str], int, str | None, date | None], tuple[date, dict]] = {}
        self.as_of: dict[tuple[Any, ...], pa.Table] = {}

    def traffic(self, spec: ModelSpec, champion: LoadedVersion, seed: int, day: date = LAST,
                drift: str | None = None, history: int = 0) -> Traffic:
        key = (spec.name, seed, day, drift, history)
        if key not in self.served:
            self.served[key] = self._traffic(spec, champion, seed, day, drift, history)
        return self.served[key]

    def _silver(self, seed: int, sources: frozenset[str], history: int, day: date, drift: str | None
                ) -> tuple[date, dict[str, DataFrame]]:
        """Silver once `day` has landed, after `history` earlier days and the loop's, and the last day it holds;
        undrifted silver landed through a later day serves too (a reader stops at its day)."""
        key = (seed, sources, history, drift, day if drift else None)
        if key in self.silver and self.silver[key][0] >= day:
            return self.silver[key]
        days = {}
        earlier = [DAYS[0] - timedelta(days=n) for n in range(history, 0, -1)]
        for d in sorted({*earlier, *DAYS, day}):
            frames_key = (d, seed, drift if d == day else None, sources)
            if frames_key not in self.frames:
                self.frames[frames_key] = feed_day(*frames_key)
            days[d] = self.frames[frames_key]
        self.silver[key] = (day, silver_tables(self.spark, days))
        return self.silver[key]

    def _traffic(self, spec: ModelSpec, champion: LoadedVersion, seed: int, day: date, drift: str | None,
                 history: int) -> Traffic:
        """Every request of `day`, landed after the loop's normal days (the rows of the model's source that day,
        with the fields its request declares), sorted by key and shuffled with the seed as `jobs.loop.instances`
        does; features as of `day`. `drift` applies to `day` alone: its traffic differs from the undrifted
        day's by the drift only. `history` lands that many days before the loop's first too."""
        tables = feature_tables_of(champion)
        sources = frozenset({*spec.reads, *(s for t in tables for s in t.reads)})
        through, silver = self._silver(seed, sources, history, day, drift)
        read = reader_through(silver, day)
        # Every ticket is scored when it opens: the loop replays only the labelled ones (about 800 of a day's 2,000
        # tickets have their outcome by its end), fewer than a baseline and a check of distinct requests.
        assert spec.request is not None, f"{spec.name} declares no request"
        rows = [r.asDict() for r in read(request_source(spec), DateRange.of(day))
                .select(*spec.request.model_fields).orderBy(spec.split_key).collect()]
        random.Random(seed).shuffle(rows)
        instances = [spec.request(**row).model_dump() for row in rows]
        online: list[tuple[list[str], dict[str, dict[str, Any]]]] = []
        for table in tables:  # one row per customer and day: the day's push leaves exactly that row online
            key = (seed, sources, history, drift, table.view, day if drift else through)
            if key not in self.as_of:  # every day traffic is asked for (the loop's last on) in one query
                first = day if drift else LAST
                assert first <= day, f"traffic of {day}, before the loop's last normal day {LAST}"
                built = table.build(reader_through(silver, through), DateRange(first, through))
                self.as_of[key] = built.toArrow()  # (asking a plan for its columns would cost a query too)
            days = self.as_of[key]
            as_of = days.filter(pc.equal(days.column("partition_date"), pa.scalar(day, pa.date32())))
            names = [c for c in as_of.column_names if c in champion.layout.features]
            online.append((names, {r[ENTITY_KEY]: r for r in as_of.select([ENTITY_KEY, *names]).to_pylist()}))
        features = []
        for instance in instances:
            values: dict[str, FeatureValue] = {}
            for names, by_key in online:
                row = by_key.get(instance[ENTITY_KEY])
                values |= {n: FeatureValue(None, Status.MISSING) if row is None else FeatureValue(row[n], Status.PRESENT)
                           for n in names}
            features.append(EntityFeatures({ENTITY_KEY: instance[ENTITY_KEY]}, values))
        return Traffic(day, instances, features)


@dataclass
class Check:
    """The prediction monitor's first check after the served baseline, and the retraining decision on it."""

    model: str
    seed: int
    report: DriftReport
    baseline_rows: int
    rows: int
    decision: RetrainDecision | None

    def summary(self) -> str:
        counted = [c for c in self.report.columns if self.report.counted(c)]
        worst = max((c for c in self.report.columns if c.threshold is not None),
                    key=lambda c: (self.report.counted(c), _past_threshold(c)), default=None)
        return (f"{self.model} seed {self.seed}: {self.rows} answers checked against a baseline of "
                f"{self.baseline_rows}: share drifted {self.report.share_drifted:.3f} "
                f"({self.report.number_drifted}/{len(self.report.columns)}, drifted at {self.report.drift_share}); "
                f"worst column {_column(worst) if worst else '-'}; counted as drifted: "
                f"{'; '.join(_column(c) for c in counted) or 'none'}; "
                f"decision: {self.decision.cause + ': ' + self.decision.reason if self.decision else 'none'}")


def _past_threshold(column: ColumnDrift) -> float:
    """How far the column's score is past its threshold (1: on it): p-values below it, distances above it."""
    if column.p_value is not None:
        return column.threshold / max(column.p_value, 1e-300)  # type: ignore[operator]
    return (column.statistic or 0.0) / column.threshold  # type: ignore[operator]


def _column(c: ColumnDrift) -> str:
    score = f"p={c.p_value:.3g}" if c.p_value is not None else f"{c.statistic:.3f}"
    nulls = (f", null share {c.null_share_reference:.3f} -> {c.null_share_current:.3f}"
             f"{' (drifted)' if c.null_drifted else ''}") if c.null_share_reference or c.null_share_current else ""
    return f"{c.name} {c.test} {score} vs {c.threshold}{nulls}"


def answer(lake: Lake, root: Path, spec: ModelSpec, champion: LoadedVersion, traffic: list[Traffic]) -> int:
    """Score each request as the service does and write the answers through the prediction log, in order."""
    records: list[Prediction] = []
    for part in traffic:
        scores = champion.score_instances(part.instances, part.features)
        start = datetime.combine(part.day, time(8), tzinfo=UTC) + timedelta(seconds=len(records))
        records += [Prediction(f"{part.day}-{len(records) + i}", start + timedelta(seconds=i), spec.name,
                               champion.version, champion.arm,
                               json.dumps({k: v.value for k, v in feats.values.items()}, default=str),
                               json.dumps(instance, default=str), float(score))
                    for i, (instance, feats, score) in enumerate(zip(part.instances, part.features, scores, strict=True))]
    log = PredictionLog(root / "predlog", lake.table("predictions"))
    log.append(records)
    return log.close()


def monitor(tmp_path: Path, spec: ModelSpec, champion: LoadedVersion, seed: int, traffic: list[Traffic],
            embed: Callable[[list[str]], Any] | None) -> Check:
    """The answers through the monitoring assets' calls (assets/monitoring.py, served reference) and the
    retraining sensor's decision (sensors/monitoring.py), on the dev profile's settings."""
    lake = Lake(str(tmp_path / "lake"))
    assert answer(lake, tmp_path, spec, champion, traffic) == sum(len(t) for t in traffic)
    config = DriftConfig.from_dict(MONITORING.drift_config(spec.name))
    layout = champion.layout
    baseline = served_baseline(lake, spec, champion.version, MONITORING.baseline_rows)
    assert baseline is not None
    reference = build_reference(spec.name, champion.version, -1, served_frame(baseline, layout), layout, config, embed,
                                source="served", until=baseline["at"].max().isoformat())
    day = traffic[-1].day
    report, rows = check_day(lake, spec, layout, reference, day, config, embed)
    store = open_store(f"sqlite:///{tmp_path}/events.db")
    try:
        record_drift(store, spec.name, day, reference, report, rows)
        policy = RetrainPolicy(MONITORING.retrain_cooldown_seconds, MONITORING.stale_after_days,
                               MONITORING.max_age_days)
        now = datetime.now(UTC)  # trained now, nothing labelled since: drift is the only cause left to retrain
        decision = decide_retrain(store, spec.name, policy, now=now, new_labelled_days=0, trained_at=now)
    finally:
        store.close()
    check = Check(spec.name, seed, report, reference.rows, rows, decision)
    print(check.summary())
    return check


@pytest.fixture(scope="module")
def feed(spark: SparkSession) -> Feed:
    return Feed(spark)


@pytest.fixture(scope="module")
def champion(built: Built) -> Iterator[Callable[[str], LoadedVersion]]:
    """A declared model's serving version in the `built` session's registry, loaded as the service loads it
    (on first use: the text model's loads MiniLM) and scored on the runtime the service would choose."""
    loaded: dict[str, LoadedVersion] = {}
    before = runtime.scoring_runtime()
    runtime.use_scoring_runtime(built.settings.serving.runtime, built.settings.paths.root / "runtime")

    def load(name: str) -> LoadedVersion:
        if name not in loaded:
            spec = USE_CASE.model(name)
            version, arm = resolve_version(built.settings.tracking_uri, spec)
            loaded[name] = load_version(built.settings.tracking_uri, spec, version, arm, [ENTITY_KEY])
        return loaded[name]

    try:
        yield load
    finally:
        runtime.use_scoring_runtime(before.name, before.cache_dir, before.threads)


@pytest.fixture(scope="module")
def embed() -> Callable[[list[str]], Any]:
    """The engine's MiniLM encoder for text drift (loaded on first use), shared by the module's checks."""
    from loopwise.monitoring.text import minilm_embed

    encode = minilm_embed()

    def one_thread(texts: list[str]) -> Any:
        # PyTorch's threads on a shared machine wait on each other (the suite's other worker, the loop beside it):
        # one thread embeds the same texts several times faster there.
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return encode(texts)
        finally:
            torch.set_num_threads(threads)

    return one_thread


CASES = [("order-refund-risk", seed) for seed in SEEDS] + [("ticket-escalation", TEXT_SEED)]
BASELINE, FIRST_CHECK = MONITORING.baseline_rows, MONITORING.baseline_rows + MONITORING.min_rows


@pytest.mark.parametrize(("model", "seed"), CASES, ids=[f"{m}-seed{s}" for m, s in CASES])
def test_the_days_traffic_after_the_baseline_is_not_flagged_and_retrains_nothing(
        model: str, seed: int, feed: Feed, champion: Callable[[str], LoadedVersion],
        embed: Callable[[list[str]], Any], tmp_path: Path) -> None:
    """The champion's first answers form its baseline; the monitor's first check (`min_rows` more answers, other
    requests of the same day) finds no drift, and nothing calls for a retrain."""
    spec, serving = USE_CASE.model(model), champion(model)
    traffic = feed.traffic(spec, serving, seed)
    assert len(traffic) >= FIRST_CHECK, f"{model} seed {seed}: {len(traffic)} requests, fewer than {FIRST_CHECK}"
    check = monitor(tmp_path, spec, serving, seed, [traffic.span(0, FIRST_CHECK)], embed if spec.text else None)
    assert check.rows == MONITORING.min_rows
    assert not check.report.drifted and check.decision is None, check.summary()


@pytest.mark.parametrize("seed", SEEDS[:2])  # a full order history costs ~13 s a seed
def test_the_next_undrifted_day_is_not_flagged_and_retrains_nothing(seed: int, feed: Feed,
                                                                    champion: Callable[[str], LoadedVersion],
                                                                    tmp_path: Path) -> None:
    """The day after the baseline's, where `loopwise loop` lands its drifted day, landed undrifted after a full
    lookback of order history: the monitor's first check of that day (once `baseline_rows + min_rows` of its
    answers are in) finds no drift. (On the loop's three days alone every history feature grows by a third from
    one day to the next, and the check rightly finds that drift: see `test_a_young_history_is_drift`.)"""
    spec = USE_CASE.model("order-refund-risk")  # the tabular model, on order history alone: cheap for every seed
    serving = champion(spec.name)
    tomorrow = feed.traffic(spec, serving, seed, NEXT, history=LOOKBACK_DAYS)  # first: its silver serves today's
    today = feed.traffic(spec, serving, seed, LAST, history=LOOKBACK_DAYS)
    check = monitor(tmp_path, spec, serving, seed, [today.span(0, FIRST_CHECK), tomorrow.span(0, FIRST_CHECK)], None)
    assert check.rows == FIRST_CHECK
    assert not check.report.drifted and check.decision is None, check.summary()


def test_a_young_history_is_drift(feed: Feed, champion: Callable[[str], LoadedVersion], tmp_path: Path) -> None:
    """The loop's world: three days of history, then an undrifted fourth. Counts over 7 to 90 days grow by a third
    overnight, and the check says so, naming them (a real shift of the served features, not chance)."""
    spec = USE_CASE.model("order-refund-risk")
    serving, seed = champion(spec.name), SEEDS[0]
    tomorrow = feed.traffic(spec, serving, seed, NEXT)
    today = feed.traffic(spec, serving, seed)
    check = monitor(tmp_path, spec, serving, seed, [today.span(0, FIRST_CHECK), tomorrow.span(0, FIRST_CHECK)], None)
    drifted = {c.name for c in check.report.columns if c.drifted}
    assert {"orders_7d", "orders_30d", "orders_90d"} <= drifted, check.summary()
    assert "amount_eur" not in drifted, check.summary()  # the order itself did not move


def test_a_drifted_day_is_flagged_and_retrains_on_drift(feed: Feed, champion: Callable[[str], LoadedVersion],
                                                        tmp_path: Path) -> None:
    """The control: the same requests after the baseline, from the same day drifted as `loopwise loop` drifts
    its day (order amounts x1.8), are flagged, and the model retrains on drift."""
    spec = USE_CASE.model("order-refund-risk")
    serving, seed = champion(spec.name), SEEDS[0]
    normal, drifted = feed.traffic(spec, serving, seed), feed.traffic(spec, serving, seed, LAST, DRIFT)
    assert [i[spec.split_key] for i in normal.instances] == [i[spec.split_key] for i in drifted.instances]
    check = monitor(tmp_path, spec, serving, seed, [normal.span(0, BASELINE), drifted.span(BASELINE, FIRST_CHECK)],
                    None)
    assert check.report.drifted, check.summary()
    assert check.decision is not None and check.decision.cause == "drift", check.summary()
    assert "amount_eur" in check.decision.evidence["drifted_columns"], check.summary()
