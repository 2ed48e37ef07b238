"""Access control: API keys and OIDC bearer tokens, roles viewer < operator < admin, every denial audited.

Credentials. A caller sends `Authorization: Bearer <credential>` (or `X-API-Key: <key>`). A credential
that starts with `lw_` is an API key, `lw_<id>_<secret>`: the id finds the key's record, the secret is
checked against its scrypt hash in constant time. Keys live in the event store (`auth.key_created` /
`auth.key_revoked`, holding id, name, role, salt and hash, never the key), so every replica and worker
sees the same keys; each process keeps a table of them refreshed from the store every `refresh_s`
seconds (and at once when a request names an id it does not know), and a cache of keys it has already
verified, so the hot path does no scrypt and no query. A revocation reaches every process within
`refresh_s`. Any other credential is an OIDC token, checked against the issuer's JWKS (fetched,
cached, refetched on an unknown `kid`) with signature, expiry, issuer and audience; its role is the
claim `serving.auth.role_claim` (a dotted path; a list of roles counts as its highest).

Answers. No or invalid credentials: 401 with `WWW-Authenticate: Bearer`. A valid identity whose role
is too low: 403. The issuer's keys cannot be fetched (and none were before): 503. Each denial is an
`auth.denied` event naming the route, the reason and the key id or token subject, never the credential.

Routes. `Authenticator(settings, events).install(app)` once per process; then, at module level,
`Operator = Annotated[Identity, require("operator")]` and `def reload(caller: Operator)`.
`require(role)` always needs a credential. Prediction routes use `for_predictions()`: a viewer
credential when `serving.auth.require_key_for_predictions`, otherwise anyone (a credential that is
sent must still be valid). The same dependencies exist as Authenticator methods for code that
holds the instance (`dependencies=[auth.require("admin")]`).

The CLI rule (`authorize_cli`). Auth is *configured* once any API key has ever been created (revoking
them all does not reopen anything) or an OIDC issuer is set. Unconfigured (the embedded default),
every command runs as the local user without a key: whoever runs the CLI already holds the event
store itself, so a check would protect nothing. Configured, a mutating command needs the operator
role and key management (`loopwise keys create/revoke`) needs admin, from the key or OIDC token in
`LOOPWISE_API_KEY`. This is attribution and policy, not a wall: the CLI opens the event store with
its own credentials, and someone who holds those can append events directly; the network routes
are the boundary.
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import threading
import time
import urllib.request
from dataclasses import dataclass, replace
from typing import Any

import jwt
from fastapi import Depends, HTTPException, Request

from loopwise.config import AuthSettings, Settings
from loopwise.events import Event, EventStore, open_for

log = logging.getLogger(__name__)

ROLES = ("viewer", "operator", "admin")  # each role may do everything the ones before it may
ENV_KEY = "LOOPWISE_API_KEY"
KEY_CREATED, KEY_REVOKED, DENIED = "auth.key_created", "auth.key_revoked", "auth.denied"
_KEY = re.compile(r"^lw_([0-9a-f]{12})_([A-Za-z0-9_-]{20,})$")
_KEY_ID = re.compile(r"^lw_([0-9a-f]{12})_")
# 16 MiB and ~58 ms per hash (measured here): paid once per key per process (the verified cache), not per request.
SCRYPT = {"n": 2**14, "r": 8, "p": 1}
# Only asymmetric signatures: an HS256 token "signed" with a public key must never verify.
ASYMMETRIC = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"})


def check_role(role: str) -> str:
    """`role` if it is one of ROLES; otherwise a ValueError naming them."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}: use one of {', '.join(ROLES)}")
    return role


def satisfies(role: str | None, required: str) -> bool:
    """Whether `role` may do what `required` may (viewer < operator < admin)."""
    return role in ROLES and ROLES.index(role) >= ROLES.index(check_role(required))


