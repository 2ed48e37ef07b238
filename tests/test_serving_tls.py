"""`loopwise serve` on HTTPS with a self-signed certificate, end to end, and the `endpoint_observer` sensor
reading that service: one real service for the module, configured the way a user configures it (the
profile's `serving.tls_cert`, `serving.tls_key` and `serving.port` as environment overrides)."""

import http.client
import os
import ssl
from collections.abc import Iterator
from dataclasses import dataclass

import dagster as dg
import httpx
import pytest
from loopwise.serving.tls import self_signed_certificate
from supportdesk import USE_CASE

from assets.models import keys
from sensors import endpoint_observer
from tests.conftest import Built
from tests.services import child_env, free_port, server_process, wait_ready
from tests.test_serving import LOOPWISE, instances


@dataclass
class Service:
    """A running `loopwise serve` on HTTPS and what a client needs to trust it."""

    url: str
    port: int
    env: dict[str, str]  # the profile's environment, the TLS and port overrides included
    trusting: ssl.SSLContext  # trusts exactly the service's certificate

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, verify=self.trusting, timeout=60)


@pytest.fixture(scope="module")
def service(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    pair = self_signed_certificate(tmp_path_factory.mktemp("tls"))
    port = free_port()
    env = {**built.env, "LOOPWISE__SERVING__PORT": str(port),
           "LOOPWISE__SERVING__TLS_CERT": str(pair.cert), "LOOPWISE__SERVING__TLS_KEY": str(pair.key)}
    log = built.settings.paths.root / f"serve-tls-{port}.log"
    up = Service(f"https://127.0.0.1:{port}", port, env, ssl.create_default_context(cafile=str(pair.cert)))
    with server_process([LOOPWISE, "serve"], log, child_env(**env)) as proc:
        wait_ready(up.url, proc, log, context=up.trusting)
        yield up


def test_serve_answers_https_verified_against_its_certificate_and_refuses_plain_http(service: Service,
                                                                                    built: Built) -> None:
    spec = USE_CASE.models[0]
    with service.client() as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["ready"], ready.text
        answer = client.post(f"/v1/models/{spec.name}:predict", json={"instances": instances(built)[spec.name][:1]})
        assert answer.status_code == 200, answer.text
        [prediction] = answer.json()["predictions"]
        assert prediction["model"] == spec.name and 0 <= prediction["score"] <= 1
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):  # a client that does not trust it
        httpx.get(f"{service.url}/readyz", verify=ssl.create_default_context())
    with pytest.raises(httpx.HTTPError):  # plain HTTP on the TLS port gets no answer
        httpx.get(service.url.replace("https://", "http://") + "/readyz", timeout=10)


def observe(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> dg.SensorResult | dg.SkipReason:
    """One tick of the sensor, with the profile's environment it would read on the daemon."""
    for name in [n for n in os.environ if n.startswith("LOOPWISE")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with dg.instance_for_test() as instance:
        return endpoint_observer(dg.build_sensor_context(instance=instance))


def by_model(result: dg.SensorResult | dg.SkipReason) -> dict[str, dict]:
    assert isinstance(result, dg.SensorResult), result
    observed = {event.asset_key: {k: v.value for k, v in event.metadata.items()} for event in result.asset_events}
    expected = {spec.name: keys(spec)["deployed_endpoint"] for spec in USE_CASE.models}
    assert set(observed) == set(expected.values())
    return {name: observed[key] for name, key in expected.items()}


def test_endpoint_observer_reports_what_the_service_loaded_and_answered(service: Service, built: Built,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    before = by_model(observe(monkeypatch, service.env))
    sent = {spec.name: i + 1 for i, spec in enumerate(USE_CASE.models)}  # a different count per model
    examples = instances(built)
    with service.client() as client:
        for name, count in sent.items():
            answer = client.post(f"/v1/models/{name}:predict", json={"instances": examples[name][:1] * count})
            assert answer.status_code == 200, answer.text
        loaded = {name: client.get(f"/v1/models/{name}").json() for name in sent}
    # An error the service counts: a body over serving.max_body_bytes, refused from its declared length before
    # it is read (so the client declares it and waits for the answer, sending nothing).
    connection = http.client.HTTPSConnection("127.0.0.1", service.port, timeout=30, context=service.trusting)
    connection.putrequest("POST", f"/v1/models/{USE_CASE.models[0].name}:predict")
    connection.putheader("Content-Type", "application/json")
    connection.putheader("Content-Length", "2000000")
    connection.endheaders()
    assert connection.getresponse().status == 413
    connection.close()
    after = by_model(observe(monkeypatch, service.env))
    for name, count in sent.items():
        now = after[name]
        assert now["url"] == service.url and now["ready"] is True
        assert now["versions_loaded"] == loaded[name]["versions"] and now["versions_loaded"][0]["version"] == "1"
        assert now["traffic"] == loaded[name]["traffic"]
        assert now["predictions"] - before[name]["predictions"] == count
        errors, errors_before = now["errors_by_cause"], before[name]["errors_by_cause"]  # the service's, not per model
        assert {c: d for c, n in errors.items() if (d := n - errors_before.get(c, 0))} == {"body_too_large": 1}


def test_endpoint_observer_skips_naming_loopwise_serve_when_no_service_answers(built: Built,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    closed = free_port()
    result = observe(monkeypatch, {**built.env, "LOOPWISE__SERVING__PORT": str(closed)})
    assert isinstance(result, dg.SkipReason)
    assert f"127.0.0.1:{closed}" in result.skip_message and "`loopwise serve`" in result.skip_message
