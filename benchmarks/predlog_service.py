"""The prediction log's cost in `loopwise serve` itself: the service as shipped against the same service with the log's
write taken out, side by side in one run.

Issue #13's goal: the write-ahead log costs at most 10 % of throughput. `predlog.py` measures the log under a
synthetic route; this measures it where it runs. Two `loopwise serve` processes (one worker each, the test profile),
each over its own copy of one platform (built with `loopwise demo`, or `--data-dir`):

- log: the service as shipped; every answer is appended to the write-ahead log and fsync'ed (group-committed)
  before it leaves, and the flusher moves the segments into Delta;
- control: the same service, started the same way, with `PredictionLog.append_async` replaced by what any awaited
  log costs and nothing more: each record encoded to its line, and one await. Nothing is written.

wrk (Debian's package) -t1 -c `--connections` on loopback drives each model's predict route, one real instance of
its training set per request, alternating between the two servers round by round (the order reversed every other
round) so that a busy moment of the shared machine hits both alike. Reported per model: the medians of requests/s,
p50/p99, and the server's CPU per request (all its threads, from /proc: the steadier figure on a shared machine).
The goal is judged by requests/s: the log server's over the control's, the median of the rounds' own ratios (a
round's two servers ran back to back) and, beside it, the ratio of the medians. The capacity lost by CPU per
request (1 - control's / log's) is reported beside it. Appends the figures to RESULTS.md.

    python benchmarks/predlog_service.py [--data-dir DIR] [--rounds 8] [--duration 8] [--connections 8]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODES = ("log", "control")
GOAL = 0.10  # at most 10 % of the service's capacity

# `loopwise serve` run in-process (one worker: uvicorn serves in this process), so that the control's patch holds.
SERVER = r"""
import asyncio, sys
from loopwise.serving.predlog import PredictionLog

if sys.argv[1] == "control":
    async def append_async(self, records):
        b"".join(r.line() for r in records)  # the records encoded, as the log does before it writes
        await asyncio.sleep(0)  # and one suspension of the handler; nothing is written

    PredictionLog.append_async = append_async
from loopwise.cli import app

app(["serve", "--port", sys.argv[2], "--workers", "1"])
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, help="an existing data root where `loopwise demo` ran on the test "
                                                      "profile, copied first; default: build one (a few minutes)")
    parser.add_argument("--rounds", type=int, default=8, help="rounds per model over both servers (default 8)")
    parser.add_argument("--duration", type=int, default=8, help="seconds of load per round and server (default 8)")
    parser.add_argument("--connections", type=int, default=8, help="wrk's concurrency (default 8)")
    parser.add_argument("--models", default="order-refund-risk,ticket-escalation", help="comma-separated")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting for both servers, e.g. LOOPWISE__SERVING__GROUP_COMMIT_MS=2 (repeatable)")
    parser.add_argument("--no-record", action="store_true", help="print the figures, do not append to RESULTS.md")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    from common import WRK_SCRIPT, free_port, ready, stop, wrk
    from predictions import instance
    from rollout import copy_platform, environment
    from serving import append_results, build_platform

    settings = dict(item.split("=", 1) for item in args.set)
    work = Path(tempfile.mkdtemp(prefix="loopwise-predlog-service-"))
    servers: dict[str, tuple[subprocess.Popen, str]] = {}
    results: dict[str, dict[str, list]] = {}
    try:
        source = args.data_dir.resolve() if args.data_dir else build_platform(work / "built")
        for mode in MODES:
            target = copy_platform(source, work / mode)
            port = free_port()
            with (work / f"{mode}.log").open("w") as out:
                proc = subprocess.Popen([sys.executable, "-c", SERVER, mode, str(port)], cwd=ROOT,
                                        env={**environment(target), **settings}, stdout=out, stderr=subprocess.STDOUT,
                                        start_new_session=True)
            servers[mode] = proc, f"http://127.0.0.1:{port}"
            ready(proc, servers[mode][1], work / f"{mode}.log", f"loopwise serve ({mode})")
        os.environ.update(environment(work / "log" / "data"))  # the profile `instance` reads the training set with
        (work / "post.lua").write_text(WRK_SCRIPT)
        for model in args.models.split(","):
            body = work / f"{model}.json"
            body.write_text(json.dumps({"instances": [instance(work / "log" / "data", model)]}))
            results[model] = {mode: [] for mode in MODES}
            for r in range(args.rounds):
                for mode in (MODES if r % 2 == 0 else MODES[::-1]):
                    proc, base = servers[mode]
                    done = wrk(f"{base}/v1/models/{model}:predict", body, work / "post.lua", args.duration,
                               args.connections, proc.pid, warm_up=True)
                    if done.errors:
                        raise SystemExit(f"{mode}: wrk saw {done.errors} errors; see {work / (mode + '.log')}")
                    results[model][mode].append(done)
                    print(f"{model} round {r + 1} {mode:8s} {done.rps:7.1f} req/s  p99 {done.p99_ms:6.1f} ms  "
                          f"CPU/request {done.cpu_ms_per_request:.2f} ms  others {done.others:.0%}", flush=True)
        stop(servers.pop("log")[0])  # its flusher moves segments into Delta: count once it has stopped
        logged = _logged_rows(work / "log" / "data")
    finally:
        for proc, _ in servers.values():
            stop(proc)
        shutil.rmtree(work, ignore_errors=True)
    lines = entry(results, args, logged)
    print("\n".join(lines))
    if not args.no_record:
        append_results("predlog_service.py", lines)