@dataclass(frozen=True)
class Identity:
    """Who is calling: `subject` is `key:<id>`, the token's `sub`, `local:<user>` or `anonymous`."""

    subject: str
    role: str  # viewer, operator, admin; "" when the caller has none
    via: str  # key, oidc, local (CLI, auth unconfigured), break-glass, anonymous
    name: str = ""  # the key's name, or the token's preferred_username / email


ANONYMOUS = Identity("anonymous", "", "anonymous")


class AccessDenied(PermissionError):
    """A refusal: 401 (no or invalid credentials) or 403 (valid, but the role is too low).

    `reason` is safe to log and record: it never holds a key or a token.
    """

    status = 401

    def __init__(self, reason: str, *, key_id: str | None = None, token_subject: str | None = None,
                 identity: Identity | None = None) -> None:
        super().__init__(reason)
        self.reason, self.key_id, self.token_subject, self.identity = reason, key_id, token_subject, identity


class Unauthenticated(AccessDenied):
    status = 401


class Forbidden(AccessDenied):
    status = 403


class KeysUnavailable(AccessDenied):
    """The issuer's signing keys could not be fetched: not the caller's fault, so 503."""

    status = 503


# -- API keys --------------------------------------------------------------------------

@dataclass(frozen=True)
class KeyRecord:
    """One API key as the event store knows it: never the key itself."""

    id: str
    name: str
    role: str
    created_at: str
    created_by: str
    salt: bytes
    hash: bytes
    scrypt: dict[str, int]
    revoked_at: str | None = None
    revoked_by: str | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def public(self) -> dict[str, Any]:
        """What may be shown: no salt, no hash."""
        return {"id": self.id, "name": self.name, "role": self.role, "created_at": self.created_at,
                "created_by": self.created_by, "revoked_at": self.revoked_at, "revoked_by": self.revoked_by}


def _scrypt(key: str, salt: bytes, params: dict[str, int]) -> bytes:
    return hashlib.scrypt(key.encode(), salt=salt, n=params["n"], r=params["r"], p=params["p"],
                          maxmem=256 * params["n"] * params["r"] * params["p"] + 1_048_576, dklen=32)


