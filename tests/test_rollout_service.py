"""Progressive delivery end to end: two real `loopwise serve` processes over a copy of the session's platform,
challengers registered beside the champion (a good one, and broken ones that raise, are slow or are worse on
labelled traffic), rollouts started by the `deployed_endpoint` code path, and the canary-analysis sensor's own
code deciding on the prediction log. The two services must agree on the split after every change."""

import json
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from loopwise.backends import Backends
from loopwise.config import Settings, load_settings
from loopwise.lake.tables import Lake
from loopwise.registry import GatePolicy
from loopwise.rollout import current
from supportdesk import USE_CASE

from tests.conftest import Built
from tests.services import free_port
from tests.test_serving import call, serve

MODEL = "order-refund-risk"
SPEC = USE_CASE.model(MODEL)
FAULTY = str(Path(__file__).with_name("faulty_model.py"))
# Latency leaves room for a loaded 2-core machine; `slow` sleeps 600 ms a scoring.
RULES = ("[{rule: error_rate, max_rate: 0.08, min_sample: 40}, "
         "{rule: latency, quantile: 0.9, max_ms: 300, min_sample: 40, inconclusive_limit: 3}")
# The session's models are trained for 3 epochs on 2 small days, and their scores saturate (near 0 for any
# customer with history), so log-loss terms are 0 or ~16: non-inferiority of a good challenger cannot be shown on a
# few hundred labels, and its success path is covered by the engine's tests. A challenger that inverts its scores is
# still clearly worse on the labels that arrived, which is what the `worse` case checks.
ACCURACY = "{rule: accuracy, measure_by: log_loss, max_degradation: 0.5, min_sample: 100, inconclusive_limit: 3}"


@dataclass
class Platform:
    settings: Settings
    env: dict[str, str]
    bases: list[str]
    operator_key: str

    def backends(self) -> Backends:
        return Backends(self.settings)


