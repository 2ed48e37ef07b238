"""Observability, for real: promtool checks the Prometheus config and rules and runs the rules' unit tests; Debian's
Prometheus scrapes two `loopwise serve` over the platform built for the session (one worker, two workers) while the
central state store holds a drift check and a paused canary; then every PromQL expression of the Grafana dashboard
and of the rule files answers with series, the state gauges say what the store holds on both services alike, and
the two-worker service's `/metrics` adds up both workers' counters."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from loopwise import rollout
from loopwise.events import Event, EventStore, open_store
from loopwise.lifecycle import Lifecycle, State
from supportdesk import USE_CASE

from tests.conftest import Built
from tests.services import child_env, free_port, server_process, wait_http, wait_ready
from tests.test_serving import call, instances

ROOT = Path(__file__).resolve().parent.parent
LOOPWISE = str(Path(sys.executable).parent / "loopwise")
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
RULE_FILES = sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))
RULE_TESTS = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))
DASHBOARDS = sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))
JOB = "loopwise-serving"  # the job name the rules select (deploy/prometheus/prometheus.yml)
# What Grafana substitutes before a query reaches Prometheus.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "5m", "$model": ".*"}
ROLLED = USE_CASE.models[1]  # the tabular model takes the canary and the drift check
CANARY_STEPS = (10, 50, 100)


def tool(name: str) -> str:
    path = shutil.which(name) or (f"/usr/bin/{name}" if os.access(f"/usr/bin/{name}", os.X_OK) else None)
    if path is None:
        pytest.skip(f"{name} is not installed (apt-get install prometheus; .ci/run installs it): "
                    "the Prometheus tests cannot run")
    return path


# -- the queries under test ---------------------------------------------------------------------------------
def dashboard_queries() -> list[str]:
    """Every PromQL expression of the dashboards (targets and variables), as Grafana sends it."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("expr"), str):
                found.append(node["expr"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        walk(dashboard["panels"])
        for variable in dashboard.get("templating", {}).get("list", []):
            query = variable.get("query")
            query = query.get("query") if isinstance(query, dict) else query
            match = re.fullmatch(r"label_values\((.+),\s*\w+\)", query or "")
            if match:  # the variable's values exist if its series do
                found.append(match.group(1))
    for name, value in GRAFANA_VARIABLES.items():
        found = [q.replace(name, value) for q in found]
    return found


def rules() -> list[dict[str, Any]]:
    return [rule for path in RULE_FILES for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]]


_COMPARISON = re.compile(r"(==|!=|>=|<=|>|<)(?!\s*bool\b)")


def with_bool(expr: str) -> str:
    """`expr` with every top-level comparison made `bool`: an alert's expression then answers with the series it
    judges (0 or 1 each), healthy or not, so a misnamed metric or label is caught while nothing is wrong."""
    out, depth, quote, i = [], 0, "", 0
    while i < len(expr):
        c = expr[i]
        if quote:
            out.append(expr[i:i + 2] if c == "\\" else c)
            i += 2 if c == "\\" else 1
            quote = "" if c == quote else quote
            continue
        if c in "\"'`":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0 and (m := _COMPARISON.match(expr, i)):
            out.append(f"{m.group(1)} bool")
            i = m.end()
            continue
        out.append(c)
        i += 1
    return "".join(out)


def test_with_bool_turns_top_level_comparisons_only() -> None:
    assert with_bool('up{job="a"} == 0') == 'up{job="a"} == bool 0'
    assert with_bool('x{a!="1", b=~">"} > 0.1 and on (m) sum by (m) (y > 2) >= 200') == \
        'x{a!="1", b=~">"} > bool 0.1 and on (m) sum by (m) (y > 2) >= bool 200'
    assert with_bool("a > bool 1") == "a > bool 1"


# -- promtool -------------------------------------------------------------------------------------------------
def test_promtool_accepts_the_config_and_rules_and_every_alert_passes_its_unit_tests() -> None:
    promtool = tool("promtool")
    checked = subprocess.run([promtool, "check", "config", "prometheus.yml"], cwd=PROMETHEUS_DIR,
                             capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    checked = subprocess.run([promtool, "check", "rules", *map(str, RULE_FILES)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run([promtool, "test", "rules", *(str(p.relative_to(PROMETHEUS_DIR)) for p in RULE_TESTS)],
                            cwd=PROMETHEUS_DIR, capture_output=True, text=True)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    # Every alert has a unit test in which it fires.
    alerts = {rule["alert"] for rule in rules() if "alert" in rule}
    fired = {case["alertname"] for path in RULE_TESTS for test in yaml.safe_load(path.read_text())["tests"]
             for case in test.get("alert_rule_test", []) if case.get("exp_alerts")}
    assert alerts and alerts <= fired, f"alerts with no unit test that fires them: {sorted(alerts - fired)}"


def test_the_dashboard_reads_the_provisioned_datasource() -> None:
    provisioned = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/loopwise.yml").read_text())
    uid = provisioned["datasources"][0]["uid"]
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        panels = [p for p in dashboard["panels"] if p["type"] != "row"]
        assert panels and {p["datasource"]["uid"] for p in panels} == {uid}, path
        assert {t["datasource"]["uid"] for p in panels for t in p["targets"]} == {uid}, path


# -- the state collector on its own ----------------------------------------------------------------------------
def drift_check(model: str, statistic: float) -> Event:
    return Event("drift.checked", f"drift:{model}", {
        "model": model, "partition": "2026-03-03", "share_drifted": 1.0 if statistic > 0.1 else 0.0,
        "drifted": statistic > 0.1, "columns": [{"name": "f1", "kind": "numeric", "test": "ks", "statistic": statistic,
                                                 "threshold": 0.1, "drifted": statistic > 0.1}]})


def test_the_state_collector_reads_only_what_was_appended_since_the_last_scrape(tmp_path: Path) -> None:
    from loopwise.serving.metrics import StateCollector
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    store = open_store(f"sqlite:///{tmp_path}/events.db")
    for event in (Event("asset.materialized", "asset:raw_a", {}), Event("asset.materialized", "asset:m/trained_model", {}),
                  drift_check("m", 0.3), drift_check("other", 0.3)):
        store.append(event)
    registry = CollectorRegistry()
    registry.register(StateCollector(store, ["m"]))
    reads: list[tuple[str | None, int]] = []
    read = store.read
    store.read = lambda after=0, **kw: reads.append((kw.get("kind"), after)) or read(after=after, **kw)  # type: ignore[method-assign]

    def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for f in text_string_to_metric_families(generate_latest(registry).decode()) for s in f.samples}

    first = scrape()
    assert first[("loopwise_feature_drift_statistic", (("feature", "f1"), ("model", "m"), ("test", "ks")))] == 0.3
    assert first[("loopwise_dataset_drifted", (("model", "m"),))] == 1.0
    assert not [k for k in first if ("model", "other") in k[1]]  # only the models it serves
    assert {k[1] for k in first if k[0] == "loopwise_asset_group_last_materialized_timestamp_seconds"} == \
        {(("group", "raw_a"),), (("group", "m"),)}  # the key's first part by default
    assert first[("loopwise_state_store_up", ())] == 1.0
    last = store.last_seq()
    store.append(drift_check("m", 0.05))
    store.append(Event("asset.materialized", "asset:raw_a", {"group": "raw"}))  # a recorded group wins
    second = scrape()
    assert second[("loopwise_feature_drift_statistic", (("feature", "f1"), ("model", "m"), ("test", "ks")))] == 0.05
    assert second[("loopwise_dataset_drifted", (("model", "m"),))] == 0.0
    assert second[("loopwise_asset_last_materialized_timestamp_seconds", (("asset", "raw_a"), ("group", "raw")))] > 0
    # The first scrape read each kind from the start, the second only what came after.
    assert [after for kind, after in reads if kind] == [0, 0, last, last]
    store.close()


# -- the running stack ----------------------------------------------------------------------------------------
@dataclass
class Stack:
    store: EventStore
    prometheus: str
    single: str  # host:port of the one-worker service
    double: str  # host:port of the two-worker service
    multiproc_dir: Path
    sent_to_double: int
    drifted_feature: str


def copy_store(url: str, to: Path) -> str:
    """A private copy of the built platform's event store: this test writes drift checks and rollouts to it."""
    source, target = sqlite3.connect(url.removeprefix("sqlite:///")), sqlite3.connect(to)
    with target:
        source.backup(target)
    source.close()
    target.close()
    return f"sqlite:///{to}"


def predictions_in(multiproc_dir: Path) -> dict[str, float]:
    """Predictions counted per worker process, from each one's own multiprocess file."""
    from prometheus_client.multiprocess import MultiProcessCollector

    counts = {}
    for path in multiproc_dir.glob("counter_*.db"):
        metrics = MultiProcessCollector.merge([str(path)], accumulate=True)
        counts[path.stem.removeprefix("counter_")] = sum(
            s.value for m in metrics if m.name == "loopwise_predictions" for s in m.samples
            if s.name == "loopwise_predictions_total")
    return counts


def roll_out(store: EventStore, model: str) -> rollout.Rollout:
    """A canary of a gated version 2 against champion 1, paused at its first step (10%)."""
    lifecycle = Lifecycle(store)
    if lifecycle.state(model, "1") is not State.CHAMPION:  # the main job may have left it challenger
        for state in (State.CANARY, State.CHAMPION):
            lifecycle.transition(model, "1", state, "test", "the champion of this test's rollout")
    for state in (State.TRAINED, State.VALIDATED, State.CHALLENGER):
        lifecycle.transition(model, "2", state, "test", "the challenger of this test's rollout")
    rollout.start(store, model, "canary", "1", "2", steps=CANARY_STEPS, actor="test", reason="observability test")
    return rollout.pause(store, model, actor="test", reason="held to see it on the dashboard")


@pytest.fixture(scope="session")
def prometheus() -> str:
    """Debian's Prometheus; asked for before `built`, so a missing binary skips without building the platform."""
    return tool("prometheus")


@pytest.fixture(scope="module")
def stack(prometheus: str, built: Built, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("observability")
    events_url = copy_store(built.settings.events_url, root / "events.db")
    multiproc_dir = root / "multiproc"
    multiproc_dir.mkdir()
    ports = {"single": free_port(), "double": free_port(), "prometheus": free_port()}
    single, double = f"127.0.0.1:{ports['single']}", f"127.0.0.1:{ports['double']}"
    base = {k: v for k, v in child_env(**built.env, LOOPWISE__EVENTS__URL=events_url).items()
            if k != "PROMETHEUS_MULTIPROC_DIR"}
    config = root / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(p) for p in RULE_FILES],
        "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [single, double]}]}],
    }))
    with ExitStack() as running:
        # Both services start at once (each its own prediction log folder); Prometheus meanwhile.
        servers = {}
        for name, workers, extra in (("single", 1, {}), ("double", 2, {"PROMETHEUS_MULTIPROC_DIR": str(multiproc_dir)})):
            log = root / f"serve-{name}.log"
            env = {**base, "LOOPWISE__SERVING__LOG_DIR": str(root / f"predlog-{name}"), **extra}
            servers[name] = (running.enter_context(server_process(
                [LOOPWISE, "serve", "--port", str(ports[name]), "--workers", str(workers)], log, env)), log)
        prom_log = root / "prometheus.log"
        prom = running.enter_context(server_process(
            [prometheus, f"--config.file={config}", f"--storage.tsdb.path={root / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{ports['prometheus']}", "--log.level=warn"], prom_log))
        wait_http(f"http://127.0.0.1:{ports['prometheus']}/-/ready", prom, "Prometheus", seconds=30)
        for name, (proc, log) in servers.items():
            wait_ready(f"http://{single if name == 'single' else double}", proc, log)

        # Traffic on the one-worker service: every model, an entity with no features, a 422, a 413.
        examples = instances(built)
        feature_names: list[str] = []
        for spec in USE_CASE.models:
            status, body = call(f"http://{single}/v1/models/{spec.name}:predict", {"instances": examples[spec.name]})
            assert status == 200, body
            if spec is ROLLED:
                feature_names = sorted(body["predictions"][0]["feature_statuses"])
            unknown = {**examples[spec.name][0], "customer_id": "C-NOBODY"}
            assert call(f"http://{single}/v1/models/{spec.name}:predict", {"instances": [unknown]})[0] == 200
        assert call(f"http://{single}/v1/models/{ROLLED.name}:predict", {"instances": []})[0] == 422
        connection = http.client.HTTPConnection("127.0.0.1", ports["single"], timeout=30)  # declared, not sent
        connection.putrequest("POST", f"/v1/models/{ROLLED.name}:predict")
        connection.putheader("Content-Length", "2000000")
        connection.endheaders()
        assert connection.getresponse().status == 413
        connection.close()

        # Traffic on the two-worker service, 16 requests at a time, until both workers have answered some (the
        # first ready worker takes everything while the other is still loading its models).
        one = {"instances": examples[ROLLED.name][:1]}
        sent, deadline = 0, time.monotonic() + 120
        with ThreadPoolExecutor(8) as pool:
            while len([n for n in predictions_in(multiproc_dir).values() if n > 0]) < 2 and time.monotonic() < deadline:
                statuses = list(pool.map(lambda _: call(f"http://{double}/v1/models/{ROLLED.name}:predict", one)[0],
                                         range(16)))
                assert statuses == [200] * 16
                sent += 16
                time.sleep(0.5)

        # The state store: a drift check that found one feature drifted, and a canary paused at its first step.
        store = open_store(events_url)
        drifted = feature_names[0]
        store.append(Event("drift.checked", f"drift:{ROLLED.name}", {
            "model": ROLLED.name, "partition": "2026-03-03", "share_drifted": 0.5, "drifted": True,
            "columns": [{"name": drifted, "kind": "numeric", "test": "ks", "statistic": 0.31, "threshold": 0.05,
                         "p_value": 0.001, "drifted": True},
                        {"name": feature_names[1], "kind": "numeric", "test": "wasserstein", "statistic": 0.02,
                         "threshold": 0.1, "p_value": None, "drifted": False}]}))
        roll_out(store, ROLLED.name)
        yield Stack(store, f"http://127.0.0.1:{ports['prometheus']}", single, double, multiproc_dir, sent, drifted)
        store.close()


