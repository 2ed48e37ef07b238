"""Feast's feature-server protocol served by Loopwise: Feast's own SDK reads and writes through it unchanged.

A real uvicorn server (two workers where writes are checked) on loopback serves a minimal app with the feature
router over the session's built store; Feast's SDK, configured with `online_store: type: remote`, must get what
reading the store directly gives.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from fastapi import Request  # at module level: FastAPI resolves a dependency's string annotations here

REPO = Path(__file__).resolve().parent.parent
FEATURE_REPO = REPO / "feature_repo"
NOT_STALE = timedelta(days=36500)  # the built store's values date from its landed days, long before now
STRICT = timedelta(hours=1)  # mounted under /strict: every built value is older than this
FEATURES = ["customer_orders:orders_30d", "customer_support:share_chat_30d", "customer_orders:refund_rate_90d",
            "customer_support:escalation_rate_90d", "customer_orders:tenure_days"]
ORDER_FEATURES = ["orders_7d", "orders_30d", "orders_90d", "amount_eur_sum_30d", "amount_eur_sum_90d",
                  "amount_eur_mean_90d", "refund_rate_90d", "cancel_rate_90d", "days_since_last_order", "tenure_days"]


def serving_app() -> Any:
    """The app each uvicorn worker builds (`--factory`): the feature router over FEATURE_SERVER_TEST_FEAST, twice."""
    from fastapi import FastAPI
    from loopwise.features.store import FeastLocation, feature_store
    from loopwise.serving.feature_server import feature_router

    location = FeastLocation(FEATURE_REPO, Path(os.environ["FEATURE_SERVER_TEST_FEAST"]))
    app = FastAPI()
    app.include_router(feature_router(lambda: feature_store(location), NOT_STALE))
    app.include_router(feature_router(lambda: feature_store(location), STRICT), prefix="/strict")
    return app


@dataclass
class Server:
    url: str
    feast_dir: Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def launch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Starts `uvicorn tests.test_feature_server:serving_app` over a Feast folder; stops every one at the end."""
    started: list[subprocess.Popen[bytes]] = []

    def start(feast_dir: Path, workers: int = 1) -> Server:
        port = _free_port()
        log = tmp_path_factory.mktemp("uvicorn") / "server.log"
        env = {**os.environ, "FEATURE_SERVER_TEST_FEAST": str(feast_dir)}
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "tests.test_feature_server:serving_app", "--factory",
                 "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers), "--log-level", "warning"],
                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        started.append(process)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert process.poll() is None, log.read_text()
            try:
                if requests.get(f"{url}/health", timeout=2).status_code == 200:
                    return Server(url, feast_dir)
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"uvicorn did not answer on {url}:\n{log.read_text()}")

    yield start
    for process in started:
        os.killpg(process.pid, signal.SIGTERM)  # its own session: uvicorn and the workers it spawned
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def served(built: Any, launch: Any) -> Server:
    """The built store, read only."""
    return launch(built.settings.paths.feast)


@pytest.fixture(scope="module")
def store(built: Any) -> Any:
    from loopwise.backends import Backends

    return Backends(built.settings).feature_store()


@pytest.fixture(scope="module")
def customers(built: Any) -> list[str]:
    """Real customers (from a training set), an unknown one, and one twice."""
    from loopwise.backends import Backends

    ids = sorted(set(Backends(built.settings).lake().table("training_set_order_refund_risk").read()
                     .column("customer_id").to_pylist()))
    return [*ids[:6], "C999999", ids[0]]


def remote_client(tmp_path: Path, feast_dir: Path, url: str) -> Any:
    """Feast's SDK as an existing client configures it: a feature_store.yaml naming a remote online store."""
    from feast import FeatureStore

    (tmp_path / "feature_store.yaml").write_text(
        f"project: loopwise\nprovider: local\nregistry: {feast_dir / 'registry.db'}\n"
        f"online_store:\n  type: remote\n  path: {url}\nentity_key_serialization_version: 3\n")
    return FeatureStore(repo_path=str(tmp_path))