class ApiKeys:
    """The API keys in the event store as this process sees them: create, revoke, verify."""

    def __init__(self, events: EventStore, *, refresh_s: float = 2.0, cache_ttl_s: float = 60.0) -> None:
        self._events = events
        self.refresh_s, self.cache_ttl_s = refresh_s, cache_ttl_s
        self._keys: dict[str, KeyRecord] = {}
        self._seen = 0  # the event store's last sequence number applied to the table
        self._refreshed_at = float("-inf")
        self._loaded = False
        self._lock = threading.Lock()
        self._verified: dict[str, tuple[bytes, float]] = {}  # key id -> (sha256 of the key, valid until)

    # -- the table ---------------------------------------------------------------------
    def refresh(self, force: bool = False, *, tolerate: bool = False) -> None:
        """Apply `auth.key_*` events appended since the last refresh (at most every `refresh_s`, unless forced).

        With `tolerate` (the request path), a store that cannot be read leaves the table loaded before in
        use, so an outage of the store does not refuse keys already known; a table never loaded still raises.
        """
        if not force and time.monotonic() - self._refreshed_at < self.refresh_s:
            return
        # Once loaded, a request never waits for another thread's refresh: the table it has is at most refresh_s old.
        if not self._lock.acquire(blocking=force or not self._loaded):
            return
        try:
            if not force and time.monotonic() - self._refreshed_at < self.refresh_s:
                return
            try:
                last = self._events.last_seq()
                records = self._events.read(after=self._seen, kind="auth.key_*")
            except Exception as exc:
                if not (tolerate and self._loaded):
                    raise
                log.warning("API keys not refreshed (%s); the table read %.0f s ago stays in use",
                            exc, time.monotonic() - self._refreshed_at)
                self._refreshed_at = time.monotonic()  # try again in refresh_s, not on every request
                return
            table = dict(self._keys)  # copy-on-write: request threads read self._keys without the lock
            for record in records:
                self._apply(table, record.kind, record.payload, record.at, record.actor)
            self._keys = table
            # Appends are serialized, so every key event up to `last` was in that read; re-applying is harmless.
            self._seen = max([last, self._seen] + [r.seq for r in records])
            self._refreshed_at, self._loaded = time.monotonic(), True
        finally:
            self._lock.release()

    def _apply(self, table: dict[str, KeyRecord], kind: str, payload: dict[str, Any], at: str, actor: str) -> None:
        if kind == KEY_CREATED and payload["id"] not in table:
            table[payload["id"]] = KeyRecord(payload["id"], payload["name"], payload["role"], at, actor,
                                             bytes.fromhex(payload["salt"]), bytes.fromhex(payload["hash"]),
                                             dict(payload["scrypt"]))
        elif kind == KEY_REVOKED and payload["id"] in table:
            record = table[payload["id"]]
            if record.active:
                table[record.id] = replace(record, revoked_at=at, revoked_by=actor)
            self._verified.pop(record.id, None)

    def all(self) -> list[KeyRecord]:
        """Every key ever created, revoked ones included, oldest first."""
        self.refresh(force=True)
        return sorted(self._keys.values(), key=lambda k: k.created_at)

    def exist(self) -> bool:
        """Whether any key was ever created (the CLI rule: from then on, commands need one)."""
        return bool(self._keys) or bool(self._events.read(kind=KEY_CREATED, limit=1))

    # -- management --------------------------------------------------------------------
    def create(self, name: str, role: str, actor: str) -> tuple[KeyRecord, str]:
        """A new key with `role`; returns its record and the key itself, which is stored nowhere."""
        check_role(role)
        if not name.strip():
            raise ValueError("a key needs a name that says who or what uses it, e.g. --name ci-deployer")
        self.refresh(force=True)
        key_id = secrets.token_hex(6)
        while key_id in self._keys:
            key_id = secrets.token_hex(6)
        key = f"lw_{key_id}_{secrets.token_urlsafe(32)}"
        salt = secrets.token_bytes(16)
        payload = {"id": key_id, "name": name.strip(), "role": role, "salt": salt.hex(),
                   "hash": _scrypt(key, salt, SCRYPT).hex(), "scrypt": SCRYPT}
        self._events.append(Event(KEY_CREATED, f"key:{key_id}", payload, actor,
                                  f"API key {name.strip()!r} created with role {role}", key=f"{KEY_CREATED}:{key_id}"))
        self.refresh(force=True)
        return self._keys[key_id], key

    def revoke(self, key_id: str, actor: str, reason: str = "") -> KeyRecord:
        """Revoke a key by id: every process refuses it within `refresh_s`, this one at once."""
        self.refresh(force=True)
        record = self._keys.get(key_id)
        if record is None:
            raise LookupError(f"no API key with id {key_id!r} (see the ids with: loopwise keys list)")
        if not record.active:
            raise LookupError(f"API key {key_id} ({record.name}) was already revoked at {record.revoked_at}")
        self._events.append(Event(KEY_REVOKED, f"key:{key_id}", {"id": key_id, "name": record.name}, actor,
                                  reason or f"API key {record.name!r} revoked"))
        self.refresh(force=True)
        return self._keys[key_id]

    # -- the hot path ------------------------------------------------------------------
    def verify(self, key: str) -> Identity:
        """The identity of a key, or Unauthenticated; a key verified before costs a dict lookup and a sha256."""
        match = _KEY.match(key)
        if match is None:
            prefix = _KEY_ID.match(key)
            raise Unauthenticated("malformed API key (expected lw_<id>_<secret>)",
                                  key_id=prefix.group(1) if prefix else None)
        key_id = match.group(1)
        self.refresh(tolerate=True)
        record = self._keys.get(key_id)
        if record is None and time.monotonic() - self._refreshed_at > min(self.refresh_s, 0.5):
            self.refresh(force=True, tolerate=True)  # created on another replica since the last refresh?
            record = self._keys.get(key_id)
        if record is None:
            raise Unauthenticated(f"unknown API key id {key_id}", key_id=key_id)
        if not record.active:
            raise Unauthenticated(f"API key {key_id} ({record.name}) was revoked at {record.revoked_at}", key_id=key_id)
        fingerprint = hashlib.sha256(key.encode()).digest()
        cached = self._verified.get(key_id)
        now = time.monotonic()
        if not (cached and cached[1] > now and hmac.compare_digest(cached[0], fingerprint)):
            if not hmac.compare_digest(_scrypt(key, record.salt, record.scrypt), record.hash):
                raise Unauthenticated(f"API key {key_id}: wrong secret", key_id=key_id)
            self._verified[key_id] = (fingerprint, now + self.cache_ttl_s)
        return Identity(f"key:{key_id}", record.role, "key", record.name)


