"""The prediction log's cost: append throughput and latency, and what it takes from a service's throughput.

1. append: `--threads` threads append single records for `--seconds`, then one event loop with
   `--coroutines` tasks does the same through `append_async`. Records/s, latency p50/p99, records per
   fsync, and CPU per record (every thread of the process, the record's construction included).
   Then `flush()` moves what was appended into Delta: rows/s.
2. service: a minimal FastAPI predict route under uvicorn (one worker), driven by wrk (Debian package
   `wrk`) at `--connections`, in three modes, interleaved `--repeats` times: bare; a control that builds
   and encodes the record and awaits once but writes nothing (what any awaited log costs); and the log,
   awaiting `append_async` before it answers, its flusher running as `loopwise serve` runs it. The route
   first burns `--work-us` of CPU, as a model would; 0 is the worst case, a service that does nothing but
   answer. Requests/s, latency, and the server's CPU per request (from /proc: steadier than requests/s
   on a shared machine), at each `--switch-intervals` of the server. Appends the figures to RESULTS.md.

    python benchmarks/predlog.py [--seconds 5] [--threads 8] [--coroutines 64] [--work-us 0,1000]
                                 [--switch-intervals 0,0.0005] [--repeats 3] [--dry-run]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import commit, free_port, machine
from loopwise.lake.tables import TableRef
from loopwise.serving.predlog import Prediction, PredictionLog

RESULTS = Path(__file__).with_name("RESULTS.md")
FEATURES = json.dumps({"orders_30d": 4, "amount_eur_sum_90d": 812.5, "refund_rate_90d": 0.25, "tenure_days": 412})
INPUTS = json.dumps({"customer_id": "C000123", "order_id": "O99812", "amount": 129.9, "channel": "web"})

SERVER = r"""
import asyncio, json, sys, time, uuid
from datetime import UTC, datetime
from pathlib import Path
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel
from loopwise.lake.tables import TableRef
from loopwise.serving.predlog import Prediction, PredictionLog

port, work_s, mode, log_dir, table_uri = int(sys.argv[1]), float(sys.argv[2]) / 1e6, sys.argv[3], sys.argv[4], sys.argv[5]
if float(sys.argv[6]) > 0:
    sys.setswitchinterval(float(sys.argv[6]))
log = None
if mode == "log":
    log = PredictionLog(Path(log_dir), TableRef("predictions", table_uri))
    log.start_flusher(5.0)
app = FastAPI()

class Body(BaseModel):
    instances: list[dict]

@app.post("/v1/models/m:predict")
async def predict(body: Body) -> dict:
    end = time.perf_counter() + work_s
    while time.perf_counter() < end:  # the model's CPU, holding the GIL as inference would
        pass
    rid = uuid.uuid4().hex
    if mode != "bare":
        record = Prediction(rid, datetime.now(UTC), "m", "3", "champion", json.dumps(body.instances[0]),
                            json.dumps(body.instances[0]), 0.5)
        if log is not None:
            await log.append_async([record])
        else:  # control: the record built and encoded, and the handler suspended once, but nothing written
            record.line()
            await asyncio.sleep(0)
    return {"predictions": [{"score": 0.5, "request_id": rid}]}

uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
"""

WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = os.getenv("BODY")
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRK {"requests": %d, "seconds": %f, "p50": %d, "p99": %d, "errors": %d}\\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.status + e.timeout))
end
"""


@dataclass(frozen=True)
class Appends:
    records: int
    seconds: float
    p50_ms: float
    p99_ms: float
    per_fsync: float
    cpu_us: float  # CPU of the whole process per record

    @property
    def per_s(self) -> float:
        return self.records / self.seconds


def record(rid: str) -> Prediction:
    return Prediction(rid, datetime.now(UTC), "order-refund-risk", "3", "champion", FEATURES, INPUTS, 0.42)


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def measured(log: PredictionLog, latencies: list[float], seconds: float, cpu: float) -> Appends:
    latencies.sort()
    stats = log.stats
    return Appends(len(latencies), seconds, percentile(latencies, 0.5) * 1e3, percentile(latencies, 0.99) * 1e3,
                   stats.records / max(stats.groups, 1), cpu / len(latencies) * 1e6)


