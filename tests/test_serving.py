"""`loopwise serve` on loopback over the platform built for the session: KServe v1 predictions for every
declared model, metadata, health and readiness, metrics, 4xx for bad input, and a prediction log that
holds exactly the answers the clients received, across a SIGKILL and a graceful restart."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from loopwise.lake.tables import Lake
from supportdesk import USE_CASE

from tests.conftest import Built
from tests.services import child_env, free_port, server_process, wait_ready

ROOT = Path(__file__).resolve().parent.parent
LOOPWISE = str(Path(sys.executable).parent / "loopwise")


def call(url: str, body: object | None = None, method: str | None = None, raw: bytes | None = None) -> tuple[int, dict]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            text = response.read().decode()
            return response.status, json.loads(text) if text.startswith(("{", "[")) else {"text": text}
    except urllib.error.HTTPError as error:
        text = error.read().decode()
        return error.code, json.loads(text) if text.startswith("{") else {"text": text}


@contextmanager
def serve(built: Built, port: int, workers: int = 1) -> Iterator[subprocess.Popen]:
    log = built.settings.paths.root / f"serve-{port}.log"
    with server_process([LOOPWISE, "serve", "--port", str(port), "--workers", str(workers)], log,
                        child_env(**built.env)) as proc:
        wait_ready(f"http://127.0.0.1:{port}", proc, log)
        yield proc


def instances(built: Built) -> dict[str, list[dict]]:
    """Real instances of each model, from its own training set."""
    lake = Lake(built.settings.lake_uri)
    out = {}
    for spec in USE_CASE.models:
        rows = lake.table(spec.training_table).read().slice(0, 3).to_pylist()
        fields = list(spec.request.model_fields)  # type: ignore[union-attr]
        out[spec.name] = [{f: row[f] for f in fields} for row in rows]
    return out


def logged_request_ids(built: Built) -> list[str]:
    table = Lake(built.settings.lake_uri).table("predictions")
    return table.read().column("request_id").to_pylist() if table.exists() else []


def test_every_model_answers_on_kserve_v1_and_bad_input_gets_a_4xx(built: Built, tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    examples = instances(built)
    with serve(built, port):
        assert call(f"{base}/healthz") == (200, {"status": "alive"})
        ready = call(f"{base}/readyz")[1]
        assert ready["ready"] and set(ready["models"]) == {m.name for m in USE_CASE.models}
        for spec in USE_CASE.models:
            status, body = call(f"{base}/v1/models/{spec.name}:predict", {"instances": examples[spec.name]})
            assert status == 200, body
            predictions = body["predictions"]
            assert len(predictions) == len(examples[spec.name])
            for p in predictions:
                assert 0 <= p["score"] <= 1 and p["model"] == spec.name and p["version"] == "1"
                assert p["arm"] in ("champion", "challenger") and p["request_id"]
                assert p["feature_statuses"] and set(p["feature_statuses"].values()) <= {"present", "missing", "stale"}
            meta = call(f"{base}/v1/models/{spec.name}")[1]
            assert meta["versions"][0]["version"] == "1" and sum(meta["traffic"].values()) == 1.0
            assert meta["feature_service"] == spec.feature_service
            # An entity the store has never seen: a prediction flagged with missing features, not an error.
            unknown = {**examples[spec.name][0], "customer_id": "C-NOBODY"}
            status, body = call(f"{base}/v1/models/{spec.name}:predict", {"instances": [unknown]})
            assert status == 200 and body["predictions"][0]["missing_features"] == len(body["predictions"][0]["feature_statuses"])
        escalation = USE_CASE.models[0].name
        bad = {**examples[escalation][0], "channel": "carrier_pigeon"}
        status, body = call(f"{base}/v1/models/{escalation}:predict", {"instances": [bad]})
        assert status == 422 and "channel" in json.dumps(body)
        status, body = call(f"{base}/v1/models/{escalation}:predict", {"instances": []})
        assert status == 422 and "instances" in json.dumps(body)
        status, body = call(f"{base}/v1/models/{escalation}:predict", {"instances": [examples[escalation][0]] * 300})
        assert status == 422 and "instances" in json.dumps(body)  # over serving.max_batch
        # A body over serving.max_body_bytes is refused from its declared length, before it is read (a client
        # still sending it would meet a closed connection, so this one declares it and waits for the answer).
        import http.client

        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.putrequest("POST", f"/v1/models/{escalation}:predict")
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", "2000000")
        connection.endheaders()
        too_large = connection.getresponse()
        assert too_large.status == 413 and b"max_body_bytes" in too_large.read()
        connection.close()
        status, body = call(f"{base}/v1/models/{escalation}:predict", raw=b"{not json")
        assert status == 422
        assert call(f"{base}/v1/models/no-such-model:predict", {"instances": [{}]})[0] == 404
        assert call(f"{base}/v1/models/no-such-model")[0] == 404
        # The same service answers Feast's feature-server protocol (tests/test_feature_server.py tests it in depth).
        customer = examples[USE_CASE.models[1].name][0]["customer_id"]
        status, body = call(f"{base}/get-online-features", {"feature_service": "refund_v1",
                                                              "entities": {"customer_id": [customer, "C-NOBODY"]}})
        assert status == 200 and body["metadata"]["feature_names"][0] == "customer_id"
        assert body["results"][1]["statuses"][1] == "NOT_FOUND"
        openapi = call(f"{base}/openapi.json")[1]
        assert {f"/v1/models/{m.name}:predict" for m in USE_CASE.models} <= set(openapi["paths"])
        # Schemathesis against the published OpenAPI: every generated request (valid or not) gets no 5xx.
        fuzz = subprocess.run([str(Path(sys.executable).parent / "schemathesis"), "run", f"{base}/openapi.json",
                               "--checks", "not_a_server_error", "--max-examples", "40", "--request-timeout", "30",
                               "--exclude-path-regex", "metrics"],
                              cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=900)
        assert fuzz.returncode == 0, fuzz.stdout[-5000:] + fuzz.stderr[-2000:]
        assert re.search(r"(\d+) generated, \1 passed", fuzz.stdout), fuzz.stdout[-3000:]
        metrics = call(f"{base}/metrics")[1]["text"]
        for series in ("loopwise_requests_total", "loopwise_request_seconds_bucket", "loopwise_predictions_total",
                       "loopwise_score_bucket", "loopwise_missing_features_total", "loopwise_errors_total"):
            assert series in metrics, series


def test_the_prediction_log_holds_exactly_the_answers_given_across_a_kill_and_a_restart(built: Built) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    spec = USE_CASE.models[1]  # the tabular model: the log, not the model, is under test
    example = instances(built)[spec.name]
    before = set(logged_request_ids(built))
    answered: list[str] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            try:
                status, body = call(f"{base}/v1/models/{spec.name}:predict", {"instances": example[:2]})
            except OSError:
                continue
            if status == 200:
                answered.extend(p["request_id"] for p in body["predictions"])

    with serve(built, port) as proc:
        threads = [threading.Thread(target=client) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(4)
        os.killpg(proc.pid, signal.SIGKILL)  # under load
        proc.wait()
        stop.set()
        for t in threads:
            t.join()
    assert len(answered) > 20
    with serve(built, port):  # a restart flushes what the killed process left; then a graceful stop
        status, body = call(f"{base}/v1/models/{spec.name}:predict", {"instances": example[:1]})
        assert status == 200
        answered.extend(p["request_id"] for p in body["predictions"])
    logged = [r for r in logged_request_ids(built) if r not in before]
    assert len(logged) == len(set(logged)), "duplicate request ids in the prediction log"
    assert set(answered) <= set(logged), "an answered prediction is missing from the log"
    # The only rows beyond the answers: requests in flight at the kill, logged durably but never answered
    # (the kill fell between the log's fsync and the response), at most 4 clients x 2 instances.
    unanswered = set(logged) - set(answered)
    assert len(unanswered) <= 8, unanswered


def test_requests_of_every_version_share_one_read_and_each_scores_as_alone(built: Built) -> None:
    """Requests queued together (known and unknown customers) share one feature read, whatever version answers
    them (a canary's two arms), and one scoring per version; each gets its own entity's features and statuses,
    exactly as Feast's SDK reads them, and the score it gets alone."""
    import asyncio
    from datetime import timedelta

    from loopwise.backends import Backends
    from loopwise.features.retrieval import Status, online_features
    from loopwise.serving.feature_server import OnlineReader
    from loopwise.serving.models import Batcher, SharedRead, join_keys_of, load_version, resolve_version

    spec = USE_CASE.models[1]  # the tabular model
    backends = Backends(built.settings)
    store = backends.feature_store()
    keys = join_keys_of(store, spec.feature_service)
    loaded = load_version(built.settings.tracking_uri, spec, resolve_version(built.settings.tracking_uri, spec)[0],
                          "champion", keys)
    stale_after = timedelta(hours=built.settings.features.stale_after_hours)
    known = instances(built)[spec.name]
    batch = [known[0], {**known[1], "customer_id": "C-NOBODY"}, known[2], known[0]]
    reader, reads, scorings = OnlineReader(lambda: store), [], []

    async def read(rows: list[dict]) -> list:
        reads.append(len(rows))
        return await reader.entity_features(spec.feature_service, rows, stale_after)

    def scorer(version: str):  # type: ignore[no-untyped-def]
        def score(instances: list[dict], features: list) -> object:
            scorings.append((version, len(instances)))
            return loaded.score_instances(instances, features)
        return score

    async def queue_together() -> list:
        shared = SharedRead(read, keys, max_rows=64, wait_ms=200)
        versions = {"1": Batcher(scorer("1"), max_rows=64), "2": Batcher(scorer("2"), max_rows=64)}

        async def one(n: int, instance: dict) -> object:  # as the predict route does: read, then the arm's version
            return await versions["1" if n % 2 == 0 else "2"].submit([instance], await shared.features([instance]))
        return await asyncio.gather(*(one(n, instance) for n, instance in enumerate(batch)))

    answers = asyncio.run(queue_together())
    assert reads == [len(batch)] and sorted(scorings) == [("1", 2), ("2", 2)]
    for instance, answer in zip(batch, answers, strict=True):
        alone = online_features(store, spec.feature_service, [{k: instance[k] for k in keys}], stale_after)
        assert answer.error is None and answer.features[0].values == alone[0].values
        assert answer.scores[0] == pytest.approx(loaded.score_instances([instance], alone)[0], abs=1e-6)
    assert {v.status for v in answers[1].features[0].values.values()} == {Status.MISSING}
    assert Status.MISSING not in {v.status for v in answers[0].features[0].values.values()}


def test_a_trained_version_scores_directly_exactly_as_its_pyfunc_does(built: Built) -> None:
    """The service scores a version Loopwise trained from its columns as arrays, not through MLflow's pyfunc on a
    frame: the same scores, bit for bit, for each declared model (the text model included), with the features a
    request may meet: read, missing (an unknown customer), a null text and an unseen category."""
    from datetime import timedelta

    from loopwise.backends import Backends
    from loopwise.features.retrieval import online_features
    from loopwise.serving.models import join_keys_of, load_version, resolve_version

    backends = Backends(built.settings)
    store = backends.feature_store()
    stale_after = timedelta(hours=built.settings.features.stale_after_hours)
    for spec in USE_CASE.models:
        keys = join_keys_of(store, spec.feature_service)
        loaded = load_version(built.settings.tracking_uri, spec, resolve_version(built.settings.tracking_uri, spec)[0],
                              "champion", keys)
        assert loaded.direct is not None, f"{spec.name}: a version Loopwise trained is scored directly"
        known = instances(built)[spec.name]
        batch = [*known, {**known[0], "customer_id": "C-NOBODY"}]
        if spec.text:
            batch.append({**known[1], spec.text: None})
        for column in spec.categorical:
            batch.append({**known[2], column: "a level never seen"})
        features = online_features(store, spec.feature_service, [{k: i[k] for k in keys} for i in batch], stale_after)
        direct = loaded.score_instances(batch, features)
        through_pyfunc = loaded.score(loaded.frame(batch, features))
        assert direct.dtype == through_pyfunc.dtype and np.array_equal(direct, through_pyfunc), (spec.name, direct,
                                                                                                  through_pyfunc)
        assert len(set(direct.round(6))) > 1, f"{spec.name}: the cases score differently"


def test_a_failed_shared_read_fails_only_the_request_that_caused_it() -> None:
    """A wave's read that fails is made again request by request: a bad key fails only its own request, with the
    read's own error (a `Refused` keeps its status and message); the others get their features, and the next wave
    is served. A read that returns too few rows is the read's error, not the model's."""
    import asyncio

    from loopwise.features.retrieval import EntityFeatures
    from loopwise.serving.feature_server import Refused
    from loopwise.serving.models import SharedRead

    reads: list[list[str]] = []

    async def read(rows: list[dict]) -> list:
        reads.append([r["k"] for r in rows])
        if any(r["k"] == "bad" for r in rows):
            raise Refused(422, "entities.k: 'bad' is not a key")
        return [EntityFeatures(dict(r), {}) for r in rows if r["k"] != "short"]

    async def waves() -> tuple[list, object, object]:
        shared = SharedRead(read, ["k"], max_rows=64, wait_ms=100)
        first = await asyncio.gather(*(shared.features([{"k": k}]) for k in ("a", "bad", "b")),
                                     return_exceptions=True)
        second = await shared.features([{"k": "c"}])
        third = await asyncio.gather(shared.features([{"k": "short"}]), return_exceptions=True)
        return first, second, third[0]

    first, second, short = asyncio.run(waves())
    assert reads == [["a", "bad", "b"], ["a"], ["bad"], ["b"], ["c"], ["short"]]
    assert [f[0].key for f in (first[0], first[2])] == [{"k": "a"}, {"k": "b"}]
    assert isinstance(first[1], Refused) and first[1].status == 422 and "'bad'" in first[1].message
    assert second[0].key == {"k": "c"}  # type: ignore[index]
    assert isinstance(short, RuntimeError) and "returned 0 rows for 1" in str(short)


def test_micro_batches_of_a_version_score_in_as_many_slots_as_it_has(tmp_path: Path) -> None:
    """With two slots, a micro-batch forms and scores while another is scoring (an ONNX runtime's one thread
    leaves the other core free); with one, requests queue until the scoring ends. Each gets its own score."""
    import asyncio

    from loopwise.features.retrieval import EntityFeatures
    from loopwise.serving.models import Batcher, scoring_slots
    from loopwise.training import runtime

    scoring, peak = [0], [0]

    def score(instances: list[dict], features: list) -> object:
        import numpy as np

        scoring[0] += 1
        peak[0] = max(peak[0], scoring[0])
        time.sleep(0.2)
        scoring[0] -= 1
        return np.array([i["n"] for i in instances], dtype=float)

    async def staggered(slots: int) -> list:
        batcher = Batcher(score, max_rows=64, slots=slots)

        async def one(n: int) -> float:
            await asyncio.sleep(n * 0.05)
            return float((await batcher.submit([{"n": n}], [EntityFeatures({"n": n}, {})])).scores[0])
        return await asyncio.gather(*(one(n) for n in range(4)))

    for slots in (1, 2):
        peak[0] = 0
        assert asyncio.run(staggered(slots)) == [0.0, 1.0, 2.0, 3.0]
        assert peak[0] == slots
    cores = len(os.sched_getaffinity(0))
    try:
        runtime.use_scoring_runtime("onnx-int8", tmp_path)
        assert scoring_slots(True, 1) == cores and scoring_slots(False, 1) == 1
        runtime.use_scoring_runtime("torch")
        assert scoring_slots(True, 1) == 1  # PyTorch spreads one scoring over every core
    finally:
        runtime.use_scoring_runtime("torch")