def _logged_rows(data_dir: Path) -> int:
    """Records in the log server's write-ahead segments and prediction table (proof that it logged)."""
    segments = sum(p.read_bytes().count(b"\n") for p in (data_dir / "predlog").glob("*.wal"))
    table = data_dir / "lake" / "predictions"
    if table.is_dir():
        from deltalake import DeltaTable

        segments += DeltaTable(str(table)).to_pyarrow_dataset().count_rows()
    return segments


def entry(results: dict[str, dict[str, list]], args: argparse.Namespace, logged: int) -> list[str]:
    from common import load_average, machine, median_round

    lines = [f"Machine: {machine()}. Load average at the end {load_average()}. Two `loopwise serve` (1 worker "
             "each, test profile, micro-batching on) over copies of one `loopwise demo` root: the service as shipped "
             "(log) and the same service with `PredictionLog.append_async` replaced by encoding the records and one "
             f"await (control: nothing written). wrk -t1 -c{args.connections} on loopback, one real instance per "
             f"request, {args.rounds} rounds of {args.duration} s per server and model after a 3 s warm-up, "
             f"alternating; medians. The log server logged {logged:,} records (segments and Delta)."
             + (f" Settings: {', '.join(args.set)}." if args.set else "") + "\n",
             "| model | requests/s control / log | p50 control / log | p99 control / log | server CPU per request "
             "control / log | capacity lost to the log | rounds req/s control; log |",
             "|---|---|---|---|---|---|---|"]
    verdicts, worst = [], 0.0
    for model, modes in results.items():
        control, log = median_round(modes["control"]), median_round(modes["log"])
        lost = 1 - control.cpu_ms_per_request / log.cpu_ms_per_request
        # A round's two servers ran back to back: their ratio is steadier than the ratio of the medians when the
        # machine's speed drifts from round to round (it is shared).
        paired = statistics.median(1 - c.cpu_ms_per_request / g.cpu_ms_per_request
                                   for c, g in zip(modes["control"], modes["log"], strict=True))
        paired_rps = statistics.median(g.rps / c.rps for c, g in zip(modes["control"], modes["log"], strict=True))
        worst = max(worst, 1 - paired_rps)
        verdicts.append(f"{model}: {paired_rps:.2f}x the requests/s round by round ({log.rps / control.rps:.2f}x "
                        f"from the medians); capacity lost by CPU per request {paired:.1%} round by round ({lost:.1%} from the "
                        "medians)")
        lines.append(
            f"| {model} | {control.rps:,.0f} / {log.rps:,.0f} | {control.p50_ms:.1f} / {log.p50_ms:.1f} ms | "
            f"{control.p99_ms:.1f} / {log.p99_ms:.1f} ms | {control.cpu_ms_per_request:.2f} / "
            f"{log.cpu_ms_per_request:.2f} ms | {lost:.1%} | "
            f"{', '.join(f'{r.rps:.0f}' for r in modes['control'])}; {', '.join(f'{r.rps:.0f}' for r in modes['log'])} |")
    lines.append(f"\nThe log against the control: {'; '.join(verdicts)}. Goal (at most {GOAL:.0%} fewer requests/s) "
                 f"{'met' if worst <= GOAL else 'NOT met'}.")
    return lines


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # common, rollout, serving: the shared helpers
    sys.path.insert(0, str(ROOT / "platform"))
    main()