# -- OIDC --------------------------------------------------------------------------------

class Jwks:
    """An issuer's signing keys from its JWKS URL: cached for `ttl_s`, refetched when a token names an unknown kid.

    Fetches are at most one per `min_refetch_s`, so tokens with made-up kids (or an issuer that is
    down) cannot turn every request into a call to the issuer. If a fetch fails, the keys fetched
    before stay in use.
    """

    def __init__(self, url: str, *, ttl_s: float = 300.0, min_refetch_s: float = 10.0, timeout_s: float = 5.0) -> None:
        self.url, self.ttl_s, self.min_refetch_s, self.timeout_s = url, ttl_s, min_refetch_s, timeout_s
        self._keys: dict[str | None, jwt.PyJWK] = {}
        self._fetched_at = self._tried_at = float("-inf")
        self._error: str | None = None
        self._lock = threading.Lock()
        self.fetches = 0  # successful fetches, for tests and metrics

    def key(self, kid: str | None) -> jwt.PyJWK:
        """The signing key named `kid` (a token without kid may use the issuer's only key)."""
        now = time.monotonic()
        if (now - self._fetched_at > self.ttl_s or kid not in self._keys) and now - self._tried_at >= self.min_refetch_s:
            self._fetch()
        if not self._keys:
            raise KeysUnavailable(f"the issuer's signing keys could not be fetched from {self.url}: {self._error}")
        if kid is None and len(self._keys) == 1:
            return next(iter(self._keys.values()))
        if kid not in self._keys:
            raise Unauthenticated(f"token signed with unknown key id {str(kid)[:64]!r} (not in {self.url})")
        return self._keys[kid]

    def _fetch(self) -> None:
        with self._lock:
            if time.monotonic() - self._tried_at < self.min_refetch_s:
                return  # another thread fetched while this one waited
            self._tried_at = time.monotonic()
            try:
                with urllib.request.urlopen(self.url, timeout=self.timeout_s) as response:
                    document = json.loads(response.read())
                entries = document["keys"]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                self._error = f"{type(exc).__name__}: {exc}"
                log.warning("JWKS %s could not be fetched (%s); %d keys fetched before stay in use",
                            self.url, self._error, len(self._keys))
                return
            keys: dict[str | None, jwt.PyJWK] = {}
            for entry in entries:
                if not isinstance(entry, dict) or entry.get("use", "sig") != "sig" or entry.get("kty") == "oct":
                    continue
                try:
                    jwk = jwt.PyJWK(entry)
                except (jwt.PyJWTError, ValueError, TypeError, KeyError):
                    continue  # a key type this PyJWT cannot use; the others still count
                if jwk.algorithm_name in ASYMMETRIC:
                    keys[entry.get("kid")] = jwk
            self._keys, self._fetched_at, self._error = keys, time.monotonic(), None
            self.fetches += 1


