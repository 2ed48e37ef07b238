"""Serving: Loopwise's `/get-online-features` against stock `feast serve`, same store, same rows, same body.

Both servers read one platform's Feast registry and SQLite online store (built by `loopwise demo` on the
test profile, or an existing data root with `--data-dir`). wrk (Debian package `wrk`; only this benchmark
needs it, not the tests) POSTs one body, a few customers of one feature service, at a fixed concurrency
and reports requests/s and latency percentiles for each; the responses are checked to carry the same
values first. Appends the figures to RESULTS.md.

    python benchmarks/serving.py [--duration 20] [--connections 8] [--workers 1] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from common import busy_seconds, free_port, group_seconds, post
from loopwise.processes import stop_group

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).with_name("RESULTS.md")
BIN = Path(sys.executable).parent
SERVICE = "escalation_v1"
NOT_STALE = timedelta(days=36500)  # the demo's data is old; staleness is not what is measured

# wrk: POST one body; at the end print the figures as one JSON line (latencies in microseconds).
WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = io.open(os.getenv("BODY_FILE")):read("*a")
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRK {"requests": %d, "seconds": %f, "p50": %d, "p90": %d, "p99": %d, "max": %d, '
    .. '"errors": %d}\\n', summary.requests, summary.duration / 1e6, latency:percentile(50),
    latency:percentile(90), latency:percentile(99), latency.max,
    e.connect + e.read + e.write + e.status + e.timeout))
end
"""


@dataclass(frozen=True)
class Load:
    """What wrk measured against one server."""

    requests_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    requests: int
    errors: int
    others: float  # share of the machine's CPU time that processes other than the server and wrk took meanwhile


def features_app():  # type: ignore[no-untyped-def]
    """The app uvicorn serves for this benchmark: Loopwise's feature router over LOOPWISE_BENCH_FEAST."""
    from fastapi import FastAPI
    from loopwise.features.store import FeastLocation, feature_store
    from loopwise.serving.feature_server import feature_router

    location = FeastLocation(ROOT / "feature_repo", Path(os.environ["LOOPWISE_BENCH_FEAST"]))
    app = FastAPI()
    app.include_router(feature_router(lambda: feature_store(location), NOT_STALE))
    return app


