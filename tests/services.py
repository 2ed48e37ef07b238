"""Real servers for tests, from Debian's packages, started on loopback in temporary folders."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# pyspark keeps Connect client state in os.environ (SPARK_CONNECT_MODE_ENABLED; pyspark's own local
# mode also its server's token, which sent to the embedded Sail server hangs the child): a child
# process starts from a clean environment instead.
_PYSPARK_LOCAL_STATE = ("SPARK_CONNECT_AUTHENTICATE_TOKEN", "SPARK_LOCAL_REMOTE", "SPARK_CONNECT_MODE_ENABLED")


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment for a child process, without pyspark's local-mode state, plus `extra`."""
    return {**{k: v for k, v in os.environ.items() if k not in _PYSPARK_LOCAL_STATE}, **extra}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Postgres:
    url: str
    password: str


@contextmanager
def postgres_server(password: str) -> Iterator[Postgres]:
    """A PostgreSQL server with password authentication, as the `prod` profile would use."""
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    if not bins:
        pytest.skip("PostgreSQL server not installed (apt-get install postgresql): the PostgreSQL tests cannot run")
    bindir = bins[-1]
    folder = tempfile.mkdtemp(prefix="loopwise-pg-")
    run_as: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root: use Debian's postgres user
        user = pwd.getpwnam("postgres")
        os.chown(folder, user.pw_uid, user.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    pwfile = os.path.join(folder, "pw")
    with open(pwfile, "w") as f:
        f.write(password)
    if run_as:
        os.chown(pwfile, pwd.getpwnam("postgres").pw_uid, -1)
    data, port = os.path.join(folder, "data"), free_port()
    subprocess.run([*run_as, f"{bindir}/initdb", "-D", data, "-U", "loopwise", "--auth=scram-sha-256",
                    f"--pwfile={pwfile}"], check=True, capture_output=True)
    subprocess.run([*run_as, f"{bindir}/pg_ctl", "-D", data, "-w", "-l", os.path.join(folder, "log"), "-o",
                    f"-p {port} -k {folder} -c listen_addresses=127.0.0.1", "start"], check=True, capture_output=True)
    try:
        yield Postgres(f"postgresql://loopwise@127.0.0.1:{port}/postgres", password)
    finally:
        subprocess.run([*run_as, f"{bindir}/pg_ctl", "-D", data, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def redis_server() -> Iterator[str]:
    """A Redis server on a free loopback port; yields its host:port."""
    import time

    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server not installed (apt-get install redis-server): the Redis tests cannot run")
    folder, port = tempfile.mkdtemp(prefix="loopwise-redis-"), free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", folder], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import redis

        client = redis.Redis(host="127.0.0.1", port=port)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)


def wait_http(url: str, proc: subprocess.Popen, what: str, seconds: float = 90) -> None:
    import time
    import urllib.request

    deadline = time.monotonic() + seconds
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"{what} did not start on {url}")
            time.sleep(0.3)


@contextmanager
def server_process(args: list[str], log: Path, env: dict[str, str] | None = None, grace_seconds: float = 60,
                   signum: int = signal.SIGTERM) -> Iterator[subprocess.Popen]:
    """A server started from the repository in its own session, its output in `log`, stopped with its workers
    afterwards: `signum`, then SIGKILL after `grace_seconds` (`loopwise.processes.running`)."""
    from loopwise.processes import running

    with running(args, log, env, ROOT, grace_seconds, signum) as proc:
        yield proc


def wait_ready(url: str, proc: subprocess.Popen, log: Path, seconds: float = 180,
               context: ssl.SSLContext | None = None) -> None:
    """Until `url`/readyz answers 200 (over TLS with `context`); fails with the server's log if it exits first or
    the time runs out."""
    import time
    import urllib.request

    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=5, context=context) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"loopwise serve did not become ready on {url}: {log.read_text()[-4000:]}")
        time.sleep(0.3)


@contextmanager
def s3_server() -> Iterator[str]:
    """moto's S3-compatible server on loopback; yields its endpoint URL."""
    import sys

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url, proc, "moto's S3 server")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@contextmanager
def mlflow_server(backend_uri: str, artifact_root: str, env: dict[str, str]) -> Iterator[str]:
    """A real MLflow tracking server on loopback; clients write artifacts to `artifact_root` themselves."""
    import sys

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--backend-store-uri", backend_uri, "--default-artifact-root", artifact_root,
                             "--no-serve-artifacts", "--workers", "1"],
                            env=child_env(**env), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", proc, "the MLflow server", seconds=120)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)