def oidc_configured(auth: AuthSettings) -> bool:
    """Whether bearer tokens are accepted; a partial configuration is an error that names what is missing."""
    given = {"oidc_issuer": auth.oidc_issuer, "oidc_audience": auth.oidc_audience, "oidc_jwks_url": auth.oidc_jwks_url}
    if not any(given.values()):
        return False
    missing = [name for name, value in given.items() if not value]
    if missing:
        raise ValueError("OIDC needs issuer, audience and JWKS URL together; missing: "
                         + ", ".join(f"serving.auth.{m} (LOOPWISE__SERVING__AUTH__{m.upper()})" for m in missing))
    return True


def _claim(claims: dict[str, Any], path: str) -> Any:
    value: Any = claims
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def role_from_claims(claims: dict[str, Any], role_claim: str) -> str:
    """The role a token carries in `role_claim` (dotted path); of a list, the highest known one; else ""."""
    value = _claim(claims, role_claim)
    candidates = [value] if isinstance(value, str) else value if isinstance(value, list) else []
    known = [r for r in candidates if r in ROLES]
    return max(known, key=ROLES.index) if known else ""


def _unverified_subject(token: str) -> str | None:
    """The `sub` a token claims, for the audit of a refusal only: it is not trusted for anything else."""
    try:
        sub = jwt.decode(token, options={"verify_signature": False}).get("sub")
    except jwt.InvalidTokenError:
        return None
    return str(sub)[:200] if sub is not None else None


class OidcVerifier:
    """Validates bearer tokens of one issuer: signature (JWKS), expiry, issuer, audience; the role from a claim."""

    def __init__(self, auth: AuthSettings, jwks: Jwks | None = None, *, leeway_s: float = 30.0) -> None:
        oidc_configured(auth)
        self.issuer, self.audience, self.role_claim = auth.oidc_issuer, auth.oidc_audience, auth.role_claim
        self.jwks = jwks or Jwks(str(auth.oidc_jwks_url))
        self.leeway_s = leeway_s

    def verify(self, token: str) -> Identity:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise Unauthenticated("bearer credential is neither an API key (lw_...) nor a JWT") from None
        subject = _unverified_subject(token)
        alg = header.get("alg")
        if alg not in ASYMMETRIC:
            raise Unauthenticated(f"token algorithm {alg!r} is not accepted (asymmetric signatures only)",
                                  token_subject=subject)
        try:
            jwk = self.jwks.key(header.get("kid"))
        except AccessDenied as denial:
            denial.token_subject = subject
            raise
        try:
            claims = jwt.decode(token, jwk, algorithms=[jwk.algorithm_name], audience=self.audience, issuer=self.issuer,
                                leeway=self.leeway_s, options={"require": ["exp", "iss", "aud", "sub"]})
        except jwt.InvalidTokenError as exc:
            # Our own words, not the library's: its messages are not promised to leave the token out.
            raise Unauthenticated(_token_problem(exc, self), token_subject=subject) from None
        return Identity(str(claims["sub"]), role_from_claims(claims, self.role_claim), "oidc",
                        str(claims.get("preferred_username") or claims.get("email") or ""))


def _token_problem(exc: jwt.InvalidTokenError, verifier: OidcVerifier) -> str:
    if isinstance(exc, jwt.ExpiredSignatureError):
        return "token expired"
    if isinstance(exc, jwt.ImmatureSignatureError):
        return "token not valid yet (nbf/iat in the future)"
    if isinstance(exc, jwt.InvalidAudienceError):
        return f"token audience is not {verifier.audience!r}"
    if isinstance(exc, jwt.InvalidIssuerError):
        return f"token issuer is not {verifier.issuer!r}"
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"token lacks the {exc.claim!r} claim"
    if isinstance(exc, jwt.InvalidSignatureError):
        return "token signature does not verify with the issuer's key"
    if isinstance(exc, jwt.InvalidAlgorithmError):
        return "token algorithm does not match its signing key"
    return f"invalid token ({type(exc).__name__})"


