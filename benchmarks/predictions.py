"""Predictions: `loopwise serve` with dynamic micro-batching against one request per scoring, same model.

Both runs serve the same registered text model (MiniLM + features) from the same data root, one
instance per request, with wrk at concurrency 8 on loopback; the prediction log is on in both. Prints
requests/s and p50/p99 for each and the ratio, and appends an entry to benchmarks/RESULTS.md.

Needs a data root where `loopwise demo` has run (`--data-dir`), and wrk (Debian's package).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "RESULTS.md"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(data_dir: Path, port: int, micro_batching: bool) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPARK_CONNECT")}
    env.update(LOOPWISE_DATA_DIR=str(data_dir), LOOPWISE__SERVING__MICRO_BATCHING=str(micro_batching).lower())
    proc = subprocess.Popen([str(Path(sys.executable).parent / "loopwise"), "serve", "--port", str(port)], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(1)
    proc.kill()
    raise SystemExit(f"loopwise serve did not become ready on {port} (is there a demo under {data_dir}?)")


def instance(data_dir: Path, model: str) -> dict:
    sys.path.insert(0, str(ROOT / "platform"))
    from loopwise.backends import Backends
    from loopwise.config import load_settings

    os.environ["LOOPWISE_DATA_DIR"] = str(data_dir)
    backends = Backends(load_settings())
    spec = backends.use_case.model(model)
    row = backends.lake().table(spec.training_table).read().slice(0, 1).to_pylist()[0]
    return {f: row[f] for f in spec.request.model_fields}  # type: ignore[union-attr]


def wrk(url: str, body: str, seconds: int, connections: int) -> dict[str, float]:
    script = Path(tempfile.mkdtemp()) / "post.lua"
    script.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                      f"wrk.body = {json.dumps(body)}\n"
                      "done = function(summary, latency, requests)\n"
                      '  io.write(string.format("RESULT %f %f %f %d %d\\n", summary.requests / (summary.duration / 1e6),'
                      " latency:percentile(50) / 1000, latency:percentile(99) / 1000, summary.errors.status,"
                      " summary.requests))\nend\n")
    out = subprocess.run(["wrk", "-t", "2", "-c", str(connections), "-d", f"{seconds}s", "--latency", "-s", str(script), url],
                         capture_output=True, text=True, check=True).stdout
    rps, p50, p99, errors, requests = re.search(r"RESULT (\S+) (\S+) (\S+) (\d+) (\d+)", out).groups()  # type: ignore[union-attr]
    return {"rps": float(rps), "p50_ms": float(p50), "p99_ms": float(p99), "non_2xx": int(errors),
            "requests": int(requests)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=ROOT / ".loopwise", help="a data root where `loopwise demo` ran")
    parser.add_argument("--model", default="ticket-escalation", help="the model to call (default: the text model)")
    parser.add_argument("--duration", type=int, default=20, help="seconds of load per run")
    parser.add_argument("--connections", type=int, default=8, help="wrk's concurrency")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    body = json.dumps({"instances": [instance(args.data_dir, args.model)]})
    results = {}
    for label, batching in (("one request per scoring", False), ("micro-batching", True)):
        port = free_port()
        proc = serve(args.data_dir, port, batching)
        try:
            url = f"http://127.0.0.1:{port}/v1/models/{args.model}:predict"
            wrk(url, body, 3, args.connections)  # warm-up
            results[label] = wrk(url, body, args.duration, args.connections)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)
        print(f"{label:<26} {results[label]['rps']:8.1f} req/s  p50 {results[label]['p50_ms']:7.1f} ms  "
              f"p99 {results[label]['p99_ms']:7.1f} ms  non-2xx {results[label]['non_2xx']}")
    ratio = results["micro-batching"]["rps"] / results["one request per scoring"]["rps"]
    print(f"micro-batching / one request per scoring: {ratio:.2f}x requests/s")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    lines = [f"\n## Predictions: micro-batching vs one request per scoring ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
             f"commit {commit})\n",
             f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}. Model "
             f"`{args.model}` (one instance per request), wrk -c {args.connections} for {args.duration} s on loopback, "
             "prediction log on.\n",
             "| server | requests/s | p50 ms | p99 ms | non-2xx |", "|---|---|---|---|---|"]
    lines += [f"| {k} | {v['rps']:.1f} | {v['p50_ms']:.1f} | {v['p99_ms']:.1f} | {v['non_2xx']} |" for k, v in results.items()]
    lines.append(f"\nRatio: {ratio:.2f}x requests/s.\n")
    with RESULTS.open("a") as f:
        f.write("\n".join(lines))


if __name__ == "__main__":
    main()
