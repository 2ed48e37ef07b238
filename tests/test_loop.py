"""The README's first command, `loopwise loop`, end to end on the embedded default, as a user runs it.

Real processes on loopback, nothing started by hand: `dg dev` (Dagster's webserver and daemon, which run the
landing sensor, the automation conditions, the prediction monitor, the retraining sensor and the canary analysis)
and `loopwise serve`. The loop itself only lands files and sends traffic. It is the closed loop's one end-to-end
path, and the slowest: it mostly waits on the daemon's ticks, so `tests/conftest.py` starts it when collection
ends, beside the rest of the suite, and runs this test last, to assert from the audit trail every stage in the
order it happened.
"""

from __future__ import annotations

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
# What a training set is built from (the online store serves; training reads the offline tables).
TRAINING_PATH = ["raw_tickets", "raw_orders", "raw_ticket_outcomes", "silver_tickets", "silver_orders",
                 "silver_ticket_outcomes", "features_customer_orders", "features_customer_support"]
RUN = pytest.StashKey["LoopRun"]()


@dataclass
class LoopRun:
    """`loopwise loop` running in the background, in its own data root, on free ports."""

    proc: subprocess.Popen
    env: dict[str, str]
    root: Path
    started: float

    @classmethod
    def start(cls) -> LoopRun:
        root = Path(tempfile.mkdtemp(prefix="loopwise-loop-"))
        env = child_env(LOOPWISE_PROFILE="dev", LOOPWISE_DATA_DIR=str(root / "data"),
                        DAGSTER_HOME=str(root / "dagster"), LOOPWISE__SERVING__PORT=str(free_port()))
        env = {k: v for k, v in env.items() if not k.startswith("LOOPWISE__") or k == "LOOPWISE__SERVING__PORT"}
        proc = subprocess.Popen([str(BIN / "loopwise"), "loop", "--ui-port", str(free_port())], cwd=ROOT, env=env,
                                stdout=(root / "stdout").open("w"), stderr=(root / "stderr").open("w"),
                                start_new_session=True)
        return cls(proc, env, root, time.monotonic())

    def finish(self) -> tuple[int, str, str]:
        try:
            self.proc.wait(timeout=max(1.0, LIMIT_SECONDS - (time.monotonic() - self.started)))
        except subprocess.TimeoutExpired:
            self.stop()
        return self.proc.returncode, (self.root / "stdout").read_text(), (self.root / "stderr").read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


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
    run = request.config.stash.get(RUN, None) or LoopRun.start()  # started by conftest unless run on its own
    returncode, out, err = run.finish()
    env = run.env
    assert returncode == 0, f"exit {returncode} after {time.monotonic() - run.started:.0f} s\n" + out[-4000:] + err[-3000:]
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
        for asset in TRAINING_PATH:
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