# -- the FastAPI side --------------------------------------------------------------------

def credential_from(headers: Any) -> str | None:
    """The credential a request carries: `Authorization: Bearer ...` or `X-API-Key`; None if none."""
    authorization = headers.get("authorization")
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            # The header is not echoed: a key sent without its scheme would land in the audit trail.
            raise Unauthenticated("the Authorization header is not 'Bearer <API key or token>'")
        return value.strip()
    api_key = headers.get("x-api-key")
    return api_key.strip() if api_key and api_key.strip() else None


class Authenticator:
    """Who may call what: API keys from the event store, OIDC tokens, roles; FastAPI dependencies.

    Build one per process (app start-up) and share it: it holds the key table, the verified-key cache
    and the JWKS cache.
    """

    def __init__(self, settings: Settings, events: EventStore, *, keys: ApiKeys | None = None,
                 jwks: Jwks | None = None) -> None:
        self.auth = settings.serving.auth
        self.events = events
        self.keys = keys or ApiKeys(events)
        self.oidc = OidcVerifier(self.auth, jwks) if oidc_configured(self.auth) else None

    def authenticate(self, credential: str) -> Identity:
        if credential.startswith("lw_"):
            return self.keys.verify(credential)
        if self.oidc is None:
            raise Unauthenticated("bearer tokens are not accepted: no OIDC issuer is configured "
                                  "(serving.auth.oidc_issuer); send an API key (lw_...)")
        return self.oidc.verify(credential)

    def check(self, credential: str | None, role: str | None) -> Identity:
        """The caller's identity if it may act as `role` (None: anyone, but a credential sent must be valid)."""
        if not credential:
            if role is None:
                return ANONYMOUS
            raise Unauthenticated(f"no credentials: this needs the {role} role")
        identity = self.authenticate(credential)
        if role is not None and not satisfies(identity.role, role):
            raise Forbidden(f"{identity.subject} has role {identity.role or '(none)'}; this needs {role}",
                            key_id=identity.subject.removeprefix("key:") if identity.via == "key" else None,
                            token_subject=identity.subject if identity.via == "oidc" else None, identity=identity)
        return identity

    def record_denial(self, denial: AccessDenied, *, route: str, method: str, required: str | None,
                      client: str | None) -> None:
        """Append `auth.denied`; the refusal stands even when the store cannot be written."""
        actor = (f"key:{denial.key_id}" if denial.key_id else denial.token_subject) or "anonymous"
        payload = {"route": route, "method": method, "status": denial.status, "reason": denial.reason,
                   "required_role": required, "key_id": denial.key_id, "token_subject": denial.token_subject,
                   # a refused token's sub is what it claims, not what its issuer vouched for
                   "subject_verified": denial.identity is not None,
                   "role": denial.identity.role if denial.identity else None, "client": client}
        try:
            self.events.append(Event(DENIED, route, payload, actor, denial.reason))
        except Exception:  # noqa: BLE001 - an unavailable audit store must not turn a 401 into a 500
            log.exception("could not record the denial of %s %s (%s)", method, route, denial.reason)

    def install(self, app: Any) -> Any:
        """Make this the authenticator of `app` for the module-level `require` / `optional` / `for_predictions`."""
        app.state.authenticator = self
        return app

    def require(self, role: str) -> Any:
        """A dependency that admits callers with at least `role` and returns their Identity."""
        return Depends(self._dependency(check_role(role)))

    def optional(self) -> Any:
        """A dependency that admits anyone (ANONYMOUS without a credential) but refuses an invalid credential."""
        return Depends(self._dependency(None))

    def for_predictions(self) -> Any:
        """`require("viewer")` when `serving.auth.require_key_for_predictions`, else `optional()`."""
        return self.require("viewer") if self.auth.require_key_for_predictions else self.optional()

    def _dependency(self, role: str | None) -> Any:
        # A plain def: FastAPI runs it in its thread pool, where a first scrypt or a store refresh blocks no event loop.
        def authorize(request: Request) -> Identity:
            return self.authorize_request(request, role)

        return authorize

    def authorize_request(self, request: Request, role: str | None) -> Identity:
        """The caller of `request` if it may act as `role`; else the denial recorded and raised as 401/403/503."""
        try:
            return self.check(credential_from(request.headers), role)
        except AccessDenied as denial:
            route = getattr(request.scope.get("route"), "path", None) or request.url.path
            self.record_denial(denial, route=route, method=request.method, required=role,
                               client=request.client.host if request.client else None)
            challenge = {401: 'Bearer realm="loopwise"', 403: 'Bearer realm="loopwise", error="insufficient_scope"'}
            if denial.status == 401 and (denial.key_id or denial.token_subject):
                challenge[401] += ', error="invalid_token"'
            headers = {"WWW-Authenticate": challenge[denial.status]} if denial.status in challenge else None
            raise HTTPException(denial.status, detail=denial.reason, headers=headers) from None