def feast_error(response: requests.Response) -> dict[str, str]:
    """Feast's error body: a JSON string that holds module, class and message."""
    return json.loads(response.json())  # type: ignore[no-any-return]


def columns(payload: dict[str, Any]) -> dict[str, dict[str, list[Any]]]:
    return dict(zip(payload["metadata"]["feature_names"], payload["results"], strict=True))


# -- reads: Feast's SDK through Loopwise gets what the store holds ------------------------------------------

@pytest.mark.parametrize("full_feature_names", [False, True])
@pytest.mark.parametrize("what", ["escalation_v1", "refund_v1", "features"])
def test_feast_sdk_reads_through_loopwise_what_the_store_holds(served: Server, store: Any, customers: list[str],
                                                               tmp_path: Path, what: str,
                                                               full_feature_names: bool) -> None:
    client = remote_client(tmp_path, served.feast_dir, served.url)
    rows = [{"customer_id": c} for c in customers]
    through = client.get_online_features(
        features=FEATURES if what == "features" else client.get_feature_service(what),
        entity_rows=rows, full_feature_names=full_feature_names).to_dict()
    direct = store.get_online_features(
        features=FEATURES if what == "features" else store.get_feature_service(what),
        entity_rows=rows, full_feature_names=full_feature_names).to_dict()
    assert through == direct
    assert through["customer_id"] == customers
    unknown = customers.index("C999999")
    feature_columns = [name for name in through if name != "customer_id"]
    assert all(through[name][unknown] is None for name in feature_columns)
    assert any(through[name][0] is not None for name in feature_columns)  # the known customers have values
    if full_feature_names:
        assert all("__" in name for name in feature_columns)


def test_the_response_is_feasts_own_servers(served: Server, store: Any, customers: list[str]) -> None:
    """Same names, values and event times as `feast serve`'s app; statuses too, except that a stored null is
    NULL_VALUE here where Feast's Python server says PRESENT."""
    from fastapi.testclient import TestClient
    from feast.feature_server import get_app

    feast = TestClient(get_app(store), raise_server_exceptions=False)
    for body in [{"feature_service": "escalation_v1", "entities": {"customer_id": customers}},
                 {"features": FEATURES, "entities": {"customer_id": customers}, "full_feature_names": True,
                  "include_feature_view_version_metadata": True}]:
        ours, theirs = requests.post(f"{served.url}/get-online-features", json=body).json(), \
            feast.post("/get-online-features", json=body).json()
        assert ours["metadata"]["feature_names"][0] == "customer_id"  # entity keys first
        assert ours.get("metadata", {}).get("feature_view_metadata") == \
            theirs.get("metadata", {}).get("feature_view_metadata")
        ours_columns, theirs_columns = columns(ours), columns(theirs)
        assert set(ours_columns) == set(theirs_columns)
        for name, theirs_column in theirs_columns.items():
            column = ours_columns[name]
            assert column["values"] == theirs_column["values"], name
            assert column["event_timestamps"] == theirs_column["event_timestamps"], name
            assert [("PRESENT" if s == "NULL_VALUE" else s) for s in column["statuses"]] == theirs_column["statuses"]
            assert all(v is None for v, s in zip(column["values"], column["statuses"], strict=True)
                       if s == "NULL_VALUE")
    for body in [{"feature_service": "nope", "entities": {"customer_id": ["C1"]}},
                 {"features": ["nope:x"], "entities": {"customer_id": ["C1"]}}]:
        ours_error = requests.post(f"{served.url}/get-online-features", json=body)
        theirs_error = feast.post("/get-online-features", json=body)
        assert ours_error.status_code == theirs_error.status_code == 404
        assert feast_error(ours_error)["class"] == feast_error(theirs_error)["class"]