def thread_appends(work: Path, threads: int, seconds: float, group_commit_ms: float) -> tuple[Appends, PredictionLog]:
    log = PredictionLog(work / f"threads-{group_commit_ms}", TableRef("predictions", str(work / "lake")),
                        group_commit_ms=group_commit_ms)
    latencies: list[list[float]] = [[] for _ in range(threads)]
    stop = time.monotonic() + seconds

    def caller(t: int) -> None:
        mine, i = latencies[t], 0
        while time.monotonic() < stop:
            r = record(f"t{group_commit_ms}-{t}-{i}")
            start = time.perf_counter()
            log.append([r])
            mine.append(time.perf_counter() - start)
            i += 1

    workers = [threading.Thread(target=caller, args=(t,)) for t in range(threads)]
    cpu, began = time.process_time(), time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu
    return measured(log, [x for xs in latencies for x in xs], elapsed, cpu), log


def async_appends(work: Path, coroutines: int, seconds: float, group_commit_ms: float) -> tuple[Appends, PredictionLog]:
    log = PredictionLog(work / f"async-{group_commit_ms}", TableRef("predictions", str(work / "lake")),
                        group_commit_ms=group_commit_ms)
    latencies: list[float] = []

    async def caller(c: int, stop: float) -> None:
        i = 0
        while time.monotonic() < stop:
            r = record(f"a{group_commit_ms}-{c}-{i}")
            start = time.perf_counter()
            await log.append_async([r])
            latencies.append(time.perf_counter() - start)
            i += 1

    async def main() -> None:
        stop = time.monotonic() + seconds
        await asyncio.gather(*(caller(c, stop) for c in range(coroutines)))

    cpu, began = time.process_time(), time.perf_counter()
    asyncio.run(main())
    elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu
    return measured(log, latencies, elapsed, cpu), log


def flushed(log: PredictionLog) -> tuple[int, float]:
    began = time.perf_counter()
    rows = log.close()
    return rows, time.perf_counter() - began


