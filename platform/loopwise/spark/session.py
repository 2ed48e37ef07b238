"""One Spark Connect session per process: Sail embedded by default, any server by URL.

The embedded Sail server starts once per process (about 0.8 s here) and is reused by every
caller; it is stopped at exit. `remote` may be `sc://host:15002` (a Spark Connect server with
delta-spark) or `local[N]`, which starts a real Apache Spark Connect server from the pip package.
"""

from __future__ import annotations

import atexit
import logging
import os
import secrets
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)
_lock = threading.Lock()
_sail_server: object | None = None
_local_server: Any = None  # the classic session whose plugin serves a local Apache Spark Connect server
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

    Each URL gets its own session, whatever was connected before in this process. `conf` applies
    when this call starts a local Apache Spark server (e.g. spark.driver.memory).
    """
    with _lock:
        url = remote or _sail_url()
        session = _sessions.get(url)
        if session is None:
            if url.startswith("local"):
                session = _start_local(url, conf or {})
            else:
                session = _open(url, token_from_env=bool(remote))
            # Landed timestamps carry no zone and are read as UTC on every engine; Sail would
            # otherwise stamp them with the machine's zone name and refuse unions with the table's.
            session.conf.set("spark.sql.session.timeZone", "UTC")
            _sessions[url] = session
        return session


def _open(url: str, token_from_env: bool = True) -> SparkSession:
    """A new session on a Spark Connect server at `url` (`sc://...`).

    pyspark takes a token missing from the URL from SPARK_CONNECT_AUTHENTICATE_TOKEN, and a token
    turns the channel into TLS: right for a user's server, wrong for the embedded Sail server (no
    TLS, no token), where a token left in the environment would hang every call.
    """
    from pyspark.sql.connect.client import DefaultChannelBuilder
    from pyspark.sql.connect.session import SparkSession as ConnectSession

    class UrlOnlyChannel(DefaultChannelBuilder):
        @property
        def token(self) -> str | None:
            return self._params.get(DefaultChannelBuilder.PARAM_TOKEN)

    channel = DefaultChannelBuilder(url) if token_from_env else UrlOnlyChannel(url)
    os.environ["SPARK_CONNECT_MODE_ENABLED"] = "1"  # pyspark.sql.functions then build Connect columns
    return ConnectSession.builder.channelBuilder(channel).create()


def _start_local(url: str, conf: dict[str, str]) -> SparkSession:
    """Start a real Apache Spark Connect server from the pip package and open a session on it.

    The server takes a free port (several processes may each run one) and its token stays out of
    this process's environment once the JVM has it, so child processes and other sessions never
    pick it up. pyspark's own local mode would listen on 15002 and hand back the process's
    default Connect session when there is one (Sail's, if Sail was connected first).
    """
    from pyspark.sql import SparkSession as ClassicSession
    from pyspark.sql.connect.session import SparkSession as ConnectSession

    given = os.environ.get("SPARK_CONNECT_AUTHENTICATE_TOKEN")
    token = os.environ["SPARK_CONNECT_AUTHENTICATE_TOKEN"] = given or secrets.token_urlsafe(24)
    connect_mode = os.environ.pop("SPARK_CONNECT_MODE_ENABLED", None)  # the server is a classic session
    server_conf = {"spark.ui.enabled": "false", "spark.connect.grpc.binding.port": "0", **conf}
    try:
        try:
            ConnectSession._start_connect_server(url, server_conf)
        except Exception as exc:
            if "JAVA_GATEWAY_EXITED" not in str(exc):
                raise
            # pyspark forks its Java launcher with a preexec_fn; with a gRPC channel of this process busy (a Sail
            # session), grpcio >= 1.80 can crash that child before its exec (grpc/grpc#43055, open). Seen once in CI.
            log.warning("Apache Spark's launcher exited before it started (%s); starting it once more", exc)
            ConnectSession._start_connect_server(url, server_conf)
    finally:
        if given is None:
            del os.environ["SPARK_CONNECT_AUTHENTICATE_TOKEN"]
        if connect_mode is not None:
            os.environ["SPARK_CONNECT_MODE_ENABLED"] = connect_mode
    global _local_server
    _local_server = ClassicSession._instantiatedSession
    service = getattr(_local_server._jvm, "org.apache.spark.sql.connect.service.SparkConnectService$")
    port = getattr(service, "MODULE$").localPort()
    session = _open(f"sc://localhost:{port}/;token={token}")
    if "spark.sql.shuffle.partitions" not in conf:  # Spark's 200 is for clusters: a local run waits on 200 tiny tasks
        session.conf.set("spark.sql.shuffle.partitions", "4")
    return session


def engine_version(session: SparkSession) -> str:
    """What the server says it is: `Sail 0.7.2` or Apache Spark's version, e.g. `4.2.0`."""
    version = str(session.range(1).selectExpr("version() AS v").collect()[0]["v"])
    return f"Sail {version}" if version.startswith("0.") else version.split()[0]


def stop() -> None:
    """Stop every session and the embedded server (called at exit)."""
    global _sail_server, _local_server
    with _lock:
        for session in _sessions.values():
            try:
                session.stop()
            except Exception as exc:  # a dead server must not block shutdown
                log.debug("ignoring error while stopping a Spark session: %s", exc)
        _sessions.clear()
        if _local_server is not None:
            _local_server.stop()
            _local_server = None
        if _sail_server is not None:
            _sail_server.stop()  # type: ignore[attr-defined]
            _sail_server = None


atexit.register(stop)
