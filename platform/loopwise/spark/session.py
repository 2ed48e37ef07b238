"""One Spark Connect session per process: Sail embedded by default, any server by URL.

The embedded Sail server starts once per process (about 0.8 s here) and is reused by every
caller; it is stopped at exit. `remote` may be `sc://host:15002` (a Spark Connect server with
delta-spark) or `local[N]`, which starts a real Apache Spark Connect server from the pip package.
"""

from __future__ import annotations

import atexit
import logging
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)
_lock = threading.Lock()
_sail_server: object | None = None
_sessions: dict[str, SparkSession] = {}


def _sail_url() -> str:
    global _sail_server
    if _sail_server is None:
        from pysail.spark import SparkConnectServer

        server = SparkConnectServer("127.0.0.1", 0)
        server.start(background=True)
        _sail_server = server
        log.info("started the embedded Sail Spark Connect server on %s", server.listening_address)
    host, port = _sail_server.listening_address  # type: ignore[attr-defined]
    return f"sc://{host}:{port}"


def connect(remote: str | None = None, conf: dict[str, str] | None = None) -> SparkSession:
    """A session on `remote`, or on the embedded Sail server when `remote` is empty.

    `conf` applies when this call starts a local Apache Spark server (e.g. spark.driver.memory).
    """
    from pyspark.sql import SparkSession

    with _lock:
        url = remote or _sail_url()
        session = _sessions.get(url)
        if session is None:
            builder = SparkSession.builder.remote(url)
            if url.startswith("local"):
                builder = builder.config("spark.sql.shuffle.partitions", "4").config("spark.ui.enabled", "false")
                for key, value in (conf or {}).items():
                    builder = builder.config(key, value)
                session = builder.getOrCreate()
            else:
                session = builder.create()
            # Landed timestamps carry no zone and are read as UTC on every engine; Sail would
            # otherwise stamp them with the machine's zone name and refuse unions with the table's.
            session.conf.set("spark.sql.session.timeZone", "UTC")
            _sessions[url] = session
        return session


def stop() -> None:
    """Stop every session and the embedded server (called at exit)."""
    global _sail_server
    with _lock:
        for session in _sessions.values():
            try:
                session.stop()
            except Exception as exc:  # a dead server must not block shutdown
                log.debug("ignoring error while stopping a Spark session: %s", exc)
        _sessions.clear()
        if _sail_server is not None:
            _sail_server.stop()  # type: ignore[attr-defined]
            _sail_server = None


atexit.register(stop)