def median(runs: list[Served]) -> Served:
    """Each figure's own median over the runs."""
    mid = len(runs) // 2
    return Served(*(sorted(getattr(r, f) for r in runs)[mid] for f in ("per_s", "p50_ms", "p99_ms", "cpu_us")))


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (the kernel's own journal threads are not in it)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Served:
    per_s: float
    p50_ms: float
    p99_ms: float
    cpu_us: float  # server CPU per request: what a CPU-bound server's capacity is made of


MODES = ("bare", "control", "log")  # no log; the record built and one await, nothing written; the log


def serve_and_load(work: Path, mode: str, work_us: float, switch_s: float, seconds: int, connections: int) -> Served:
    """wrk's figures against the route in one of `MODES`, and the server's CPU per request."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(port), str(work_us), mode,
                               str(work / f"serve-{work_us}-wal"), str(work / f"serve-{work_us}-lake"), str(switch_s)])
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the benchmark server did not start") from None
                time.sleep(0.1)
        script = work / "wrk.lua"
        script.write_text(WRK_SCRIPT)
        env = {**os.environ, "BODY": json.dumps({"instances": [json.loads(INPUTS)]})}
        base = ["wrk", "-t", "1", "-c", str(connections), "-s", str(script), "--timeout", "10s",
                f"http://127.0.0.1:{port}/v1/models/m:predict"]
        subprocess.run(base[:1] + ["-d", "2s"] + base[1:], env=env, capture_output=True, check=True)  # warm-up
        cpu = cpu_seconds(server.pid)
        done = subprocess.run(base[:1] + ["-d", f"{seconds}s"] + base[1:], env=env, capture_output=True, text=True,
                              check=True)
        cpu = cpu_seconds(server.pid) - cpu
        figures = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("WRK "))[4:])
        if figures["errors"]:
            raise SystemExit(f"wrk saw {figures['errors']} errors")
        return Served(figures["requests"] / figures["seconds"], figures["p50"] / 1e3, figures["p99"] / 1e3,
                      cpu / figures["requests"] * 1e6)
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--coroutines", type=int, default=64)
    parser.add_argument("--work-us", default="0,1000", help="CPU per request of the served route, comma-separated")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--serve-seconds", type=int, default=10)
    parser.add_argument("--switch-intervals", default="0,0.0005",
                        help="sys.setswitchinterval of the server, seconds, comma-separated; 0 keeps Python's 5 ms")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each server (the median is reported)")
    parser.add_argument("--dry-run", action="store_true", help="print the figures, do not append them to RESULTS.md")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="loopwise-predlog-"))
    appends: list[tuple[str, float, Appends, int, float]] = []
    served: list[tuple[float, float, dict[str, Served]]] = []
    try:
        for group_commit_ms in (0.0, 2.0):
            for kind, run in ((f"{args.threads} threads, append", thread_appends),
                              (f"{args.coroutines} coroutines, append_async", async_appends)):
                width = args.threads if run is thread_appends else args.coroutines
                result, log = run(work, width, args.seconds, group_commit_ms)
                rows, flush_s = flushed(log)
                assert rows == result.records, f"flushed {rows} rows of {result.records} appended"
                appends.append((kind, group_commit_ms, result, rows, flush_s))
                print(f"{kind}, group_commit_ms={group_commit_ms}: {result.per_s:,.0f} records/s, "
                      f"p50 {result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms, {result.per_fsync:.1f} records/fsync, "
                      f"{result.cpu_us:.0f} us CPU/record; flush {rows / flush_s:,.0f} rows/s")
        if shutil.which("wrk") is None:
            print("wrk not installed (apt-get install wrk): the service comparison is skipped")
        else:
            for switch_s in (float(x) for x in args.switch_intervals.split(",")):
                for work_us in (float(w) for w in args.work_us.split(",")):
                    runs: dict[str, list[Served]] = {mode: [] for mode in MODES}
                    for _ in range(args.repeats):  # interleaved, so that a busy moment hits every mode alike
                        for mode in MODES:
                            runs[mode].append(serve_and_load(work, mode, work_us, switch_s, args.serve_seconds,
                                                             args.connections))
                    medians = {mode: median(r) for mode, r in runs.items()}
                    served.append((switch_s, work_us, medians))
                    print(f"switch interval {switch_s or 0.005} s, route with {work_us:.0f} us of work: " + "; ".join(
                        f"{mode} {m.per_s:,.0f} req/s, {m.cpu_us:.0f} us CPU/request (runs: "
                        f"{[(round(r.per_s), round(r.cpu_us)) for r in runs[mode]]})" for mode, m in medians.items()))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    lines = [f"\n## predlog.py — {datetime.now():%Y-%m-%d %H:%M} — commit {commit()}",
             f"Machine: {machine()}. ext4 on the machine's virtual disk; one record ~{len(record('x').line())} bytes; "
             f"{args.seconds:.0f} s per row.\n",
             "| callers | group_commit_ms | records/s | p50 | p99 | records per fsync | CPU per record | flush rows/s |",
             "|---|---|---|---|---|---|---|---|"]
    for kind, group_commit_ms, r, rows, flush_s in appends:
        lines.append(f"| {kind} | {group_commit_ms:g} | {r.per_s:,.0f} | {r.p50_ms:.2f} ms | {r.p99_ms:.2f} ms | "
                     f"{r.per_fsync:.1f} | {r.cpu_us:.0f} us | {rows / flush_s:,.0f} |")
    if served:
        lines += ["", f"A FastAPI predict route under uvicorn (1 worker, uvloop), wrk -t1 -c {args.connections} for "
                      f"{args.serve_seconds} s on the same machine; the log awaits `append_async` before the answer, "
                      f"flusher running; the control builds and encodes the record and awaits once, writing nothing. "
                      f"Medians of {args.repeats} interleaved runs; server CPU (user + system, from /proc) per request "
                      "is the steadier figure on a shared machine: capacity lost = 1 - CPU without / CPU with.\n",
                  "| server switch interval | route busy-work | req/s bare / control / log | server CPU per request "
                  "bare / control / log | capacity lost to the log (of it: record + await) | p50 bare / log | "
                  "p99 bare / log |",
                  "|---|---|---|---|---|---|---|"]
        for switch_s, work_us, m in served:
            bare, control, logged = m["bare"], m["control"], m["log"]
            lines.append(f"| {(switch_s or 0.005) * 1e3:g} ms | {work_us:.0f} us | {bare.per_s:,.0f} / "
                         f"{control.per_s:,.0f} / {logged.per_s:,.0f} | {bare.cpu_us:.0f} / {control.cpu_us:.0f} / "
                         f"{logged.cpu_us:.0f} us | {1 - bare.cpu_us / logged.cpu_us:.1%} "
                         f"({(control.cpu_us - bare.cpu_us) / logged.cpu_us:.1%}) | "
                         f"{bare.p50_ms:.2f} / {logged.p50_ms:.2f} ms | {bare.p99_ms:.2f} / {logged.p99_ms:.2f} ms |")
    if args.dry_run:
        print("\n".join(lines))
        return
    with RESULTS.open("a") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
