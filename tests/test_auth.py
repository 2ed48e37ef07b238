"""Access control on a real uvicorn server: API keys and OIDC tokens, 401 vs 403, audited denials, the CLI rule, TLS."""

from __future__ import annotations

import json
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Annotated, Any

import httpx
import jwt
import pytest
import uvicorn
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import FastAPI
from loopwise.config import Settings, load_settings
from loopwise.events import EventStore, open_for, open_store
from loopwise.serving.auth import (
    DENIED,
    AccessDenied,
    ApiKeys,
    Authenticator,
    Forbidden,
    Identity,
    Jwks,
    Unauthenticated,
    authorize_cli,
    for_predictions,
    require,
)
from loopwise.serving.keys_cli import EXIT_DENIED, keys
from loopwise.serving.tls import self_signed_certificate
from typer.testing import CliRunner

ISSUER, AUDIENCE = "https://issuer.test/realms/loopwise", "loopwise-serving"


# -- a real server and a real issuer on loopback ----------------------------------------------

@contextmanager
def serving(app: FastAPI, **ssl_options: Any) -> Iterator[str]:
    """`app` on uvicorn on a free loopback port, in a thread; yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", **ssl_options))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield f"{'https' if ssl_options else 'http'}://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


Viewer = Annotated[Identity, require("viewer")]
Operator = Annotated[Identity, require("operator")]
Caller = Annotated[Identity, for_predictions()]


def guarded_app(auth: Authenticator) -> FastAPI:
    """One viewer route, one operator route, one prediction route, one admin route (the method form)."""
    app = auth.install(FastAPI())

    @app.get("/v1/status")
    def status(identity: Viewer) -> dict[str, str]:
        return {"subject": identity.subject, "role": identity.role, "via": identity.via}

    @app.post("/admin/reload")
    def reload(identity: Operator) -> dict[str, str]:
        return {"subject": identity.subject, "role": identity.role, "via": identity.via}

    @app.post("/v1/models/{name}:predict")
    def predict(name: str, identity: Caller) -> dict[str, str]:
        return {"model": name, "subject": identity.subject}

    @app.post("/admin/rollout", dependencies=[auth.require("admin")])
    def rollout() -> dict[str, bool]:
        return {"ok": True}

    return app


def bearer(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


@dataclass
class Issuer:
    """An OIDC issuer on loopback: a JWKS document served over HTTP and the private keys that sign tokens."""

    jwks_url: str
    signing: dict[str, rsa.RSAPrivateKey]
    published: dict[str, Any]  # the JWKS the server answers with; tests may rotate it

    def publish(self, kid: str, key: rsa.RSAPrivateKey) -> None:
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
        self.published["keys"].append({**jwk, "kid": kid, "use": "sig", "alg": "RS256"})

    def token(self, kid: str = "k1", key: rsa.RSAPrivateKey | None = None, alg: str = "RS256",
              **claims: Any) -> str:
        now = int(time.time())
        body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice@example.test", "iat": now, "exp": now + 300,
                "loopwise_role": "operator", **claims}
        body = {k: v for k, v in body.items() if v is not None}
        return jwt.encode(body, key if key is not None else self.signing[kid], algorithm=alg, headers={"kid": kid})


@pytest.fixture
def issuer() -> Iterator[Issuer]:
    published: dict[str, Any] = {"keys": []}

    class JwksHandler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            body = json.dumps(published).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), JwksHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    k1 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    found = Issuer(f"http://127.0.0.1:{server.server_address[1]}/protocol/openid-connect/certs", {"k1": k1}, published)
    found.publish("k1", k1)
    yield found
    server.shutdown()
    server.server_close()


@pytest.fixture
def oidc_settings(settings: Settings, issuer: Issuer, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("LOOPWISE__SERVING__AUTH__OIDC_ISSUER", ISSUER)
    monkeypatch.setenv("LOOPWISE__SERVING__AUTH__OIDC_AUDIENCE", AUDIENCE)
    monkeypatch.setenv("LOOPWISE__SERVING__AUTH__OIDC_JWKS_URL", issuer.jwks_url)
    return load_settings()


@pytest.fixture
def store(settings: Settings) -> Iterator[EventStore]:
    events = open_for(settings)
    yield events
    events.close()


def denials(store: EventStore) -> list[dict[str, Any]]:
    return [r.payload | {"actor": r.actor, "subject": r.subject} for r in store.read(kind=DENIED)]


def stored_bytes(settings: Settings, store: EventStore, tmp_path: Path) -> bytes:
    """Everything the event store holds on disk (the database and its WAL) and its export."""
    export = tmp_path / "audit.jsonl"
    store.export(export)
    files = [p for p in settings.paths.events.iterdir() if p.is_file()] + [export]
    return b"".join(p.read_bytes() for p in files)


# -- API keys on the server --------------------------------------------------------------------

def test_api_keys_guard_routes_with_401_403_and_revocation(settings: Settings, store: EventStore,
                                                           tmp_path: Path) -> None:
    # The keys are made by another ApiKeys, as the CLI of another process would: the server learns of them from the store.
    admin_side = ApiKeys(open_for(settings))
    viewer_rec, viewer = admin_side.create("dashboard", "viewer", actor="test")
    operator_rec, operator = admin_side.create("deployer", "operator", actor="test")
    _, admin = admin_side.create("root", "admin", actor="test")
    auth = Authenticator(settings, store, keys=ApiKeys(store, refresh_s=0.3))

    with serving(guarded_app(auth)) as url, httpx.Client(base_url=url) as http:
        nothing = http.post("/admin/reload")
        assert nothing.status_code == 401 and nothing.headers["WWW-Authenticate"].startswith("Bearer")
        wrong_secret = f"lw_{operator_rec.id}_{'x' * 43}"
        assert http.post("/admin/reload", headers=bearer(wrong_secret)).status_code == 401
        assert http.post("/admin/reload", headers=bearer("lw_000000000000_" + "y" * 43)).status_code == 401
        assert http.post("/admin/reload", headers=bearer("not-a-key-and-no-oidc")).status_code == 401
        assert http.post("/admin/reload", headers={"Authorization": "Basic dXNlcjpwdw=="}).status_code == 401
        assert http.post("/admin/reload", headers={"Authorization": viewer}).status_code == 401  # no scheme

        forbidden = http.post("/admin/reload", headers=bearer(viewer))
        assert forbidden.status_code == 403 and "needs operator" in forbidden.json()["detail"]
        ok = http.post("/admin/reload", headers=bearer(operator))
        assert ok.status_code == 200 and ok.json() == {"subject": f"key:{operator_rec.id}", "role": "operator",
                                                       "via": "key"}
        assert http.get("/v1/status", headers={"X-API-Key": operator}).json()["role"] == "operator"  # operator > viewer
        assert http.get("/v1/status", headers=bearer(viewer)).status_code == 200
        assert http.post("/admin/rollout", headers=bearer(admin)).json() == {"ok": True}

        # Predictions need no key by default; one that is sent must still be valid.
        assert http.post("/v1/models/m:predict").json() == {"model": "m", "subject": "anonymous"}
        assert http.post("/v1/models/m:predict", headers=bearer(viewer)).json()["subject"] == f"key:{viewer_rec.id}"
        assert http.post("/v1/models/m:predict", headers=bearer(wrong_secret)).status_code == 401

        admin_side.revoke(operator_rec.id, actor="test", reason="rotated")  # another process revokes it
        deadline = time.monotonic() + 3
        while http.post("/admin/reload", headers=bearer(operator)).status_code == 200:
            assert time.monotonic() < deadline, "the revoked key still works after 3 s"
            time.sleep(0.05)
        revoked = http.post("/admin/reload", headers=bearer(operator))
        assert revoked.status_code == 401 and "revoked" in revoked.json()["detail"]
        assert revoked.headers["WWW-Authenticate"] == 'Bearer realm="loopwise", error="invalid_token"'

    on_disk = stored_bytes(settings, store, tmp_path)
    for key in (viewer, operator, admin):
        assert key.encode() not in on_disk and key.split("_", 2)[2].encode() not in on_disk
    created = store.read(kind="auth.key_created")
    assert {r.payload["name"] for r in created} == {"dashboard", "deployer", "root"}
    assert all(set(r.payload) == {"id", "name", "role", "salt", "hash", "scrypt"} for r in created)

    recorded = denials(store)
    assert [(d["route"], d["status"]) for d in recorded] == [
        ("/admin/reload", 401), ("/admin/reload", 401), ("/admin/reload", 401), ("/admin/reload", 401),
        ("/admin/reload", 401), ("/admin/reload", 401), ("/admin/reload", 403), ("/v1/models/{name}:predict", 401),
    ] + [("/admin/reload", 401)] * (len(recorded) - 8)
    assert recorded[0]["reason"] == "no credentials: this needs the operator role" and recorded[0]["actor"] == "anonymous"
    assert recorded[1]["key_id"] == operator_rec.id and "wrong secret" in recorded[1]["reason"]
    assert recorded[6]["key_id"] == viewer_rec.id and recorded[6]["role"] == "viewer" and recorded[6]["subject_verified"]
    assert recorded[-1]["key_id"] == operator_rec.id and "revoked" in recorded[-1]["reason"]
    assert all(d["method"] == "POST" and d["client"] == "127.0.0.1" for d in recorded)
    text = json.dumps([r.to_json() for r in store.read(kind=DENIED)])
    assert viewer[:20] not in text  # not even the start of a key sent without its scheme
    assert "x" * 43 not in text and "y" * 43 not in text and "not-a-key" not in text and "dXNlcjpwdw" not in text


def test_a_verified_key_costs_no_scrypt_and_no_query_on_the_hot_path(settings: Settings, store: EventStore,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    keys_ = ApiKeys(store, refresh_s=60)
    _, key = keys_.create("bench", "viewer", actor="test")
    started = time.perf_counter()
    keys_.verify(key)
    first = time.perf_counter() - started  # the scrypt
    queries = []
    monkeypatch.setattr(store, "read", lambda *a, **k: queries.append(a) or [])
    monkeypatch.setattr(store, "last_seq", lambda: queries.append("last_seq") or 0)
    started = time.perf_counter()
    for _ in range(1000):
        assert keys_.verify(key).role == "viewer"
    cached = (time.perf_counter() - started) / 1000
    assert queries == []
    assert cached < first / 50, (first, cached)
    with pytest.raises(Unauthenticated, match="wrong secret"):  # the cache holds the key's digest, not just its id
        keys_.verify(key[:-4] + "AAAA")


def test_known_keys_still_work_while_the_store_cannot_be_read(store: EventStore,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    keys_ = ApiKeys(store, refresh_s=0)
    _, key = keys_.create("steady", "viewer", actor="test")
    keys_.verify(key)

    def down(*args: Any, **kwargs: Any) -> Any:
        raise OSError("database unreachable")

    monkeypatch.setattr(store, "read", down)
    monkeypatch.setattr(store, "last_seq", down)
    assert keys_.verify(key).role == "viewer"
    with pytest.raises(OSError, match="unreachable"):  # a process that never read the keys cannot vouch for any
        ApiKeys(store).verify(key)


def test_keys_are_shared_by_replicas_through_postgresql(postgres: Any, settings: Settings) -> None:
    """Two replicas with their own connections and caches: a key made on one works on the other, and its revocation too."""
    import psycopg

    name = f"auth{os.getpid()}"
    with psycopg.connect(postgres.url, password=postgres.password, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name}")
        admin.execute(f"CREATE DATABASE {name}")
    url = postgres.url.rsplit("/", 1)[0] + f"/{name}"
    one = Authenticator(settings, open_store(url, postgres.password), keys=ApiKeys(open_store(url, postgres.password),
                                                                                 refresh_s=0.2))
    two = Authenticator(settings, open_store(url, postgres.password), keys=ApiKeys(open_store(url, postgres.password),
                                                                                 refresh_s=0.2))
    record, key = one.keys.create("replicated", "operator", actor="test")
    assert two.check(key, "operator").subject == f"key:{record.id}"
    one.keys.revoke(record.id, actor="test")
    time.sleep(0.3)
    with pytest.raises(Unauthenticated, match="revoked"):
        two.check(key, "viewer")


# -- OIDC tokens --------------------------------------------------------------------------------

def test_oidc_tokens_are_checked_against_the_issuers_jwks(oidc_settings: Settings, issuer: Issuer,
                                                          tmp_path: Path) -> None:
    store = open_for(oidc_settings)
    jwks = Jwks(issuer.jwks_url, min_refetch_s=0)
    auth = Authenticator(oidc_settings, store, jwks=jwks)
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    past = int(time.time()) - 3600
    refused = {
        "wrong audience": issuer.token(aud="someone-else"),
        "wrong issuer": issuer.token(iss="https://evil.test"),
        "expired": issuer.token(iat=past, exp=past + 60),
        "wrong signature": issuer.token(key=stranger),
        "unknown kid": issuer.token(kid="k9", key=stranger),
        "no expiry": issuer.token(exp=None),
        "symmetric": jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "sub": "mallory", "exp": int(time.time()) + 60,
                                 "loopwise_role": "admin"}, "a-shared-secret-of-32-bytes-or-more!!", algorithm="HS256",
                                headers={"kid": "k1"}),
    }
    with serving(guarded_app(auth)) as url, httpx.Client(base_url=url) as http:
        ok = http.post("/admin/reload", headers=bearer(issuer.token()))
        assert ok.status_code == 200 and ok.json() == {"subject": "alice@example.test", "role": "operator", "via": "oidc"}
        fetches = jwks.fetches
        for _ in range(3):  # cached: no fetch per request
            assert http.get("/v1/status", headers=bearer(issuer.token())).status_code == 200
        assert jwks.fetches == fetches

        answers = {why: http.post("/admin/reload", headers=bearer(token)) for why, token in refused.items()}
        assert {why: a.status_code for why, a in answers.items()} == dict.fromkeys(refused, 401)
        assert all(a.headers["WWW-Authenticate"].startswith("Bearer") for a in answers.values())
        assert "audience" in answers["wrong audience"].json()["detail"]
        assert "issuer" in answers["wrong issuer"].json()["detail"]
        assert answers["expired"].json()["detail"] == "token expired"
        assert "signature" in answers["wrong signature"].json()["detail"]
        assert "unknown key id 'k9'" in answers["unknown kid"].json()["detail"]
        assert "exp" in answers["no expiry"].json()["detail"]

        viewer = http.post("/admin/reload", headers=bearer(issuer.token(loopwise_role="viewer")))
        assert viewer.status_code == 403 and "has role viewer" in viewer.json()["detail"]
        no_role = http.post("/admin/reload", headers=bearer(issuer.token(loopwise_role=None)))
        assert no_role.status_code == 403 and "(none)" in no_role.json()["detail"]

        # The issuer rotates: a token from a key published after our last fetch makes us fetch again.
        k2 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        issuer.signing["k2"] = k2
        issuer.publish("k2", k2)
        rotated = http.post("/admin/reload", headers=bearer(issuer.token(kid="k2", loopwise_role=["viewer", "admin"])))
        assert rotated.status_code == 200 and rotated.json()["role"] == "admin"  # of a list of roles, the highest

    recorded = denials(store)
    assert len(recorded) == len(refused) + 2
    assert {d["status"] for d in recorded} == {401, 403}
    assert all(d["token_subject"] in ("alice@example.test", "mallory") for d in recorded)
    on_disk = stored_bytes(oidc_settings, store, tmp_path)
    for token in refused.values():
        for part in token.split("."):
            assert part.encode() not in on_disk


def test_an_unreachable_issuer_is_503_not_401(settings: Settings, issuer: Issuer, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    monkeypatch.setenv("LOOPWISE__SERVING__AUTH__OIDC_ISSUER", ISSUER)
    monkeypatch.setenv("LOOPWISE__SERVING__AUTH__OIDC_AUDIENCE", AUDIENCE)
    monkeypatch.setenv("LOOPWISE__SERVING__AUTH__OIDC_JWKS_URL", f"http://127.0.0.1:{closed}/certs")
    down = load_settings()
    auth = Authenticator(down, open_for(down))
    with serving(guarded_app(auth)) as url:
        answer = httpx.post(f"{url}/admin/reload", headers=bearer(issuer.token()))
    assert answer.status_code == 503 and "could not be fetched" in answer.json()["detail"]


def test_a_partial_oidc_configuration_names_what_is_missing(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOOPWISE__SERVING__AUTH__OIDC_ISSUER", ISSUER)
    partial = load_settings()
    with pytest.raises(ValueError, match="LOOPWISE__SERVING__AUTH__OIDC_AUDIENCE.*OIDC_JWKS_URL"):
        Authenticator(partial, open_for(partial))


# -- the CLI rule and `loopwise keys` -------------------------------------------------------------

def test_the_cli_is_open_until_a_key_exists_then_needs_operator(settings: Settings, store: EventStore,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOOPWISE_API_KEY", raising=False)
    local = authorize_cli(settings, "operator", command="land", events=store)
    assert local.via == "local" and local.role == "admin" and store.read(kind=DENIED) == []

    keys_ = ApiKeys(store)
    viewer_rec, viewer = keys_.create("reader", "viewer", actor="test")
    operator_rec, operator = keys_.create("ops", "operator", actor="test")
    with pytest.raises(Unauthenticated, match="set LOOPWISE_API_KEY"):
        authorize_cli(settings, "operator", command="land", events=store)
    with pytest.raises(Forbidden, match="needs operator"):
        authorize_cli(settings, "operator", viewer, command="land", events=store)
    assert authorize_cli(settings, "viewer", viewer, events=store).subject == f"key:{viewer_rec.id}"
    monkeypatch.setenv("LOOPWISE_API_KEY", operator)
    assert authorize_cli(settings, "operator", command="land", events=store).subject == f"key:{operator_rec.id}"

    for record in keys_.all():  # revoking every key does not reopen the CLI
        keys_.revoke(record.id, actor="test")
    with pytest.raises(AccessDenied, match="revoked"):
        authorize_cli(settings, "operator", command="land", events=store)

    recorded = denials(store)
    assert [(d["route"], d["method"], d["status"]) for d in recorded] == [("cli:land", "CLI", 401), ("cli:land", "CLI", 403),
                                                                          ("cli:land", "CLI", 401)]
    assert operator not in json.dumps(recorded) and viewer not in json.dumps(recorded)


def test_the_cli_needs_a_token_once_oidc_is_configured(oidc_settings: Settings, issuer: Issuer,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOOPWISE_API_KEY", raising=False)
    store = open_for(oidc_settings)
    with pytest.raises(Unauthenticated):
        authorize_cli(oidc_settings, "operator", command="audit record", events=store)
    monkeypatch.setenv("LOOPWISE_API_KEY", issuer.token(loopwise_role="operator"))
    assert authorize_cli(oidc_settings, "operator", command="audit record", events=store).via == "oidc"


def test_keys_commands_create_list_and_revoke(settings: Settings, store: EventStore, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOOPWISE_API_KEY", raising=False)
    runner = CliRunner()
    run: Callable[..., Any] = lambda *args, key=None: runner.invoke(  # noqa: E731
        keys, list(args), env={"LOOPWISE_API_KEY": key} if key else None)

    first_viewer = run("create", "--name", "reader", "--role", "viewer")
    assert first_viewer.exit_code == 2 and "the first key must be an admin key" in first_viewer.output
    assert run("create", "--name", "x", "--role", "root").exit_code == 2  # not a role

    made = run("create", "--name", "root", "--role", "admin")
    assert made.exit_code == 0, made.output
    admin = made.stdout.strip()
    assert admin.startswith("lw_") and "shown this once" in made.stderr

    refused = run("create", "--name", "ops", "--role", "operator")
    assert refused.exit_code == EXIT_DENIED and "needs the admin role" in refused.output
    ops = run("create", "--name", "ops", "--role", "operator", key=admin)
    assert ops.exit_code == 0, ops.output
    operator = ops.stdout.strip()

    listed = run("list", key=operator)
    assert listed.exit_code == 0, listed.output
    assert "root" in listed.output and "ops" in listed.output and "admin" in listed.output
    records = {r.name: r for r in ApiKeys(store).all()}
    assert records["ops"].id in listed.output and records["ops"].created_by == f"key:{records['root'].id}"
    for r in records.values():
        assert r.hash.hex() not in listed.output and r.salt.hex() not in listed.output

    not_admin = run("revoke", "--id", records["root"].id, key=operator)
    assert not_admin.exit_code == EXIT_DENIED and "needs admin" in not_admin.output
    assert run("revoke", "--id", "000000000000", key=admin).exit_code == 1
    gone = run("revoke", "--id", records["ops"].id, "--reason", "left the team", key=admin)
    assert gone.exit_code == 0, gone.output
    assert "revoked" in run("list", key=admin).output
    with pytest.raises(Unauthenticated, match="revoked"):
        authorize_cli(settings, "viewer", operator, events=store)

    glass = run("create", "--name", "recovery", "--role", "admin", "--break-glass")
    assert glass.exit_code == 0 and authorize_cli(settings, "admin", glass.stdout.strip(), events=store).role == "admin"
    assert [r.kind for r in store.read(kind="auth.break_glass")] == ["auth.break_glass"]

    on_disk = stored_bytes(settings, store, tmp_path)
    assert all(key.encode() not in on_disk for key in (admin, operator, glass.stdout.strip()))


# -- TLS ------------------------------------------------------------------------------------------

def test_uvicorn_serves_https_with_a_self_signed_certificate(settings: Settings, store: EventStore,
                                                            tmp_path: Path) -> None:
    pair = self_signed_certificate(tmp_path / "tls")
    assert pair.key.stat().st_mode & 0o077 == 0
    _, key = ApiKeys(store).create("tls", "operator", actor="test")
    app = guarded_app(Authenticator(settings, store))
    with serving(app, ssl_certfile=str(pair.cert), ssl_keyfile=str(pair.key)) as url:
        assert url.startswith("https://")
        trusting = ssl.create_default_context(cafile=str(pair.cert))
        with httpx.Client(base_url=url, verify=trusting) as http:
            assert http.post("/admin/reload", headers=bearer(key)).status_code == 200
            assert http.post("/admin/reload").status_code == 401
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):  # a client that does not trust it
            httpx.get(f"{url}/v1/status", verify=ssl.create_default_context())
        with pytest.raises(httpx.HTTPError):  # plain HTTP on the TLS port
            httpx.get(url.replace("https://", "http://") + "/v1/status")
