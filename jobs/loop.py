"""The closed loop as `loopwise loop` runs it. Dagster's own daemon and webserver (`dg dev`) and the serving
service run as a team would run them; this only does what the world outside does (land files, send traffic) and
reports, from the instance and the audit trail, what the platform does by itself:

1. normal days land; the landing sensor's run carries them to silver, features and the online store, and the
   retraining sensor trains, gates and releases each model's first champion;
2. traffic is replayed against the service, to the model the loop follows (the first without a text input) as
   soon as it is served, while the others finish training;
3. drifted days land and their traffic is replayed;
4. the prediction monitor finds the drift, the retraining sensor retrains, the new version is canaried;
5. the canary analysis promotes it, or rolls it back if it is worse; the serving model's lineage is printed.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import date, timedelta
from itertools import cycle, islice
from pathlib import Path
from typing import Any

import dagster as dg
from loopwise.backends import Backends
from loopwise.config import Settings
from loopwise.events.store import EventStore
from loopwise.processes import running

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
# What the loop reports as it happens, from the audit trail (kind prefix -> how to say it).
REPORTED = ("rollout.", "drift.checked", "performance.checked", "retrain.requested", "registry.gate", "asset.materialized")
Say = Callable[[str], None]


class LoopFailed(RuntimeError):
    """A stage of the loop did not happen in time; the message says which and where to look."""


def http(url: str, body: Any = None, timeout: float = 30) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


class Watch:
    """Follows the audit trail and prints what the platform did, once per event."""

    def __init__(self, store: EventStore, say: Say, started: float) -> None:
        self.store, self.say, self.started = store, say, started
        self.seq = store.last_seq()

    def poll(self) -> list[Any]:
        records = self.store.read(after=self.seq)
        if records:
            self.seq = records[-1].seq
        stamp = f"[{time.monotonic() - self.started:5.0f} s]"
        made: dict[str, int] = {}
        for r in records:
            if r.kind == "asset.materialized":
                made[r.subject.removeprefix("asset:")] = made.get(r.subject.removeprefix("asset:"), 0) + 1
            elif r.kind.startswith(REPORTED):
                self.say(f"{stamp} {r.kind:<24} {r.subject:<36} {r.reason[:110]}")
        if made:
            self.say(f"{stamp} materialized: " + ", ".join(f"{a}" + (f" x{n}" if n > 1 else "") for a, n in made.items()))
        return records

    def until(self, done: Callable[[], bool], what: str, seconds: float, between: Callable[[], None] | None = None,
              where: str = "") -> None:
        deadline = time.monotonic() + seconds
        while not done():
            if time.monotonic() > deadline:
                raise LoopFailed(f"{what} did not happen within {seconds:.0f} s{where}")
            if between is not None:
                between()
            self.poll()
            time.sleep(1)
        self.poll()


def port_free(host: str, port: int) -> bool:
    import socket

    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def instances(backends: Backends, days: list[date], models: list[str]) -> dict[str, list[dict[str, Any]]]:
    """These models' request instances for `days`, from their labelled rows in silver (what a caller would send)."""
    from loopwise.features.stages import silver_reader
    from loopwise.lake.tables import DateRange
    from loopwise.pipelines.stages import PinnedReads
    from loopwise.spark.session import connect

    spark = connect(backends.settings.spark.remote)
    read = silver_reader(PinnedReads(spark), backends.lake())
    out = {}
    window = DateRange(min(days), max(days))
    for spec in [backends.use_case.model(name) for name in models]:
        fields = list(spec.request.model_fields) if spec.request else [spec.split_key]
        rows = spec.rows(read).where(f"partition_date >= '{window.start}' AND partition_date <= '{window.end}'")
        out[spec.name] = [r.asDict() for r in rows.select(*fields).collect()]
        # Requests arrive in no stored order: replaying a table's order (by day, by key) is a drift of its own.
        random.Random(backends.settings.demo.seed).shuffle(out[spec.name])
    return out


def replay(base: str, batch: dict[str, list[dict[str, Any]]], per_model: int, callers: int = 8) -> dict[str, int]:
    """Send `per_model` single-instance predictions per model from `callers` concurrent clients, as live callers
    would; the count answered per model."""
    from concurrent.futures import ThreadPoolExecutor

    def ask(call: tuple[str, dict[str, Any]]) -> bool:
        return http(f"{base}/v1/models/{call[0]}:predict", {"instances": [call[1]]})[0] == 200

    # A day has fewer labelled requests than a served baseline needs: callers come back (the same rows again).
    calls = [(model, row) for model, rows in batch.items() if rows for row in islice(cycle(rows), per_model)]
    with ThreadPoolExecutor(callers) as pool:
        answers = list(pool.map(ask, calls))
    return {model: sum(ok for (m, _), ok in zip(calls, answers, strict=True) if m == model) for model in batch}


