"""Rollout: `/v1/models/{name}:predict` throughput during a canary against the champion alone, one server, one run.

Issue #14's speed goal: the rollout machinery may not slow the service, at most 10 % fewer requests/s during a
canary than serving the champion alone (shadow excepted: there every request is scored twice by design). One
`loopwise serve` (1 worker) over a copy of a platform (built with `loopwise demo` on the test profile, or an
existing data root with `--data-dir`, copied so that its registry and state store are left as they were) answers
the tabular model `order-refund-risk`, one real instance of its training set per request. The benchmark switches
the model's traffic split with the rollout engine, as the canary-analysis sensor would, and waits until the server
routes by it before measuring:

- champion: no rollout running (the split is the champion alone);
- canary: a canary at 50 % (steps [50, 100]) to a second version that is the champion's own logged model
  registered again and gated, so the two arms score identically and only the rollout machinery differs;
- shadow: the champion answers and that second version also scores every request (reported separately).

A second version is registered per rollout (an aborted rollout's challenger is rolled back for good). wrk -t1 (c=8 by
default, loopback) measures each mode for `--duration` seconds after a 3 s warm-up; the modes alternate for
`--rounds` rounds (order reversed every other round, so a drift of the shared machine's load falls on each alike)
and each figure is the median of its rounds. The server's own CPU per answered request (all its threads) is the
steadier figure where other work shares the cores. Appends the figures to RESULTS.md.

    python benchmarks/rollout.py [--data-dir DIR] [--rounds 3] [--duration 15] [--connections 8]

Needs wrk (Debian's package).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from common import WRK_SCRIPT, Round, free_port, median_round, post, ready, stop, wrk

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
MODEL = "order-refund-risk"
ACTOR = "benchmarks/rollout.py"
GOAL = 0.90  # canary requests/s at least 90 % of the champion's alone
MODES = ("champion", "canary", "shadow")
def copy_platform(source: Path, work: Path) -> Path:
    """The data root to serve: a copy without the prediction log (what earlier services sent is not this run's)."""
    target = work / "data"
    print(f"copying {source} to {target}...", flush=True)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("predlog", "serve-*.log", "predictions"))
    return target


def environment(data_dir: Path) -> dict[str, str]:
    """The profile every process of the run uses: the test profile over `data_dir`, nothing inherited."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPARK_CONNECT", "LOOPWISE", "MLFLOW_"))}
    env.update(LOOPWISE_PROFILE="test", LOOPWISE_DATA_DIR=str(data_dir))
    return env


def serve(env: dict[str, str], log: Path) -> tuple[subprocess.Popen, str]:
    """`loopwise serve` with one worker on a free port; returned once /readyz answers."""
    port = free_port()
    with log.open("w") as out:
        proc = subprocess.Popen([str(BIN / "loopwise"), "serve", "--port", str(port), "--workers", "1"], cwd=ROOT,
                                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    ready(proc, url, log, "loopwise serve")
    return proc, url


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


class Switch:
    """Puts the model in a mode through the rollout engine (the central state store), as a sensor or person would."""

    def __init__(self) -> None:
        from loopwise.backends import Backends
        from loopwise.config import load_settings

        self.settings = load_settings()
        backends = Backends(self.settings)
        self.spec = backends.use_case.model(MODEL)
        self.lake = backends.lake()
        self.events = backends.events()
        self.registry = backends.registry(MODEL, self.events)
        self.champion = self.registry.alias("champion")
        if self.champion is None:
            raise SystemExit(f"{MODEL} has no champion in {self.settings.paths.root}: run `loopwise demo` there first")
        self.source = self.registry.client.get_model_version(MODEL, self.champion)
        self.twins: list[str] = []

    def instance(self) -> dict:
        """One real instance: the first row of the model's training set, as the request schema declares it."""
        row = self.lake.table(self.spec.training_table).read().slice(0, 1).to_pylist()[0]
        return {f: row[f] for f in self.spec.request.model_fields}  # type: ignore[union-attr]

    def twin(self) -> str:
        """A new version that is the champion's own logged model, registered again and passed through the gate."""
        from loopwise.registry import GatePolicy

        version = self.registry.register(self.source.source, self.source.run_id,
                                         {"benchmark": "rollout", "twin_of": self.champion}, actor=ACTOR)
        if not self.registry.gate(version, {"auc": 0.7}, GatePolicy(), actor=ACTOR).passed:
            raise SystemExit(f"{MODEL} version {version} did not pass an empty gate")
        self.twins.append(version)
        return version

    def to(self, mode: str) -> tuple[dict[str, float], str | None]:
        """Enter `mode`; the split the server must then report, and the rollout id (None: no rollout running)."""
        from loopwise import rollout

        running = rollout.current(self.events, MODEL)
        if running is not None and not running.finished:
            rollout.abort(self.events, MODEL, actor=ACTOR, reason=f"benchmark: next mode {mode}")
        if mode == "champion":
            return {"champion": 1.0}, None
        started = rollout.start(self.events, MODEL, mode, self.champion, self.twin(),
                                steps=[50, 100] if mode == "canary" else (), actor=ACTOR,
                                reason=f"benchmark: {mode} to a twin of the champion")
        return {a.name: a.weight for a in started.arms}, started.id