# Module-level dependencies read the Authenticator installed on the app, so route signatures can use
# module-level aliases (`Operator = Annotated[Identity, require("operator")]`) in an app factory, where
# the Authenticator only exists once the app is built. FastAPI resolves string annotations
# (`from __future__ import annotations`) against module globals, so an alias built inside the factory
# from a local Authenticator would not resolve.

def _installed(request: Request) -> Authenticator:
    auth = getattr(request.app.state, "authenticator", None)
    if auth is None:
        raise RuntimeError("no Authenticator on this app: call Authenticator(settings, events).install(app)")
    return auth  # type: ignore[no-any-return]


def require(role: str) -> Any:
    """A dependency on the installed Authenticator: callers with at least `role`; returns their Identity."""
    check_role(role)

    def authorize(request: Request) -> Identity:
        return _installed(request).authorize_request(request, role)

    return Depends(authorize)


def optional() -> Any:
    """A dependency on the installed Authenticator: anyone, but a credential that is sent must be valid."""
    def authorize(request: Request) -> Identity:
        return _installed(request).authorize_request(request, None)

    return Depends(authorize)


def for_predictions() -> Any:
    """A dependency on the installed Authenticator: a viewer when `require_key_for_predictions`, else anyone."""
    def authorize(request: Request) -> Identity:
        auth = _installed(request)
        return auth.authorize_request(request, "viewer" if auth.auth.require_key_for_predictions else None)

    return Depends(authorize)


# -- the CLI side ------------------------------------------------------------------------

def local_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container user without a passwd entry
        return str(os.getuid())


def auth_configured(settings: Settings, events: EventStore) -> bool:
    """Whether the CLI asks for credentials: once any key was ever created, or when OIDC is configured."""
    return oidc_configured(settings.serving.auth) or ApiKeys(events).exist()


def authorize_cli(settings: Settings, role: str, key: str | None = None, *, command: str = "cli",
                  events: EventStore | None = None) -> Identity:
    """The identity a CLI command runs as, or AccessDenied (recorded as `auth.denied`); the rule is in the module doc.

    `key` (default: the environment's LOOPWISE_API_KEY) is an API key or an OIDC token.
    """
    check_role(role)
    store = events if events is not None else open_for(settings)
    if not auth_configured(settings, store):
        return Identity(f"local:{local_user()}", "admin", "local")
    credential = key if key is not None else os.environ.get(ENV_KEY)
    authenticator = Authenticator(settings, store)
    try:
        if not credential:
            raise Unauthenticated(f"`loopwise {command}` needs the {role} role: set {ENV_KEY} to an API key "
                                  "(or an OIDC token) with that role")
        return authenticator.check(credential, role)
    except AccessDenied as denial:
        authenticator.record_denial(denial, route=f"cli:{command}", method="CLI", required=role,
                                    client=f"local:{local_user()}")
        raise