def test_features_come_in_request_order_entities_first(served: Server, customers: list[str]) -> None:
    body = {"features": FEATURES, "entities": {"customer_id": customers[:2]}}
    names = requests.post(f"{served.url}/get-online-features", json=body).json()["metadata"]["feature_names"]
    # Feast groups by feature view (first seen first); within a view, the request's order.
    assert names == ["customer_id", "orders_30d", "refund_rate_90d", "tenure_days", "share_chat_30d",
                     "escalation_rate_90d"]


def test_statuses_present_not_found_null_and_outside_max_age(served: Server, customers: list[str]) -> None:
    body = {"feature_service": "escalation_v1", "entities": {"customer_id": customers}}
    fresh = columns(requests.post(f"{served.url}/get-online-features", json=body).json())
    unknown = customers.index("C999999")
    statuses = {s for name, c in fresh.items() if name != "customer_id" for s in c["statuses"]}
    assert statuses <= {"PRESENT", "NOT_FOUND", "NULL_VALUE"}
    assert {"PRESENT", "NOT_FOUND"} <= statuses
    assert fresh["customer_id"]["statuses"] == ["PRESENT"] * len(customers)
    assert fresh["customer_id"]["event_timestamps"] == ["1970-01-01T00:00:00Z"] * len(customers)
    for name, column in fresh.items():
        if name == "customer_id":
            continue
        assert column["statuses"][unknown] == "NOT_FOUND"
        assert column["event_timestamps"][unknown] == "1970-01-01T00:00:00Z"
        for value, status, stamp in zip(column["values"], column["statuses"], column["event_timestamps"], strict=True):
            assert (value is None) == (status in ("NOT_FOUND", "NULL_VALUE")), name
            if status != "NOT_FOUND":
                assert stamp.endswith("T00:00:00Z") and not stamp.startswith("1970")  # end of a landed day
    strict = columns(requests.post(f"{served.url}/strict/get-online-features", json=body).json())
    for name, column in strict.items():
        if name == "customer_id":
            continue
        expected = ["NOT_FOUND" if s == "NOT_FOUND" else "OUTSIDE_MAX_AGE" for s in fresh[name]["statuses"]]
        assert column["statuses"] == expected, name
        assert column["values"] == fresh[name]["values"], name  # an old value is still returned, marked


@pytest.mark.parametrize("service", ["refund_v1", "escalation_v1"])
def test_the_in_process_read_gives_what_feasts_sdk_gives(store: Any, customers: list[str], service: str) -> None:
    """The predict routes read a wave of requests' features through the same fast read: values and statuses (present,
    missing, stale) exactly as `online_features` reads them through Feast's SDK, an unknown entity included."""
    import asyncio

    from loopwise.features.retrieval import Status, online_features
    from loopwise.serving.feature_server import OnlineReader

    reader = OnlineReader(lambda: store)
    rows = [{"customer_id": c} for c in customers]
    for stale_after in (NOT_STALE, STRICT):
        fast = asyncio.run(reader.entity_features(service, rows, stale_after))
        sdk = online_features(store, service, rows, stale_after)
        assert [(f.key, f.values) for f in fast] == [(f.key, f.values) for f in sdk]
        unknown = fast[customers.index("C999999")]
        assert {v.status for v in unknown.values.values()} == {Status.MISSING}
        statuses = {v.status for f in fast for v in f.values.values()}
        assert Status.STALE in statuses if stale_after == STRICT else Status.PRESENT in statuses


def test_stored_nulls_are_null_value(served: Server, built: Any) -> None:
    import sqlite3

    from feast.infra.key_encoding_utils import deserialize_entity_key

    conn = sqlite3.connect(f"{(built.settings.paths.feast / 'online.db').as_uri()}?mode=ro", uri=True)
    found = conn.execute("SELECT entity_key, feature_name FROM loopwise_customer_support WHERE length(value) = 0 "
                         "LIMIT 1").fetchone()
    conn.close()
    if found is None:
        pytest.skip("the built store holds no null feature value")
    customer = deserialize_entity_key(found[0], 3).entity_values[0].string_val
    body = {"features": [f"customer_support:{found[1]}"], "entities": {"customer_id": [customer]}}
    column = requests.post(f"{served.url}/get-online-features", json=body).json()["results"][1]
    assert (column["values"], column["statuses"]) == ([None], ["NULL_VALUE"])