def follow(url: str, expected: dict[str, float], rollout_id: str | None, timeout: float = 120) -> None:
    """Wait until the server routes by the split the store holds (it polls every second, then loads the version)."""
    deadline = time.monotonic() + timeout
    while True:
        seen = get(f"{url}/v1/models/{MODEL}")
        if seen["traffic"] == expected and (rollout_id is None or seen["rollout_id"] == rollout_id):
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"the server did not follow the split {expected} (rollout {rollout_id}) within "
                             f"{timeout:.0f} s: it reports {seen}")
        time.sleep(0.2)


def arms_answering(url: str, body: bytes, n: int = 60) -> dict[str, int]:
    """Who answers `n` sequential requests: the split really in force (also warms the arms)."""
    counts: dict[str, int] = {}
    for _ in range(n):
        arm = post(url, body)["predictions"][0]["arm"]
        counts[arm] = counts.get(arm, 0) + 1
    return counts


@dataclass(frozen=True)
class Result:
    modes: dict[str, Round]  # medians
    rounds: dict[str, list[Round]]
    split: dict[str, dict[str, int]]  # who answered the check requests, per mode (last round)
    champion: str
    twins: list[str]
    load_before: str
    load_after: str

    @property
    def ratio(self) -> float:
        return self.modes["canary"].rps / self.modes["champion"].rps


def bench(data_dir: Path, work: Path, rounds: int, duration: int, connections: int) -> Result:
    from common import load_average

    env = environment(data_dir)
    os.environ.update(LOOPWISE_PROFILE="test", LOOPWISE_DATA_DIR=str(data_dir))  # this process's engine calls
    switch = Switch()
    body = json.dumps({"instances": [switch.instance()]}).encode()
    body_file, script = work / "body.json", work / "post.lua"
    body_file.write_bytes(body)
    script.write_text(WRK_SCRIPT)
    measured: dict[str, list[Round]] = {mode: [] for mode in MODES}
    split: dict[str, dict[str, int]] = {}
    load_before = load_average()
    print(f"load average {load_before}; starting loopwise serve (1 worker)...", flush=True)
    proc, base = serve(env, work / "serve.log")
    url = f"{base}/v1/models/{MODEL}:predict"
    try:
        for i in range(rounds):
            for mode in (MODES if i % 2 == 0 else MODES[::-1]):
                expected, rollout_id = switch.to(mode)
                follow(base, expected, rollout_id)
                split[mode] = arms_answering(url, body)
                if mode != "canary" and set(split[mode]) != {"champion"} or mode == "canary" and len(split[mode]) != 2:
                    raise SystemExit(f"{mode}: the server answered with {split[mode]}, not the split {expected}")
                r = wrk(url, body_file, script, duration, connections, proc.pid, warm_up=True)
                measured[mode].append(r)
                print(f"round {i + 1} {mode:<9} {r.rps:7.1f} req/s  p50 {r.p50_ms:6.1f} ms  p99 {r.p99_ms:6.1f} ms  "
                      f"errors {r.errors}  CPU/request {r.cpu_ms_per_request:5.2f} ms  others {r.others:.0%}  "
                      f"(check requests answered by {split[mode]})", flush=True)
        switch.to("champion")  # leave no rollout running in the copy
    finally:
        stop(proc)
    return Result({m: median_round(r) for m, r in measured.items()}, measured, split, switch.champion, switch.twins,
                  load_before, load_average())