def query(stack: Stack, promql: str) -> list[dict[str, Any]]:
    url = f"{stack.prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as error:
        pytest.fail(f"Prometheus refused {promql!r}: {error.read().decode()}")
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def eventually(stack: Stack, promql: str, seconds: float = 30,
               until: Callable[[list[dict[str, Any]]], bool] = bool) -> list[dict[str, Any]]:
    """The query's series once `until` holds for them (by default: there are some; scrapes and rule evaluations
    run every second), or as they are at the deadline."""
    deadline = time.monotonic() + seconds
    while True:
        result = query(stack, promql)
        if until(result) or time.monotonic() > deadline:
            return result
        time.sleep(0.5)


def values(result: list[dict[str, Any]], *labels: str) -> dict[tuple[str, ...], float]:
    return {tuple(r["metric"].get(label, "") for label in labels): float(r["value"][1]) for r in result}


def test_the_state_gauges_show_the_store_on_every_service_alike(stack: Stack) -> None:
    model = ROLLED.name
    paused = eventually(stack, f'loopwise_rollout_paused{{model="{model}"}} == 1', until=lambda r: len(r) == 2)
    assert values(paused, "instance") == {(stack.single,): 1.0, (stack.double,): 1.0}
    shares = query(stack, f'loopwise_traffic_share{{model="{model}"}}')
    assert values(shares, "instance", "arm", "version") == {
        (i, arm, version): share for i in (stack.single, stack.double)
        for arm, version, share in (("champion", "1", 0.9), ("challenger", "2", 0.1))}
    info = query(stack, f'loopwise_rollout_info{{model="{model}"}}')
    assert {(r["metric"]["strategy"], r["metric"]["status"], r["metric"]["challenger_version"]) for r in info} == \
        {("canary", "paused", "2")}
    percent = query(stack, f'loopwise_rollout_challenger_percent{{model="{model}"}}')
    assert values(percent, "instance") == {(stack.single,): 10.0, (stack.double,): 10.0}
    drifted = query(stack, f'loopwise_feature_drifted{{model="{model}", instance="{stack.single}"}}')
    assert {k[0]: v for k, v in values(drifted, "feature").items()}[stack.drifted_feature] == 1.0
    assert values(eventually(stack, f'loopwise:dataset_drift_share:max{{model="{model}"}}'), "model") == {(model,): 0.5}
    # Freshness: every materialized asset of the main job, in the group the lineage graph gives it.
    from definitions import defs

    graph = defs.resolve_asset_graph()
    groups = {k.to_user_string(): graph.get(k).group_name for k in graph.get_all_asset_keys()}
    exported = values(query(stack, f'loopwise_asset_last_materialized_timestamp_seconds{{instance="{stack.single}"}}'),
                      "asset", "group")
    assert exported and {asset: group for asset, group in exported} == {asset: groups[asset] for asset, _ in exported}
    assert {"raw", "bronze", "silver", "features"} <= {group for _, group in exported}


