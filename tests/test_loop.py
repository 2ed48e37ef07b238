"""The README's first command, `loopwise loop`, end to end on the embedded default, as a user runs it.

Real processes on loopback, nothing started by hand: `dg dev` (Dagster's webserver and daemon, which run the
landing sensor, the automation conditions, the prediction monitor, the retraining sensor and the canary analysis)
and `loopwise serve`. The loop itself only lands files and sends traffic. It is the closed loop's one end-to-end
path, and the slowest: it mostly waits on the daemon's ticks, so `tests/conftest.py` starts it in the background
as soon as the tests are collected (in the xdist controller, beside its workers, or in the one pytest process),
and this test, run last, asserts from the audit trail every stage in the order it happened.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest
from loopwise.backends import Backends
from loopwise.config import load_settings
from loopwise.events.store import Record

from tests.services import child_env, free_port

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
LIMIT_SECONDS = 1500


def training_path(model: str) -> list[str]:
    """What a model's training set is built from: the sources it reads and its outcomes, raw and silver, and the
    feature tables (the online store serves; training reads the offline tables)."""
    from supportdesk import USE_CASE

    spec = USE_CASE.model(model)
    sources = sorted({*spec.reads, spec.outcomes.source})  # type: ignore[union-attr]
    return [f"{stage}_{s}" for stage in ("raw", "silver") for s in sources] + [t.name for t in USE_CASE.feature_tables]

RUN = pytest.StashKey["LoopRun"]()


SHARED_ROOT = "LOOPWISE_TEST_LOOP_ROOT"  # set by an xdist controller for its workers: where it runs the loop


@dataclass
class LoopRun:
    """`loopwise loop` running in the background, in its own data root, on free ports. Its output, its environment
    and its exit status are files in that root, so a test in another process (an xdist worker) can wait on it."""

    root: Path
    env: dict[str, str]
    started: float  # time.time() when it started
    proc: subprocess.Popen | None = None  # in the process that started it

    @classmethod
    def start(cls, root: Path | None = None) -> LoopRun:
        root = root or Path(tempfile.mkdtemp(prefix="loopwise-loop-"))
        env = child_env(LOOPWISE_PROFILE="dev", LOOPWISE_DATA_DIR=str(root / "data"),
                        DAGSTER_HOME=str(root / "dagster"), LOOPWISE__SERVING__PORT=str(free_port()))
        env = {k: v for k, v in env.items() if not k.startswith("LOOPWISE__") or k == "LOOPWISE__SERVING__PORT"}
        (root / "env.json").write_text(json.dumps(env))
        # The shell records the exit status where any process can read it (only the starter can wait on it).
        script = '"$@"; echo $? > "$LOOP_ROOT/exit.tmp" && mv "$LOOP_ROOT/exit.tmp" "$LOOP_ROOT/exit"'
        proc = subprocess.Popen(["sh", "-c", script, "loop", str(BIN / "loopwise"), "loop", "--ui-port", str(free_port())],
                                cwd=ROOT, env={**env, "LOOP_ROOT": str(root)}, stdout=(root / "stdout").open("w"),
                                stderr=(root / "stderr").open("w"), start_new_session=True)
        started = time.time()
        (root / "started").write_text(f"{proc.pid} {started}")
        return cls(root, env, started, proc)

    @classmethod
    def attach(cls, root: Path) -> LoopRun | None:
        """The run another process started in `root`, or None if it started none there."""
        if not (root / "started").exists():
            return None
        return cls(root, json.loads((root / "env.json").read_text()), float((root / "started").read_text().split()[1]))

    @property
    def returncode(self) -> int | None:
        done = self.root / "exit"
        return int(done.read_text()) if done.exists() else None

    def finish(self) -> tuple[int | None, str, str]:
        """Wait for the run (until LIMIT_SECONDS after its start, then stop it): (exit status, stdout, stderr)."""
        while self.returncode is None and time.time() - self.started < LIMIT_SECONDS:
            time.sleep(2)
        if self.returncode is None:
            self.stop()
        return self.returncode, (self.root / "stdout").read_text(), (self.root / "stderr").read_text()

    def stop(self) -> None:
        """Stop it and everything it started, if it still runs."""
        pid = int((self.root / "started").read_text().split()[0])
        for sig, wait in ((signal.SIGTERM, 60), (signal.SIGKILL, 10)):
            if self.returncode is not None or (self.proc is not None and self.proc.poll() is not None):
                break
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                break
            deadline = time.time() + wait
            while time.time() < deadline and self.returncode is None and (self.proc is None or self.proc.poll() is None):
                time.sleep(0.5)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.wait(timeout=10)


def at(record: Record) -> datetime:
    return datetime.fromisoformat(record.at)


def first(records: list[Record], after: int, what: str, match) -> Record:  # type: ignore[no-untyped-def]
    """The first record after seq `after` that matches; fails naming the stage that never happened."""
    for r in records:
        if r.seq > after and match(r):
            return r
    raise AssertionError(f"after seq {after}: no {what}")


def test_the_loop_trains_serves_finds_drift_retrains_and_rolls_out_with_no_manual_step(
        request: pytest.FixtureRequest) -> None:
    # Started by conftest when collection ended: in this process, or by the xdist controller for its workers.
    run = request.config.stash.get(RUN, None) or (LoopRun.attach(Path(os.environ[SHARED_ROOT]))
                                                  if os.environ.get(SHARED_ROOT) else None)
    if run is None:  # run on its own: the session's end stops it if this test is cut short
        run = request.config.stash[RUN] = LoopRun.start()
    returncode, out, err = run.finish()
    env = run.env
    assert returncode == 0, f"exit {returncode} after {time.time() - run.started:.0f} s\n" + out[-4000:] + err[-3000:]
    assert "Traceback" not in out + err

    settings = load_settings("dev", environ=env)
    records = Backends(settings).events().read()
    decided = re.search(r"^(\S+): rollout (\S+) (promoted|rolled_back); serving version (\d+)$", out, re.M)
    assert decided, out[-3000:]
    model, outcome, serving = decided.group(1), decided.group(3), decided.group(4)
    days = [settings.demo.dates[0] + timedelta(days=i) for i in range(3)]
    drifted_day = days[-1] + timedelta(days=1)

    def materialized(asset: str, day: date) -> datetime:
        """When Dagster materialized `asset`'s partition `day` (the trail records it a sensor tick later)."""
        made = first(records, 0, f"{asset} of {day}", lambda r: r.kind == "asset.materialized"
                     and r.subject == f"asset:{asset}" and r.payload.get("partition") == day.isoformat())
        return datetime.fromisoformat(made.payload["at"])

    # 1. Normal days land; automation carries each one through silver and the feature tables to the online store,
    # and the retraining sensor trains the never-trained model once all of them are there.
    asked = first(records, 0, "first training request", lambda r: r.kind == "retrain.requested"
                  and r.subject == f"monitoring:{model}" and r.payload["cause"] == "missing")
    for day in days:
        for asset in training_path(model):
            assert materialized(asset, day) < at(asked), f"trained before {asset} of {day} was materialized"
    # ... the gate passes it, and it is released as the first champion.
    gate = first(records, asked.seq, "gate of version 1", lambda r: r.kind == "registry.gate_evaluated"
                 and r.subject == f"model:{model}/1")
    assert gate.payload["passed"], gate.payload
    released = first(records, gate.seq, "release of version 1", lambda r: r.kind == "rollout.released"
                     and r.subject == f"rollout:{model}")
    assert released.payload["rollout"]["arms"][0]["version"] == "1"
    # 2. Replayed normal traffic is checked and raises no alarm.
    calm = first(records, released.seq, "a drift check of normal traffic", lambda r: r.kind == "drift.checked"
                 and r.subject == f"drift:{model}")
    assert not calm.payload["drifted"], calm.payload
    assert all(materialized("online_features", day) < at(calm) for day in days)
    # 3. The drifted day lands and reaches the online store; its traffic is checked and drifts.
    alarm = first(records, calm.seq, "a drifted verdict", lambda r: r.kind == "drift.checked"
                  and r.subject == f"drift:{model}" and r.payload["drifted"])
    assert at(calm) < materialized("online_features", drifted_day) < at(alarm)
    # 4. One retrain on the drift, with its evidence; the new version passes the gate and is canaried.
    retrain = first(records, alarm.seq, "a retrain on drift", lambda r: r.kind == "retrain.requested"
                    and r.subject == f"monitoring:{model}" and r.payload["cause"] == "drift")
    assert retrain.payload["evidence"]["drifted_columns"], retrain.payload
    assert len([r for r in records if r.kind == "retrain.requested" and r.subject == f"monitoring:{model}"
                and r.payload["cause"] == "drift"]) == 1, "one retrain per drift episode"
    gate2 = first(records, retrain.seq, "gate of version 2", lambda r: r.kind == "registry.gate_evaluated"
                  and r.subject == f"model:{model}/2")
    started = first(records, gate2.seq, "a canary of version 2", lambda r: r.kind == "rollout.started"
                    and r.subject == f"rollout:{model}")
    assert started.payload["rollout"]["strategy"] == "canary"
    assert started.payload["rollout"]["challenger_version"] == "2"
    # 5. The canary analysis measures the arms on live evidence and decides.
    measured = first(records, started.seq, "a measurement of the canary", lambda r: r.kind == "rollout.measured"
                     and r.subject == f"rollout:{model}/analysis")
    verdict = first(records, measured.seq, "the rollout's decision", lambda r: r.kind == f"rollout.{outcome}"
                    and r.subject == f"rollout:{model}")
    assert verdict.actor != "operator" and verdict.reason, verdict
    assert serving == ("2" if outcome == "promoted" else "1")

    # The serving model's lineage, printed at the end: raw partitions, Delta versions, the feature service, the
    # MLflow version and run, and the rollout's decisions with their evidence.
    lineage = out[out.index("lineage of the serving model:"):]
    files = f"from {len(days) + (serving == '2')} landing files"  # version 2 trained on the drifted day too
    for piece in ("raw_", files, "Delta version", "feature service", "mlflow run", "rollout decision"):
        assert piece.lower() in lineage.lower(), (piece, lineage[:3000])
    verified = subprocess.run([str(BIN / "loopwise"), "audit", "verify"], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=120)
    assert verified.returncode == 0 and "hash chain verified" in verified.stdout, verified.stdout + verified.stderr
