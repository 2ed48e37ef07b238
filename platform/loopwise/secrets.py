"""Secrets by name: from an environment variable or a mounted file, never from the repository.

A secret named `postgres_password` is read from `LOOPWISE_SECRET_POSTGRES_PASSWORD`, or from the
file `<LOOPWISE_SECRETS_DIR>/postgres_password` (a Kubernetes secret volume or a Vault agent's
rendered file; default /var/run/secrets/loopwise). Every value read is registered so that
`redact` can scrub it from logs, events, metadata and error messages.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from pathlib import Path
from typing import Any

DEFAULT_SECRETS_DIR = "/var/run/secrets/loopwise"
MASK = "***"
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_known: set[str] = set()
_lock = threading.Lock()


class SecretMissing(LookupError):
    """A configured secret is not set; the message names it and where it was looked for."""


def _env_name(name: str) -> str:
    return f"LOOPWISE_SECRET_{name.upper()}"


def get_secret(name: str, environ: dict[str, str] | None = None) -> str:
    """The value of the named secret; raises SecretMissing naming where it looked."""
    if not _NAME.match(name):
        raise ValueError(f"secret names are lower_snake_case, got {name!r}")
    env = os.environ if environ is None else environ
    value = env.get(_env_name(name))
    folder = Path(env.get("LOOPWISE_SECRETS_DIR", DEFAULT_SECRETS_DIR))
    if value is None and (folder / name).is_file():
        value = (folder / name).read_text().rstrip("\n")
    if not value:
        raise SecretMissing(f"secret {name!r} is not set: set {_env_name(name)} or mount the file {folder / name}")
    with _lock:
        _known.add(value)
    install_log_redaction()
    return value


def redact(value: Any) -> Any:
    """`value` with every known secret replaced by ***, through strings, lists and dicts."""
    if isinstance(value, str):
        for secret in _known:
            if secret and secret in value:
                value = value.replace(secret, MASK)
        return value
    if isinstance(value, dict):
        return {redact(k): redact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact(v) for v in value)
    return value


_factory_installed = False


def install_log_redaction() -> None:
    """Mask known secrets in every log record as it is created, whatever handler emits it (idempotent).

    A filter on handlers would miss handlers added later; the record factory sees every record.
    """
    global _factory_installed
    with _lock:
        if _factory_installed:
            return
        previous = logging.getLogRecordFactory()

        def redacting_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            if _known:
                record.msg = redact(record.getMessage())
                record.args = None
            return record

        logging.setLogRecordFactory(redacting_factory)
        _factory_installed = True