def test_two_workers_metrics_add_up_both_workers_counters(stack: Stack) -> None:
    per_worker = predictions_in(stack.multiproc_dir)
    assert len([n for n in per_worker.values() if n > 0]) >= 2, f"one worker answered everything: {per_worker}"
    assert sum(per_worker.values()) == stack.sent_to_double
    with urllib.request.urlopen(f"http://{stack.double}/metrics", timeout=10) as response:
        text = response.read().decode()
    from prometheus_client.parser import text_string_to_metric_families

    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert sum(s.value for s in families["loopwise_predictions"].samples
               if s.name == "loopwise_predictions_total") == stack.sent_to_double
    assert [s.value for s in families["loopwise_state_store_up"].samples] == [1.0]  # the state gauges, once
    total = eventually(stack, f'sum(loopwise_predictions_total{{instance="{stack.double}"}}) == {stack.sent_to_double}')
    assert total, "Prometheus did not scrape the two workers' total"


def test_every_dashboard_and_rule_query_answers_with_series(stack: Stack) -> None:
    eventually(stack, f'loopwise_rollout_paused{{model="{ROLLED.name}"}} == 1', until=lambda r: len(r) == 2)
    queries = [*dashboard_queries(), *(with_bool(rule["expr"]) for rule in rules())]
    assert len(queries) > 30
    deadline = time.monotonic() + 30
    empty = [q for q in queries if not eventually(stack, q, seconds=max(0.0, deadline - time.monotonic()))]
    assert not empty, f"queries with no series: {empty}"
