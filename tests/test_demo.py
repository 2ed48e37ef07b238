"""The README's first command, `loopwise demo`, end to end on the embedded default, as a user runs it.

Each step is a real Dagster run in a subprocess (Sail, Delta, Feast, MLflow, the audit trail), so
these are the slowest tests: about four minutes for the passing loop, two for the refused gate.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LOOPWISE = str(Path(sys.executable).parent / "loopwise")
TABLES = [f"{stage}_{source}" for source in ("tickets", "orders", "ticket_outcomes") for stage in ("raw", "bronze", "silver")]


def loopwise(data_dir: Path, *args: str, **overrides: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOOPWISE", "DAGSTER_HOME", "SPARK_REMOTE"))}
    env.update(LOOPWISE_DATA_DIR=str(data_dir), **overrides)
    return subprocess.run([LOOPWISE, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)


def test_demo_lands_builds_trains_and_registers_with_lineage_to_the_raw_files(tmp_path: Path) -> None:
    data = tmp_path / "data"
    done = loopwise(data, "demo", LOOPWISE_PROFILE="dev")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    for table in TABLES:
        rows = re.search(rf"^{table}\s+0\s+(\d+)$", out, re.M)
        assert rows and int(rows.group(1)) > 0, (table, out)
    for source in ("tickets", "orders", "ticket_outcomes"):
        assert re.search(rf"quarantined {source}\s+[1-9]\d* rows", out), source
    assert re.search(r"^training_set\s+0\s+\d+\s+\(escalation rate \d", out, re.M)
    assert "  tickets_30d" in out and "present" in out
    assert "ticket-escalation version 1: gate passed" in out
    for table in ["training_set", "features_customer_orders", *TABLES]:
        assert re.search(rf"^  {table}\s+Delta version 0", out, re.M), table
    assert "done: open the lineage with `make dev`" in out
    assert "DeprecationWarning" not in done.stderr  # libraries' notices stay quiet, Feast's import included
    assert (data / "dagster").is_dir()
    verified = loopwise(data, "audit", "verify", LOOPWISE_PROFILE="dev")
    assert verified.returncode == 0 and "hash chain verified" in verified.stdout


def test_a_refused_gate_stops_the_demo_with_its_reasons_not_a_traceback(tmp_path: Path) -> None:
    done = loopwise(tmp_path / "data", "demo", LOOPWISE_PROFILE="test", LOOPWISE__REGISTRY__FLOORS="{auc: 0.999}")
    assert done.returncode == 1
    assert "ticket-escalation version 1: gate refused" in done.stdout
    assert re.search(r"auc [\d.]+ < floor 0\.999", done.stdout)
    assert re.search(r"^silver_orders\s+0\s+\d+$", done.stdout, re.M)  # what ran is still reported
    assert "stopped by blocking checks: registered_model: passes_gate" in done.stderr
    assert "Traceback" not in done.stdout + done.stderr