def entry(result: Result, args: argparse.Namespace) -> list[str]:
    from common import machine

    a, b, c = (result.modes[m] for m in MODES)
    ratio = result.ratio
    labels = {"champion": "champion alone (no rollout)", "canary": "canary 50 % (champion + identical twin)",
              "shadow": "shadow (twin scores every request too)"}
    lines = [f"Machine: {machine()}. Load average at the start {result.load_before}, at the end {result.load_after} "
             "(the 2 cores are shared with other sessions' work). One `loopwise serve` (1 worker, test profile, "
             f"micro-batching on, prediction log on) over a `loopwise demo` data root; model `{MODEL}` (champion "
             f"v{result.champion}), one instance of its training set per request. The canary's and the shadow's "
             "second arm is the champion's own logged model registered again (a new version per rollout: "
             f"{', '.join(result.twins)}), so both arms score identically. The split is switched with the rollout "
             "engine and the server is seen routing by it before each measurement. wrk -t1 "
             f"-c{args.connections} on loopback, {args.rounds} rounds of {args.duration} s per mode after a 3 s warm-up, "
             "modes alternating (order reversed every other round); medians of the rounds. CPU per request is the "
             "server's own (all its threads).\n",
             "| mode | requests/s | p50 | p99 | errors | server CPU per request | other processes' CPU | rounds (req/s) |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {labels[m]} | {v.rps:,.0f} | {v.p50_ms:.1f} ms | {v.p99_ms:.1f} ms | {v.errors} | "
              f"{v.cpu_ms_per_request:.2f} ms | {v.others:.0%} | "
              f"{', '.join(f'{r.rps:,.0f}' for r in result.rounds[m])} |" for m, v in result.modes.items()]
    lines += ["", f"Canary / champion alone: {ratio:.2f}x the requests/s ({ratio - 1:+.0%}), p99 "
                  f"{b.p99_ms:.1f} ms against {a.p99_ms:.1f} ms, CPU per request {b.cpu_ms_per_request / a.cpu_ms_per_request:.2f}x. "
                  f"Goal (at most 10 % fewer requests/s) {'met' if ratio >= GOAL else 'NOT met'}. Shadow / champion "
                  f"alone: {c.rps / a.rps:.2f}x the requests/s, CPU per request "
                  f"{c.cpu_ms_per_request / a.cpu_ms_per_request:.2f}x (every request scored and logged twice by design)."]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, help="an existing data root (LOOPWISE_DATA_DIR) where `loopwise demo` "
                                                      "ran on the test profile, copied first; default: build one with "
                                                      "`loopwise demo` in a temporary folder (a few minutes)")
    parser.add_argument("--duration", type=int, default=15, help="seconds of load per round and mode (default 15)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over the three modes (default 3)")
    parser.add_argument("--connections", type=int, default=8, help="wrk's concurrency (default 8)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (the copy, the server's log)")
    parser.add_argument("--no-record", action="store_true", help="print the figures, do not append to RESULTS.md")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    from serving import build_platform

    if args.data_dir and not (args.data_dir / "mlflow").is_dir():
        print(f"{args.data_dir} holds no platform (no mlflow/): building one instead", flush=True)
        args.data_dir = None
    work = Path(tempfile.mkdtemp(prefix="loopwise-rollout-"))
    try:
        data = copy_platform(args.data_dir.resolve(), work) if args.data_dir else build_platform(work)
        result = bench(data, work, args.rounds, args.duration, args.connections)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    lines = entry(result, args)
    print("\n".join(lines))
    if not args.no_record:
        from serving import append_results

        append_results("rollout.py", lines)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # common and serving: machine(), commit(), wrk helpers
    sys.path.insert(0, str(ROOT / "platform"))
    main()