# -- bad input: a 4xx naming the field, in Feast's error body ------------------------------------------------

@pytest.mark.parametrize(("body", "status", "feast_class", "names"), [
    ({"feature_service": "nope", "entities": {"customer_id": ["C1"]}}, 404, "FeatureServiceNotFoundException",
     ["feature_service", "nope", "escalation_v1"]),
    ({"features": ["nope:orders_7d"], "entities": {"customer_id": ["C1"]}}, 404, "FeatureViewNotFoundException",
     ["features[0]", "nope", "customer_orders"]),
    ({"features": ["customer_orders:orders_7d", "customer_orders:nope"], "entities": {"customer_id": ["C1"]}}, 404,
     "FeastObjectNotFoundException", ["features[1]", "nope", "orders_7d"]),
    ({"features": ["orders_7d"], "entities": {"customer_id": ["C1"]}}, 422, "FeastError", ["features[0]"]),
    ({"entities": {"customer_id": ["C1"]}}, 422, "FeastError", ["feature_service", "features"]),
    ({"features": "customer_orders:orders_7d", "entities": {"customer_id": ["C1"]}}, 422, "FeastError",
     ["features must be a list"]),
    ({"feature_service": "refund_v1", "entities": {"order_id": ["O1"]}}, 422, "FeastError",
     ["entities", "customer_id"]),
    ({"feature_service": "refund_v1", "entities": {"customer_id": ["C1", "C2"], "order_id": ["O1"]}}, 422,
     "FeastError", ["entities", "unequal", "customer_id: 2", "order_id: 1"]),
    ({"feature_service": "refund_v1", "entities": {"customer_id": ["C1", 7]}}, 422, "FeastError",
     ["entities.customer_id[1]", "STRING"]),
    ({"feature_service": "refund_v1", "entities": {"customer_id": "C1"}}, 422, "FeastError", ["entities.customer_id"]),
    ({"feature_service": "refund_v1", "entities": {"customer_id": []}}, 422, "FeastError", ["entities"]),
    ({"feature_service": "refund_v1", "entities": ["C1"]}, 422, "FeastError", ["entities"]),
    ({"feature_service": "refund_v1", "entities": {"customer_id": ["C1"]}, "full_feature_names": "yes"}, 422,
     "FeastError", ["full_feature_names"]),
    ({"feature_service": 3, "entities": {"customer_id": ["C1"]}}, 422, "FeastError", ["feature_service"]),
    ("not json", 422, "FeastError", ["JSON"]),
    ([1, 2], 422, "FeastError", ["object"]),
])
def test_bad_requests_get_a_4xx_naming_the_field(served: Server, body: Any, status: int, feast_class: str,
                                                  names: list[str]) -> None:
    data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    response = requests.post(f"{served.url}/get-online-features", data=data,
                             headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    error = feast_error(response)
    assert (error["module"], error["class"]) == ("feast.errors", feast_class)
    for name in names:
        assert name in error["message"], error["message"]


def test_feast_sdk_raises_feasts_own_exception(served: Server, tmp_path: Path) -> None:
    from feast.errors import FeatureViewNotFoundException

    client = remote_client(tmp_path, served.feast_dir, served.url)
    with pytest.raises(FeatureViewNotFoundException, match="no feature view named 'nope'"):
        client.get_online_features(features=["nope:x"], entity_rows=[{"customer_id": "C1"}])


def test_health(served: Server) -> None:
    assert requests.get(f"{served.url}/health").status_code == 200
    assert requests.get(f"{served.url}/strict/health").status_code == 200


# -- writes: push and write-to-online-store, seen by every worker ----------------------------------------------

@pytest.fixture(scope="module")
def writable(built: Any, launch: Any, tmp_path_factory: pytest.TempPathFactory) -> Server:
    """A copy of the built registry and online store, served by two workers (the built store is read-only)."""
    feast_dir = tmp_path_factory.mktemp("writable") / "feast"
    feast_dir.mkdir()
    for name in ("registry.db", "online.db"):
        shutil.copy(built.settings.paths.feast / name, feast_dir / name)
    return launch(feast_dir, workers=2)


def _local_store(feast_dir: Path) -> Any:
    from loopwise.features.store import FeastLocation, feature_store

    return feature_store(FeastLocation(FEATURE_REPO, feast_dir))


def _order_rows(customers: list[str], base: int, when: datetime) -> dict[str, list[Any]]:
    rows: dict[str, list[Any]] = {"customer_id": customers}
    for i, name in enumerate(ORDER_FEATURES):
        floats = name.startswith(("amount", "refund", "cancel"))
        rows[name] = [(base + i + k) + (0.25 if floats else 0) for k in range(len(customers))]
    rows["event_timestamp"] = [when.isoformat()] * len(customers)
    return rows


def _read_everywhere(url: str, customers: list[str], times: int = 12) -> list[dict[str, Any]]:
    """The same read on fresh connections, so that both workers answer some."""
    body = {"features": [f"customer_orders:{f}" for f in ORDER_FEATURES], "entities": {"customer_id": customers}}
    answers = []
    for _ in range(times):
        with requests.Session() as session:
            answers.append(columns(session.post(f"{url}/get-online-features", json=body).json()))
    return answers


def test_push_then_read_back_on_every_worker(writable: Server, tmp_path: Path) -> None:
    from feast.data_source import PushSource

    customers = ["C000001", "C777777"]  # a known customer and a new one
    rows = _order_rows(customers, 1000, datetime.now(UTC).replace(microsecond=0))
    push = {"push_source_name": "customer_orders_push", "df": rows, "to": "online"}
    refused = requests.post(f"{writable.url}/push", json=push)
    assert refused.status_code == 422
    assert feast_error(refused)["class"] == "PushSourceNotFoundException"
    assert "push_source_name" in feast_error(refused)["message"]

    # The registry changes under the running workers: a push source for customer_orders.
    admin = _local_store(writable.feast_dir)
    view = admin.get_feature_view("customer_orders")
    source = PushSource(name="customer_orders_push", batch_source=view.batch_source)
    view.stream_source = source
    admin.apply([source, view])

    assert requests.post(f"{writable.url}/push", json=push).status_code == 200
    for answer in _read_everywhere(writable.url, customers):
        assert answer["orders_7d"]["values"] == [1000, 1001]
        assert answer["amount_eur_sum_30d"]["values"] == [1003.25, 1004.25]
        assert answer["orders_7d"]["statuses"] == ["PRESENT", "PRESENT"]
        assert answer["orders_7d"]["event_timestamps"] == [rows["event_timestamp"][0][:19] + "Z"] * 2
    direct = _local_store(writable.feast_dir).get_online_features(
        features=["customer_orders:orders_90d"], entity_rows=[{"customer_id": c} for c in customers]).to_dict()
    assert direct["orders_90d"] == [1002, 1003]
    client = remote_client(tmp_path, writable.feast_dir, writable.url)
    through = client.get_online_features(features=["customer_orders:orders_90d"],
                                         entity_rows=[{"customer_id": c} for c in customers]).to_dict()
    assert through == direct

    offline = requests.post(f"{writable.url}/push", json={**push, "to": "offline"})
    assert offline.status_code == 422
    assert feast_error(offline)["message"].startswith('to: "offline" is not supported: the offline store')
    bad_to = requests.post(f"{writable.url}/push", json={**push, "to": "somewhere"})
    assert bad_to.status_code == 422 and "to must be one of" in feast_error(bad_to)["message"]
    missing = {**push, "df": {k: v for k, v in rows.items() if k != "tenure_days"}}
    answer = requests.post(f"{writable.url}/push", json=missing)
    assert answer.status_code == 422 and "tenure_days" in feast_error(answer)["message"]


def test_write_to_online_store_from_feasts_sdk(writable: Server, tmp_path: Path) -> None:
    import pandas as pd

    client = remote_client(tmp_path, writable.feast_dir, writable.url)
    customers = ["C000002", "C888888"]
    rows = _order_rows(customers, 500, datetime.now(UTC).replace(microsecond=0, tzinfo=None))
    frame = pd.DataFrame({**rows, "event_timestamp": pd.to_datetime(rows["event_timestamp"])})
    client.write_to_online_store("customer_orders", frame)  # RemoteOnlineStore posts /write-to-online-store
    for answer in _read_everywhere(writable.url, customers):
        assert answer["orders_30d"]["values"] == [501, 502]
        assert answer["refund_rate_90d"]["values"] == [506.25, 507.25]

    plain = {"feature_view_name": "customer_orders", "df": {**rows, "orders_7d": [7, 8]}}
    assert requests.post(f"{writable.url}/write-to-online-store", json=plain).status_code == 200
    assert _read_everywhere(writable.url, customers, times=2)[-1]["orders_7d"]["values"] == [7, 8]

    unknown = requests.post(f"{writable.url}/write-to-online-store", json={**plain, "feature_view_name": "nope"})
    assert unknown.status_code == 404 and "feature_view_name" in feast_error(unknown)["message"]
    wrong_type = requests.post(f"{writable.url}/write-to-online-store",
                               json={**plain, "df": {**plain["df"], "orders_7d": ["many", "few"]}})
    assert wrong_type.status_code == 422 and feast_error(wrong_type)["message"].startswith("df")
    uneven = requests.post(f"{writable.url}/write-to-online-store",
                           json={**plain, "df": {**plain["df"], "orders_7d": [1]}})
    assert uneven.status_code == 422 and "unequal" in feast_error(uneven)["message"]


# -- other online stores and requests Feast resolves itself --------------------------------------------------

def _in_process(feature_store_: Any) -> Any:
    """The router in-process (no `with`: its warm-up and gc.freeze stay out of the test process)."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient
    from loopwise.serving.feature_server import feature_router

    app = FastAPI()
    app.include_router(feature_router(lambda: feature_store_, NOT_STALE))
    return TestClient(app)


def _copied(built: Any, tmp_path: Path, **location: Any) -> Any:
    from loopwise.features.store import FeastLocation, feature_store

    feast_dir = tmp_path / "feast"
    feast_dir.mkdir(parents=True)
    for name in ("registry.db", "online.db"):
        shutil.copy(built.settings.paths.feast / name, feast_dir / name)
    return feature_store(FeastLocation(FEATURE_REPO, feast_dir, **location))


def test_a_redis_online_store_answers_as_feast_does(built: Any, redis_url: str, tmp_path: Path) -> None:
    """Redis (prod) is read through its own online_read with the cached resolution: the same answer as Feast's."""
    import pandas as pd
    from fastapi.testclient import TestClient
    from feast.feature_server import get_app

    redis_store = _copied(built, tmp_path, online_store="redis", redis_url=redis_url)
    customers = ["FS-REDIS-1", "FS-REDIS-2"]  # ids of this test only: the Redis server is shared
    rows = _order_rows(customers, 40, datetime(2026, 3, 5, tzinfo=UTC))
    redis_store.write_to_online_store("customer_orders", pd.DataFrame(
        {**rows, "event_timestamp": pd.to_datetime(rows["event_timestamp"])}))
    body = {"feature_service": "escalation_v1", "entities": {"customer_id": [*customers, "FS-REDIS-none"]},
            "full_feature_names": True}
    ours = columns(_in_process(redis_store).post("/get-online-features", json=body).json())
    theirs = columns(TestClient(get_app(redis_store)).post("/get-online-features", json=body).json())
    assert set(ours) == set(theirs)
    for name, column in theirs.items():
        assert ours[name]["values"] == column["values"] and ours[name]["event_timestamps"] == column["event_timestamps"]
        # Feast's Redis read answers an unknown entity PRESENT with a null and no event time: NOT_FOUND here.
        expected = [("NOT_FOUND" if t.startswith("1970") else "NULL_VALUE") if s == "PRESENT" and v is None else s
                    for v, s, t in zip(column["values"], column["statuses"], column["event_timestamps"], strict=True)]
        assert ours[name]["statuses"] == (column["statuses"] if name == "customer_id" else expected), name
    assert ours["customer_orders__orders_7d"]["values"] == [40, 41, None]
    assert ours["customer_orders__orders_7d"]["statuses"] == ["PRESENT", "PRESENT", "NOT_FOUND"]
    assert ours["customer_support__tickets_7d"]["statuses"] == ["NOT_FOUND"] * 3


def test_on_demand_views_are_served_through_feasts_own_path(built: Any, tmp_path: Path,
                                                           customers: list[str]) -> None:
    from feast import Field
    from feast.on_demand_feature_view import on_demand_feature_view
    from feast.types import Float64

    local = _copied(built, tmp_path)
    orders = local.get_feature_view("customer_orders")

    @on_demand_feature_view(sources=[orders], schema=[Field(name="spend_per_order_30d", dtype=Float64)],
                            mode="python")
    def order_value(inputs: dict[str, Any]) -> dict[str, Any]:
        return {"spend_per_order_30d": [a / n if n else None for a, n in
                                        zip(inputs["amount_eur_sum_30d"], inputs["orders_30d"], strict=True)]}

    local.apply([order_value])
    features = ["customer_orders:orders_30d", "order_value:spend_per_order_30d"]
    answer = _in_process(local).post("/get-online-features", json={
        "features": features, "entities": {"customer_id": customers}}).json()
    direct = local.get_online_features(features=features,
                                       entity_rows=[{"customer_id": c} for c in customers]).to_dict()
    assert {name: column["values"] for name, column in columns(answer).items()} == direct
    assert any(v is not None for v in direct["spend_per_order_30d"])


def test_a_replaced_online_store_file_is_read_anew(built: Any, tmp_path: Path) -> None:
    import pandas as pd

    local = _copied(built, tmp_path / "served")
    client = _in_process(local)
    body = {"features": ["customer_orders:orders_7d"], "entities": {"customer_id": ["C777001"]}}
    assert client.post("/get-online-features", json=body).json()["results"][1]["statuses"] == ["NOT_FOUND"]
    other = _copied(built, tmp_path / "other")
    rows = _order_rows(["C777001"], 70, datetime(2026, 3, 5, tzinfo=UTC))
    other.write_to_online_store("customer_orders", pd.DataFrame(
        {**rows, "event_timestamp": pd.to_datetime(rows["event_timestamp"])}))
    os.replace(Path(other.config.online_store.path), Path(local.config.online_store.path))  # a new file, same path
    assert client.post("/get-online-features", json=body).json()["results"][1]["values"] == [70]


# -- the pieces: Feast's bytes, and dependencies of an including app -----------------------------------------

def test_stored_values_decode_as_feasts_server_writes_them() -> None:
    from feast.feature_server_utils import _value_to_native
    from feast.protos.feast.types.Value_pb2 import BoolList, DoubleList, StringList, Value
    from loopwise.serving.feature_server import decode_value

    values = [Value()] + [Value(int64_val=v) for v in (0, 1, 127, 128, 300, 2**31, 2**63 - 1, -1, -300, -(2**63))]
    values += [Value(int32_val=v) for v in (0, 5, 2**31 - 1, -1, -(2**31))]
    values += [Value(double_val=v) for v in (0.0, -0.0, 0.1, 1e300, -2.5, float("inf"), float("-inf"), float("nan"))]
    values += [Value(float_val=v) for v in (0.1, -3.5, float("inf"))]
    values += [Value(bool_val=v) for v in (True, False)]
    values += [Value(string_val=v) for v in ("", "C000001", "Grüße, 包裹", "x" * 300)]
    values += [Value(bytes_val=b"\x00\xff"), Value(double_list_val=DoubleList(val=[1.5, 2.0])),
               Value(string_list_val=StringList(val=["a"])), Value(bool_list_val=BoolList(val=[True]))]
    for value in values:
        expected = _value_to_native(value)
        assert decode_value(value.SerializeToString()) == expected, value  # NaN and infinities as strings
        kind = value.WhichOneof("val")
        sdk = getattr(value, kind) if kind and kind != "null_val" else None  # as Feast's SDK response holds it
        native = decode_value(value.SerializeToString(), json_safe=False)
        assert repr(native) == repr(sdk), value  # NaN stays a float (repr: nan == nan is False)


@pytest.mark.parametrize(("join_keys", "types", "row"), [
    (("customer_id",), {"customer_id": "STRING"}, ("C000001",)),
    (("customer_id",), {"customer_id": "STRING"}, ("Zoë-42",)),
    (("account",), {"account": "INT64"}, (-(2**40),)),
    (("store",), {"store": "INT32"}, (7,)),
    (("store", "customer_id"), {"store": "INT32", "customer_id": "STRING"}, (3, "c")),
    (("b_key", "a_key"), {"a_key": "INT64", "b_key": "STRING"}, ("x", 2**40)),
])
def test_entity_keys_are_feasts_serialization(join_keys: tuple[str, ...], types: dict[str, str],
                                              row: tuple[Any, ...]) -> None:
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value
    from loopwise.serving.feature_server import entity_key_encoder

    slot = {"STRING": "string_val", "INT64": "int64_val", "INT32": "int32_val"}
    expected = serialize_entity_key(EntityKey(join_keys=list(join_keys), entity_values=[
        Value(**{slot[types[k]]: v}) for k, v in zip(join_keys, row, strict=True)]), 3)
    assert entity_key_encoder(join_keys, types)(row) == expected


def test_dependencies_of_the_including_app_still_run(store: Any, customers: list[str]) -> None:
    """The endpoints skip FastAPI's request handler only where no dependency applies: access control added by
    `include_router(dependencies=...)` always runs, and `write_dependencies` guards the writes only."""
    from fastapi import Depends, FastAPI, HTTPException
    from fastapi.testclient import TestClient
    from loopwise.serving.feature_server import feature_router

    def key_required(request: Request) -> None:
        if request.headers.get("X-API-Key") != "let-me-in":
            raise HTTPException(401, "an API key is required")

    guarded, open_app = FastAPI(), FastAPI()
    guarded.include_router(feature_router(lambda: store, NOT_STALE), dependencies=[Depends(key_required)])
    open_app.include_router(feature_router(lambda: store, NOT_STALE))
    body = {"feature_service": "refund_v1", "entities": {"customer_id": customers[:1]}}
    # No `with`: the router's warm-up (and its gc.freeze) stays out of the test process.
    assert TestClient(guarded).post("/get-online-features", json=body).status_code == 401
    assert TestClient(guarded).post("/push", json={}).status_code == 401
    assert TestClient(guarded).post("/get-online-features", json=body,
                                    headers={"X-API-Key": "let-me-in"}).status_code == 200
    assert TestClient(open_app).post("/get-online-features", json=body).status_code == 200

    writes_guarded = FastAPI()
    writes_guarded.include_router(feature_router(lambda: store, NOT_STALE,
                                                 write_dependencies=[Depends(key_required)]))
    client = TestClient(writes_guarded)
    assert client.post("/get-online-features", json=body).status_code == 200
    assert client.post("/push", json={"push_source_name": "x", "df": {"a": [1]}}).status_code == 401
    assert client.post("/write-to-online-store", json={}).status_code == 401
    answer = client.post("/write-to-online-store", json={}, headers={"X-API-Key": "let-me-in"})
    assert answer.status_code == 422 and "feature_view_name" in feast_error(answer)["message"]  # past the guard