@pytest.fixture(scope="module")
def platform(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    root = tmp_path_factory.mktemp("rollouts") / "data"
    # Without the session's prediction log: what other modules sent is not this module's traffic.
    shutil.copytree(built.settings.paths.root, root, ignore=shutil.ignore_patterns("predlog", "serve-*.log", "predictions"))
    env = {**built.env, "LOOPWISE_DATA_DIR": str(root), "LOOPWISE__ROLLOUT__STEPS": "[20, 50, 100]",
           "LOOPWISE__ROLLOUT__RULES": RULES + "]", "LOOPWISE__SERVING__FLUSH_INTERVAL_SECONDS": "0.5"}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        settings = load_settings()
        from loopwise.serving.auth import ApiKeys

        _, key = ApiKeys(Backends(settings).events()).create("rollout-tests", "operator", "tests")
        ports = [free_port(), free_port()]
        with serve_copy(built, env, ports[0]), serve_copy(built, env, ports[1]):
            yield Platform(settings, env, [f"http://127.0.0.1:{p}" for p in ports], key)


def serve_copy(built: Built, env: dict[str, str], port: int):  # type: ignore[no-untyped-def]
    copy = Built(built.settings.model_copy(update={"data_dir": Path(env["LOOPWISE_DATA_DIR"])}), built.instance,
                 built.steps, built.landed, env)
    return serve(copy, port)


def register(platform: Platform, fault: str) -> str:
    """Log a challenger wrapping the champion with `fault`, register it and pass it through the gate."""
    import mlflow
    from loopwise.rollout import abort

    backends = platform.backends()
    running = current(backends.events(), MODEL)
    if running is not None and not running.finished:  # what an earlier failed test left
        abort(backends.events(), MODEL, actor="tests", reason="an earlier test's rollout")
    registry = backends.registry(MODEL)
    champion = registry.alias("champion")
    mlflow.set_tracking_uri(platform.settings.tracking_uri)
    mlflow.set_registry_uri(platform.settings.tracking_uri)
    experiment = mlflow.get_experiment_by_name("rollout-tests") or mlflow.get_experiment(mlflow.create_experiment(
        "rollout-tests", artifact_location=platform.settings.artifact_uri))
    with mlflow.start_run(experiment_id=experiment.experiment_id) as run:
        info = mlflow.pyfunc.log_model(name="model", python_model=FAULTY, model_config={"fault": fault},
                                       artifacts={"inner": f"models:/{MODEL}/{champion}"})
    version = registry.register(info.model_uri, run.info.run_id, {"fault": fault}, actor="tests")
    assert registry.gate(version, {"auc": 0.7}, GatePolicy()).passed
    return version


def deploy(platform: Platform, strategy: str) -> None:
    from loopwise.rollout.policy import deploy as deploy_version

    backends = platform.backends()
    policy = platform.settings.rollout.policy(MODEL).model_copy(update={"strategy": strategy})
    done = deploy_version(backends.events(), backends.registry(MODEL), MODEL, policy, actor="tests", reason=strategy)
    assert done.action == "started", done
    agree(platform)


def agree(platform: Platform) -> dict[str, float]:
    """Both services route by the state store's split within a couple of seconds of a change."""
    rollout = current(platform.backends().events(), MODEL)
    expected = {a.name: a.weight for a in rollout.arms}
    deadline = time.monotonic() + 10
    while True:
        seen = [call(f"{base}/v1/models/{MODEL}")[1] for base in platform.bases]
        if all(s["traffic"] == expected and s["rollout_id"] == rollout.id for s in seen):
            return expected
        assert time.monotonic() < deadline, f"services disagree with the store {expected}: {seen}"
        time.sleep(0.2)


def orders(platform: Platform) -> list[dict]:
    rows = Lake(platform.settings.lake_uri).table(SPEC.training_table).read().to_pylist()
    return [{f: row[f] for f in SPEC.request.model_fields} for row in rows]  # type: ignore[union-attr]


def send(platform: Platform, instances: list[dict], n: int) -> list[tuple[int, dict]]:
    """`n` single-instance requests from 4 concurrent clients, spread over both services."""
    answers: list[tuple[int, dict]] = []
    lock = threading.Lock()

    def client(k: int) -> None:
        for i in range(k, n, 4):
            got = call(f"{platform.bases[i % 2]}/v1/models/{MODEL}:predict", {"instances": [instances[i % len(instances)]]})
            with lock:
                answers.append(got)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return answers


def logged(platform: Platform) -> int:
    table = Lake(platform.settings.lake_uri).table("predictions")
    return table.count() if table.exists() else 0


def analyse(platform: Platform, instances: list[dict], per_round: int = 200, rounds: int = 12) -> list[tuple[int, dict]]:
    """Traffic, then one canary-analysis tick (the sensor's code), until the rollout finishes; every answer."""
    from resources import build_resources
    from sensors.rollout import analyse_all

    resources = build_resources(platform.settings, USE_CASE)
    answers: list[tuple[int, dict]] = []
    for tick in range(rounds):
        rollout = current(platform.backends().events(), MODEL)
        if rollout.finished:
            return answers
        before = logged(platform)
        batch = send(platform, instances, per_round)
        answers += batch
        deadline = time.monotonic() + 30
        while logged(platform) < before + len(batch) and time.monotonic() < deadline:
            time.sleep(0.2)
        analyse_all(resources["events"], resources["lake"], resources["mlflow"], resources["feast"],
                    key=f"{rollout.id}:{tick}")
        agree(platform)
    raise AssertionError(f"the rollout did not finish in {rounds} rounds: {current(platform.backends().events(), MODEL)}")


def lifecycle(platform: Platform, version: str) -> str:
    from loopwise.lifecycle import Lifecycle

    return Lifecycle(platform.backends().events()).state(MODEL, version).value


def test_a_good_challenger_is_promoted_through_every_canary_step(platform: Platform) -> None:
    champion = platform.backends().registry(MODEL).alias("champion")
    version = register(platform, "same")
    deploy(platform, "canary")
    answers = analyse(platform, orders(platform))
    rollout = current(platform.backends().events(), MODEL)
    assert rollout.status.value == "promoted", rollout
    assert {s for s, _ in answers} == {200}
    stages = [r.payload["rollout"]["stage"] for r in platform.backends().events().read(kind="rollout.advanced")
              if r.payload["rollout"]["id"] == rollout.id]
    assert stages == [1, 2], stages  # 20% -> 50% -> 100%, then promoted
    assert platform.backends().registry(MODEL).alias("champion") == version
    assert (lifecycle(platform, version), lifecycle(platform, champion)) == ("champion", "retired")
    assert agree(platform) == {"champion": 1.0}
    answer = send(platform, orders(platform), 4)
    assert {a["predictions"][0]["version"] for _, a in answer} == {version}


@pytest.mark.parametrize("fault", ["raises", "slow", "worse"])
def test_a_broken_challenger_is_rolled_back_and_only_its_share_of_requests_fails(platform: Platform, fault: str,
                                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    if fault == "worse":  # judged on the labels that arrived (the sensor reads the profile at each tick)
        monkeypatch.setenv("LOOPWISE__ROLLOUT__RULES", f"{RULES}, {ACCURACY}]")
    champion = platform.backends().registry(MODEL).alias("champion")
    version = register(platform, fault)
    deploy(platform, "canary")
    answers = analyse(platform, orders(platform))
    rollout = current(platform.backends().events(), MODEL)
    assert rollout.status.value == "rolled_back", rollout
    decision = platform.backends().events().read(kind="rollout.rolled_back")[-1]
    failed_rule = {"raises": "error_rate", "slow": "latency", "worse": "accuracy"}[fault]
    assert failed_rule in decision.reason, decision.reason
    assert decision.payload["evidence"]["rules"], "the rollback carries its evidence"
    errors = [a for s, a in answers if s != 200]
    if fault == "raises":
        assert errors and all(f"version {version} (challenger)" in e["detail"] for e in errors)
        assert len(errors) <= 0.35 * len(answers)  # only the canary's 20% could fail
    else:
        assert not errors
    assert lifecycle(platform, version) == "rolled_back"
    assert platform.backends().registry(MODEL).alias("champion") == champion
    assert agree(platform) == {"champion": 1.0}
    after = send(platform, orders(platform), 8)
    assert {(s, a["predictions"][0]["version"]) for s, a in after} == {(200, champion)}


def test_shadow_changes_no_answer_and_logs_both_scores(platform: Platform) -> None:
    import subprocess

    champion = platform.backends().registry(MODEL).alias("champion")
    register(platform, "same")
    deploy(platform, "shadow")
    answers = send(platform, orders(platform), 40)
    assert {(s, a["predictions"][0]["version"], a["predictions"][0]["arm"]) for s, a in answers} == \
        {(200, champion, "champion")}
    ids = {a["predictions"][0]["request_id"]: a["predictions"][0]["score"] for _, a in answers}
    deadline = time.monotonic() + 30
    while True:
        rows = Lake(platform.settings.lake_uri).table("predictions").read().to_pylist()
        shadows = {r["request_id"].removesuffix("-shadow-challenger"): r for r in rows
                   if r["request_id"].removesuffix("-shadow-challenger") in ids and not r["served"]}
        if len(shadows) == len(ids) or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert len(shadows) == len(ids)
    # The same model behind both arms: the same score, up to float32 rounding (each arm scores in micro-batches
    # of its own, and a row's float32 sums move in the last bit with the rows beside it).
    gaps = sorted(abs(shadows[i]["score"] - ids[i]) for i in ids)
    assert gaps[-1] < 1e-6, gaps[-5:]
    # A person ends it from the CLI (operator: the key), recorded with who and why.
    cli = Path(__import__("sys").executable).with_name("loopwise")
    done = subprocess.run([str(cli), "rollout", "abort", MODEL, "--reason", "shadow checked"], capture_output=True,
                          text=True, env={**__import__("os").environ, **platform.env,
                                          "LOOPWISE_API_KEY": platform.operator_key}, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    record = platform.backends().events().read(kind="rollout.aborted")[-1]
    assert record.reason == "shadow checked" and "(key:" in record.actor  # who: the operator key's id
    assert agree(platform) == {"champion": 1.0}


def test_bluegreen_switches_all_traffic_and_back_in_one_step(platform: Platform) -> None:
    champion = platform.backends().registry(MODEL).alias("champion")
    green = register(platform, "same")
    deploy(platform, "bluegreen")
    versions = {call(f"{b}/v1/models/{MODEL}")[1]["versions"][0]["version"] for b in platform.bases}
    assert {a["predictions"][0]["version"] for _, a in send(platform, orders(platform), 12)} == {champion}
    from loopwise.rollout.policy import analyse as analyse_once

    backends = platform.backends()
    analyse_once(backends.events(), backends.lake(), SPEC, platform.settings.rollout.policy(MODEL),
                 backends.registry(MODEL))  # blue/green's first tick: the switch
    assert agree(platform) == {"champion": 0.0, "challenger": 1.0}
    assert {a["predictions"][0]["version"] for _, a in send(platform, orders(platform), 12)} == {green}
    denied = call(f"{platform.bases[0]}/v1/models/{MODEL}/rollout:rollback", {"reason": "no key"})
    assert denied[0] == 401, denied
    request = {"reason": "green looks wrong"}
    import urllib.request

    req = urllib.request.Request(f"{platform.bases[0]}/v1/models/{MODEL}/rollout:rollback", json.dumps(request).encode(),
                                 {"Content-Type": "application/json", "X-API-Key": platform.operator_key})
    with urllib.request.urlopen(req, timeout=60) as response:
        state = json.loads(response.read())
    assert state["rollout"]["status"] == "rolled_back"
    assert agree(platform) == {"champion": 1.0}
    assert {a["predictions"][0]["version"] for _, a in send(platform, orders(platform), 12)} == {champion}
    assert versions  # green was loaded beside blue before any traffic moved


def test_ab_assignment_through_the_service_is_sticky_per_customer(platform: Platform) -> None:
    register(platform, "same")
    backends = platform.backends()
    from loopwise.rollout.policy import deploy as deploy_version

    policy = platform.settings.rollout.policy(MODEL).model_copy(update={
        "strategy": "ab", "ab": {"metric": "refunded", "baseline_rate": 0.1, "minimum_detectable_effect": 0.05}})
    deploy_version(backends.events(), backends.registry(MODEL), MODEL, policy, actor="tests", reason="ab")
    agree(platform)
    instances = orders(platform)[:200]  # ~150 customers, some with several orders: enough to see a split's balance
    by_customer: dict[str, set[str]] = {}
    for instance in instances:
        got = [call(f"{b}/v1/models/{MODEL}:predict", {"instances": [instance]})[1] for b in platform.bases]
        by_customer.setdefault(instance["customer_id"], set()).update(g["predictions"][0]["arm"] for g in got)
    assert any(sum(i["customer_id"] == c for i in instances) > 1 for c in by_customer), "no customer came back"
    assert all(len(a) == 1 for a in by_customer.values()), "a customer met both arms"
    share = sum(a == {"challenger"} for a in by_customer.values()) / len(by_customer)
    assert 0.3 < share < 0.7, share


def test_served_traffic_is_checked_for_drift_and_a_drifted_day_requests_one_retrain(
        platform: Platform, built: Built, monkeypatch: pytest.MonkeyPatch) -> None:
    """The closed loop's checks on real served traffic: a baseline of the champion's first answers, no drift on more
    of the same, drift once the requests shift, and one retrain of the model's chain, recorded with its evidence."""
    import random
    from datetime import UTC, datetime

    import dagster as dg
    from loopwise.monitoring.retrain import RETRAIN_REQUESTED

    from assets import ALL_ASSETS
    from assets.models import keys
    from assets.monitoring import monitoring_keys
    from resources import build_resources
    from sensors.monitoring import CHAIN, retrain_requests

    spec = USE_CASE.model("ticket-escalation")  # untouched by the rollouts above
    monkeypatch.setenv("LOOPWISE__MONITORING__BASELINE_ROWS", "60")
    rows = Lake(platform.settings.lake_uri).table(spec.training_table).read().to_pylist()
    random.Random(3).shuffle(rows)
    normal = [{f: r[f] for f in spec.request.model_fields} for r in rows]  # type: ignore[union-attr]
    # New customers (no history: every feature missing), all on chat, about a topic the model never saw.
    shifted = [{**r, "customer_id": f"NEW{i:06d}", "channel": "chat",
                "text": f"Subscription fee charged twice on my plan {i}, cancel the renewal"} for i, r in enumerate(normal)]
    resources = build_resources(platform.settings, USE_CASE)
    m = monitoring_keys(spec)
    day = datetime.now(UTC).date().isoformat()

    def served(instances: list[dict]) -> None:
        before = logged(platform)
        for i, instance in enumerate(instances):
            assert call(f"{platform.bases[i % 2]}/v1/models/{spec.name}:predict", {"instances": [instance]})[0] == 200
        deadline = time.monotonic() + 30
        while logged(platform) < before + len(instances) and time.monotonic() < deadline:
            time.sleep(0.2)

    def check(instance: dg.DagsterInstance) -> dict:
        result = dg.materialize(ALL_ASSETS, selection=[m["drift_report"], m["model_performance"]], partition_key=day,
                                instance=instance, resources=resources)
        assert result.success
        return platform.backends().events().read(kind="drift.checked", subject=f"drift:{spec.name}")[-1].payload

    with dg.instance_for_test() as instance:
        served(normal[:140])
        assert dg.materialize(ALL_ASSETS, selection=[m["reference_profile"]], instance=instance,
                              resources=resources).success
        calm = check(instance)
        assert not calm["drifted"] and calm["rows"] == 80, calm  # the 80 answers after the 60 of the baseline
        served(shifted[:150])
        drifted = check(instance)
        assert drifted["drifted"], drifted
        flagged = {c["name"] for c in drifted["columns"] if c["drifted"]}
        assert {"channel", "text"} <= flagged and drifted["share_drifted"] >= 0.5, drifted
        performance = platform.backends().events().read(kind="performance.checked")[-1].payload
        assert performance["model"] == spec.name and performance["versions"][0]["answered"] >= 290

        context = dg.build_sensor_context(instance=built.instance)
        requests = retrain_requests(context, resources["lake"], resources["events"], datetime.now(UTC))
        mine = [r for r in requests if r.tags["loopwise/model"] == spec.name]
        assert len(mine) == 1 and mine[0].tags["loopwise/retrain"] == "drift"
        assert set(mine[0].asset_selection) == {keys(spec)[step] for step in CHAIN}
        decision = platform.backends().events().read(kind=RETRAIN_REQUESTED, subject=f"monitoring:{spec.name}")[-1]
        assert decision.payload["evidence"]["drifted_columns"] and decision.payload["run_key"] == mine[0].run_key
        again = retrain_requests(context, resources["lake"], resources["events"], datetime.now(UTC))
        assert not [r for r in again if r.tags["loopwise/model"] == spec.name], "one retrain per drift episode"