def build_platform(work: Path) -> Path:
    """A data root built the way the demo builds it (two landed days through the main job), on the test profile."""
    data = work / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOPWISE")}
    env.update(LOOPWISE_PROFILE="test", LOOPWISE_DATA_DIR=str(data))
    print(f"building a platform under {data} (loopwise demo, about a minute)...", flush=True)
    done = subprocess.run([str(BIN / "loopwise"), "demo"], env=env, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"loopwise demo failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return data


def feast_repo(work: Path, feast_dir: Path) -> Path:
    """A feature_store.yaml for `feast serve` on the same registry and online store (the lake offline store, as
    feature_repo/feature_store.yaml configures it)."""
    repo = work / "feast-serve"
    repo.mkdir(exist_ok=True)
    (repo / "feature_store.yaml").write_text(
        "project: loopwise\nprovider: local\n"
        f"registry: {feast_dir / 'registry.db'}\n"
        f"online_store:\n  type: sqlite\n  path: {feast_dir / 'online.db'}\n"
        "offline_store:\n  type: loopwise.features.offline.LakeOfflineStore\n"
        "entity_key_serialization_version: 3\n")
    return repo


def customers(feast_dir: Path, count: int) -> list[str]:
    """Customers present in both views of the service, read from the online store."""
    conn = sqlite3.connect(f"{(feast_dir / 'online.db').as_uri()}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT DISTINCT s.entity_key FROM loopwise_customer_support s JOIN "
                            "loopwise_customer_orders o USING (entity_key) ORDER BY s.entity_key LIMIT ?",
                            (count,)).fetchall()
    finally:
        conn.close()
    from feast.infra.key_encoding_utils import deserialize_entity_key

    return [deserialize_entity_key(key, 3).entity_values[0].string_val for (key,) in rows]


@contextmanager
def server(command: list[str], url: str, env: dict[str, str], log: Path) -> Iterator[int]:
    """A server process, up when its /health answers, stopped (with its workers) afterwards."""
    with log.open("w") as out:
        process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise SystemExit(f"{command[0]} exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"{url} did not answer /health within 120 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
        yield process.pid  # the server's process group
    finally:
        stop_group(process, 20)  # its own session: the server and the workers it forked, nothing else


def wrk(url: str, body_file: Path, script: Path, duration: int, connections: int, threads: int, group: int) -> Load:
    """wrk's figures for POSTing the body for `duration` seconds (after a 3 s warm-up that is not counted), and
    how much of the machine other processes took meanwhile (the cores are shared)."""
    import resource

    env = {**os.environ, "BODY_FILE": str(body_file)}
    base = ["wrk", "-t", str(threads), "-c", str(connections), "-s", str(script), "--timeout", "10s", url]
    subprocess.run(base[:1] + ["-d", "3s"] + base[1:], env=env, capture_output=True, check=True)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy, served, started = busy_seconds(), group_seconds(group), time.monotonic()
    done = subprocess.run(base[:1] + ["-d", f"{duration}s"] + base[1:], env=env, capture_output=True, text=True,
                          check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    ours = (group_seconds(group) - served) + (after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime)
    others = max(0.0, busy_seconds() - busy - ours) / ((time.monotonic() - started) * (os.cpu_count() or 1))
    line = next(line for line in done.stdout.splitlines() if line.startswith("WRK "))
    figures = json.loads(line[4:])
    return Load(figures["requests"] / figures["seconds"], figures["p50"] / 1e3, figures["p90"] / 1e3,
                figures["p99"] / 1e3, figures["max"] / 1e3, figures["requests"], figures["errors"], others)


def same_values(ours: dict, theirs: dict) -> bool:
    """The same value for every name (Feast orders a view's features arbitrarily; Loopwise says NULL_VALUE where
    Feast's Python server says PRESENT for a stored null)."""
    def columns(payload: dict) -> dict:
        return {name: (r["values"], [("PRESENT" if s == "NULL_VALUE" else s) for s in r["statuses"]])
                for name, r in zip(payload["metadata"]["feature_names"], payload["results"], strict=True)}
    return columns(ours) == columns(theirs)


@dataclass(frozen=True)
class FeaturesResult:
    feast: Load
    loopwise: Load
    identical: bool
    entities: int
    features: int
    workers: int
    connections: int
    threads: int
    duration: int


def bench_features(feast_dir: Path, work: Path, duration: int = 20, connections: int = 8, workers: int = 1,
                   threads: int = 1, entities: int = 4) -> FeaturesResult:
    """`feast serve` and Loopwise's /get-online-features side by side on one store, one body, the same load."""
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install -y wrk")
    ids = customers(feast_dir, entities)
    body = json.dumps({"feature_service": SERVICE, "entities": {"customer_id": ids}}).encode()
    body_file, script = work / "body.json", work / "post.lua"
    body_file.write_bytes(body)
    script.write_text(WRK_SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOPWISE")}
    env.update(LOOPWISE_PROFILE="test", LOOPWISE_DATA_DIR=str(feast_dir.parent), LOOPWISE_BENCH_FEAST=str(feast_dir),
               PYTHONPATH=str(ROOT / "benchmarks"))
    loads, answers = {}, {}
    feast_port, ours_port = free_port(), free_port()
    runs = {
        # Stock: Feast's defaults (gunicorn + uvicorn workers, max-requests 1000), its access log off like ours.
        "feast": ([str(BIN / "feast"), "-c", str(feast_repo(work, feast_dir)), "serve", "-h", "127.0.0.1",
                   "-p", str(feast_port), "-w", str(workers), "--no-access-log"], f"http://127.0.0.1:{feast_port}"),
        "loopwise": ([str(BIN / "uvicorn"), "serving:features_app", "--factory", "--host", "127.0.0.1",
                      "--port", str(ours_port), "--workers", str(workers), "--no-access-log", "--loop", "uvloop",
                      "--http", "httptools", "--log-level", "warning"], f"http://127.0.0.1:{ours_port}"),
    }
    for name, (command, url) in runs.items():
        with server(command, url, env, work / f"{name}.log") as group:
            answers[name] = post(f"{url}/get-online-features", body)
            print(f"{name}: measuring {duration} s at concurrency {connections}...", flush=True)
            loads[name] = wrk(f"{url}/get-online-features", body_file, script, duration, connections, threads, group)
            print(f"  {loads[name]}", flush=True)
    features = len(answers["loopwise"]["metadata"]["feature_names"]) - 1
    return FeaturesResult(loads["feast"], loads["loopwise"], same_values(answers["loopwise"], answers["feast"]),
                          len(ids), features, workers, connections, threads, duration)


def features_entry(result: FeaturesResult) -> list[str]:
    from common import machine

    f, o = result.feast, result.loopwise
    return [
        f"Machine: {machine()}. Body: feature service {SERVICE} ({result.features} features of 2 views) for "
        f"{result.entities} customers, one SQLite online store. wrk -t{result.threads} -c{result.connections} "
        f"-d{result.duration}s after a 3 s warm-up; {result.workers} server worker(s) each, access logs off; feast "
        "serve with its defaults otherwise (gunicorn with uvicorn workers, each recycled after ~1,000 requests).\n",
        "| /get-online-features | requests/s | p50 | p90 | p99 | max | errors |",
        "|---|---|---|---|---|---|---|",
        f"| feast serve (stock) | {f.requests_per_s:,.0f} | {f.p50_ms:.1f} ms | {f.p90_ms:.1f} ms | {f.p99_ms:.1f} ms | "
        f"{f.max_ms:.0f} ms | {f.errors} |",
        f"| Loopwise (uvicorn) | {o.requests_per_s:,.0f} | {o.p50_ms:.2f} ms | {o.p90_ms:.2f} ms | {o.p99_ms:.2f} ms | "
        f"{o.max_ms:.0f} ms | {o.errors} |",
        "",
        f"Ratio: {o.requests_per_s / f.requests_per_s:.1f}x the requests/s, p99 {f.p99_ms / o.p99_ms:.0f}x lower. "
        f"Same values in both answers: {result.identical}. CPU taken by other processes on the machine during each "
        f"run: feast serve {f.others:.0%}, Loopwise {o.others:.0%} of all cores.",
    ]


def append_results(title: str, lines: list[str]) -> None:
    from common import commit

    with RESULTS.open("a") as f:
        f.write("\n".join([f"\n## {title} — {datetime.now():%Y-%m-%d %H:%M} — commit {commit()}", *lines]) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=20, help="seconds of load per server (default 20)")
    parser.add_argument("--connections", type=int, default=8, help="concurrent connections (default 8)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1: the machine has few cores)")
    parser.add_argument("--workers", type=int, default=1, help="server worker processes, the same for both (default 1)")
    parser.add_argument("--entities", type=int, default=4, help="customers per request (default 4)")
    parser.add_argument("--data-dir", type=Path, help="an existing data root (LOOPWISE_DATA_DIR) to serve; "
                                                      "default: build one with `loopwise demo` in a temporary folder")
    parser.add_argument("--no-record", action="store_true", help="print the figures, do not append to RESULTS.md")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="loopwise-serving-"))
    try:
        data = args.data_dir.resolve() if args.data_dir else build_platform(work)
        result = bench_features(data / "feast", work, args.duration, args.connections, args.workers, args.threads,
                                args.entities)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lines = features_entry(result)
    print("\n".join(lines))
    if not args.no_record:
        append_results("serving.py (features)", lines)
    if not result.identical:
        raise SystemExit("the two servers answered different values")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # common: machine() and commit()
    main()
