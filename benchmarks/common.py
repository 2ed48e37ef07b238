"""What every benchmark records with its figures (the machine, the commit measured, the results file), and what
the serving benchmarks share: free ports, servers up and down, CPU accounting and wrk rounds.

Imports nothing heavy: `landing.py` measures its children's peak memory, which counts what the
parent held when it forked.
"""

from __future__ import annotations

import json
import os
import platform as stdlib_platform
import socket
import statistics
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")


def machine() -> str:
    """Cores, CPU model, memory and kernel, as each entry's `Machine:` line gives them."""
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, {stdlib_platform.system()} {stdlib_platform.release()}"


def commit() -> str:
    """The commit measured; `+dirty` when the working tree has uncommitted changes."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True).stdout
    return head + ("+dirty" if dirty.strip() else "")


def load_average() -> str:
    """The 1, 5 and 15-minute load averages: the machine may be shared, and its other work slows a run."""
    return " / ".join(open("/proc/loadavg").read().split()[:3])


# Serving benchmarks: wrk POSTs the file named by BODY_FILE and prints its figures as one JSON line (microseconds).
WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = io.open(os.getenv("BODY_FILE")):read("*a")
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRK {"requests": %d, "seconds": %f, "p50": %d, "p99": %d, "errors": %d}\\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.status + e.timeout))
end
"""


@dataclass(frozen=True)
class Round:
    """What wrk measured against a server, and what the server and the rest of the machine spent meanwhile."""

    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_ms_per_request: float  # the server's own CPU (all its threads) per answered request
    others: float  # share of the machine's CPU that other processes took meanwhile


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: bytes, timeout: float = 30) -> dict:
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def busy_seconds() -> float:
    """CPU time (all cores) the machine has spent busy since boot, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def group_seconds(group: int) -> float:
    """CPU time used so far by one process group (a server, its workers, and the workers it has reaped)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group:  # pgrp
            total += sum(int(v) for v in fields[11:15])  # utime, stime, and those of its reaped children
    return total / os.sysconf("SC_CLK_TCK")


def ready(proc: subprocess.Popen, url: str, log: Path, what: str, seconds: float = 300) -> None:
    """Wait until `url`/readyz answers 200; stop the server and exit naming it when it does not in time."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(1)
    stop(proc)
    raise SystemExit(f"{what} did not become ready within {seconds:.0f} s:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    """Stop a server started in its own session: the server and its workers, nothing else."""
    from loopwise.processes import stop_group

    stop_group(proc, 60)


def wrk(url: str, body_file: Path, script: Path, seconds: int, connections: int, group: int,
        warm_up: bool = False) -> Round:
    """One wrk round (one thread) against the server in process group `group`; with `warm_up`, after 3 s not
    counted. The server's CPU per request and the other processes' share of the machine are measured beside it."""
    import resource

    env = {**os.environ, "BODY_FILE": str(body_file)}
    base = ["wrk", "-t", "1", "-c", str(connections), "--timeout", "10s", "-s", str(script)]
    if warm_up:
        subprocess.run([*base, "-d", "3s", url], env=env, capture_output=True, check=True)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy, served, started = busy_seconds(), group_seconds(group), time.monotonic()
    out = subprocess.run([*base, "-d", f"{seconds}s", url], env=env, capture_output=True, text=True, check=True).stdout
    ours = group_seconds(group) - served
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    load = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime  # wrk's own
    others = max(0.0, busy_seconds() - busy - ours - load) / ((time.monotonic() - started) * (os.cpu_count() or 1))
    figures = json.loads(next(line for line in out.splitlines() if line.startswith("WRK "))[4:])
    return Round(figures["requests"] / figures["seconds"], figures["p50"] / 1e3, figures["p99"] / 1e3,
                 figures["errors"], ours * 1e3 / max(figures["requests"], 1), others)


def median_round(rounds: list[Round]) -> Round:
    def median(field: str) -> float:
        return statistics.median(getattr(r, field) for r in rounds)

    return Round(median("rps"), median("p50_ms"), median("p99_ms"), sum(r.errors for r in rounds),
                 median("cpu_ms_per_request"), median("others"))