def run_loop(settings: Settings, say: Say, normal_days: int = 3, drift: str = "amounts=1.8",
             traffic: int | None = None, ui_port: int = 3000) -> None:
    """The whole loop; raises LoopFailed naming the stage that did not happen. `traffic`: the normal days'
    predictions replayed to the followed model, by default enough for its served baseline and one drift check."""
    from loopwise.landing import zone
    from loopwise.lineage import model_lineage
    from loopwise.rollout import current
    from loopwise.rollout.policy import describe

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stopped from outside: still stop the children
    backends = Backends(settings)
    use_case, store = backends.use_case, backends.events()
    start = settings.demo.dates[0]
    days = [start + timedelta(days=i) for i in range(normal_days)]
    drifted = [days[-1] + timedelta(days=1)]
    env = {**os.environ, "MLFLOW_LOGGING_LEVEL": "ERROR"}  # DAGSTER_HOME: set by the caller (`loopwise loop`)
    logs = settings.paths.root / "logs"
    checked = settings.monitoring.min_rows
    traffic = traffic or checked + (settings.monitoring.baseline_rows if settings.monitoring.reference == "served" else 0)
    began = time.monotonic()
    watch = Watch(store, say, began)
    base = f"http://{settings.serving.host}:{settings.serving.port}"
    for what, host, port in (("the Dagster UI", "127.0.0.1", ui_port),
                             ("the service", settings.serving.host, settings.serving.port)):
        if not port_free(host, port):
            raise LoopFailed(f"{host}:{port}, where {what} would listen, is in use (an earlier `loopwise loop`, "
                             "`make dev` or `loopwise serve`?): stop it, or choose --ui-port, or serving.port for the service")
    with dg.DagsterInstance.get() as instance, \
            running([str(BIN / "dg"), "dev", "--host", "127.0.0.1", "--port", str(ui_port)], logs / "dagster.log", env,
                    ROOT, signum=signal.SIGINT), \
            running([str(BIN / "loopwise"), "serve"], logs / "serve.log", env, ROOT) as service:
        say(f"Dagster UI (webserver and daemon): http://127.0.0.1:{ui_port}   service: {base}   logs: {logs}")
        for day in days:
            landed = zone.land_day(use_case, settings.paths.landing, day, settings.demo.rows_per_day, settings.demo.seed,
                                   None, settings.demo.bad_row_fraction)
            say(f"landed {day}: " + ", ".join(f"{f.source} {f.rows} rows" for f in landed))
        # The loop follows one model through traffic, drift, retrain and rollout: the first without a text input,
        # the quickest to retrain. Every model trains and is released; the others' training goes on beside the
        # followed model's traffic instead of holding it up (the text model's first training was the longest
        # step: 54-75 s), and no other model's drift check or retrain takes the two cores from its retrain and
        # canary.
        model = min(use_case.models, key=lambda m: m.text is not None).name
        released = lambda name: (r := current(store, name)) is not None and r.status.value == "promoted"  # noqa: E731
        watch.until(lambda: released(model), f"{model}'s first champion (landing -> silver -> features -> train -> "
                    "release)", 900, where=f" (see the runs in the Dagster UI, {logs / 'dagster.log'})")
        if service.poll() is not None:
            raise LoopFailed(f"the service stopped (exit {service.returncode}); its log: {logs / 'serve.log'}")
        serving = lambda: (answer := http(f"{base}/v1/models/{model}"))[0] == 200 and answer[1]["ready"]  # noqa: E731
        watch.until(serving, f"the service loading {model}'s champion", 120, where=f" ({logs / 'serve.log'})")
        # The last day's requests, as live traffic would be: older days' outcomes have landed and flowed into the
        # online features (a replayed ticket would be served features that already count its own escalation).
        normal = instances(backends, days[-1:], [model])
        replayed_at = store.last_seq()
        say(f"replaying {model}'s traffic of the normal days: {replay(base, normal, traffic)[model]} answered")
        # The normal traffic is checked before the drifted day can reach the features it is served (a check that
        # also read drifted answers would be no check of normal traffic).
        checked_normal = lambda: store.read(after=replayed_at, kind="drift.checked", subject=f"drift:{model}")  # noqa: E731
        watch.until(checked_normal, f"the monitor checking {model}'s normal traffic", 300)
        for day in drifted:
            landed = zone.land_day(use_case, settings.paths.landing, day, settings.demo.rows_per_day, settings.demo.seed,
                                   drift, settings.demo.bad_row_fraction)
            say(f"landed drifted {day} ({drift}): " + ", ".join(f"{f.source} {f.rows} rows" for f in landed))
        before = current(store, model).id
        online = lambda: all(_materialized(instance, "online_features", d) for d in drifted)  # noqa: E731
        watch.until(online, "the drifted days reaching the online store", 600)
        # One drift check's worth: more would be checked again, a run per check, while the model retrains.
        shifted = instances(backends, drifted, [model])
        say(f"replayed {model}'s traffic of the drifted days: {replay(base, shifted, checked)[model]} answered")
        # No traffic while the model retrains: the monitor would check each new batch again, a run per check,
        # on the two cores the training needs.
        started = lambda: current(store, model).id != before  # noqa: E731
        watch.until(started, f"drift detected in {model}, a retrain, and a rollout of the new version", 900)
        finished = lambda: current(store, model).finished  # noqa: E731
        # Its callers only: each canary step needs `min_sample` answers from the challenger's share.
        watch.until(finished, f"the {model} rollout deciding", 600,
                    between=lambda: replay(base, {model: shifted[model]}, 200))
        rollout = current(store, model)
        say(f"{model}: rollout {rollout.id} {rollout.status.value}; serving version {rollout.arms[0].version}")
        others = [m.name for m in use_case.models if m.name != model]
        watch.until(lambda: all(released(m) for m in others), "the first champion of every other model", 600)
        say("lineage of the serving model:")
        for step in model_lineage(settings.tracking_uri, store, f"{model}@champion").steps:
            say(f"  {step.asset:<34} {step.detail}")
        for decision in describe(store, model)["decisions"]:
            say(f"  rollout decision {decision['at'][:19]} {decision['action']}: {decision['reason'][:140]}")
        say(f"the loop took {time.monotonic() - began:.0f} s")


def _materialized(instance: dg.DagsterInstance, asset: str, day: date) -> bool:
    """Whether the daemon's Dagster instance has materialized `asset`'s partition `day` (the audit trail records
    it up to an audit sensor's tick later: 30 s)."""
    return day.isoformat() in instance.get_materialized_partitions(dg.AssetKey(asset))
