"""The batch path, `loopwise demo`, end to end on the embedded engine, as a user runs it.

Each step is a real Dagster run on the instance (Sail, Delta, Feast, MLflow, the audit trail) for every declared
model, on two of the test profile's small days. The dev profile's days, with its gate's floors, go
through the README's first command in tests/test_loop.py; here, as for the session's `built` platform, the
passing run sets the floors aside (a 200-row day's model may fall short of them) and the refused run tests them.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import BUILT_ENV

REPO = Path(__file__).resolve().parent.parent
LOOPWISE = str(Path(sys.executable).parent / "loopwise")
TABLES = [f"{stage}_{source}" for source in ("tickets", "orders", "ticket_outcomes") for stage in ("raw", "bronze", "silver")]


def loopwise(data_dir: Path, *args: str, **overrides: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOOPWISE", "DAGSTER_HOME", "SPARK_REMOTE"))}
    env.update(LOOPWISE_DATA_DIR=str(data_dir), **overrides)
    return subprocess.run([LOOPWISE, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)


def test_demo_lands_builds_trains_and_registers_with_lineage_to_the_raw_files(tmp_path: Path) -> None:
    data = tmp_path / "data"
    done = loopwise(data, "demo", "--days", "2", **BUILT_ENV)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    for table in TABLES:
        rows = re.search(rf"^{table}\s+0\s+(\d+)$", out, re.M)
        assert rows and int(rows.group(1)) > 0, (table, out)
    for source in ("tickets", "orders", "ticket_outcomes"):
        assert re.search(rf"quarantined {source}\s+[1-9]\d* rows", out), source
    assert re.search(r"^training_set_ticket_escalation\s+0\s+\d+\s+\(escalated rate \d", out, re.M)
    assert re.search(r"^training_set_order_refund_risk\s+0\s+\d+\s+\(refunded rate \d", out, re.M)
    assert re.search(r"online features of \{'customer_id': 'C\d+'\} \(feature service escalation_v1\): 20 values", out)
    for model in ("ticket-escalation", "order-refund-risk"):
        assert f"{model} version 1: gate passed" in out
    for table in ["training_set_ticket_escalation", "features_customer_orders", *TABLES]:
        assert re.search(rf"^    {table}\s+Delta version 0", out, re.M), table
    assert "Traceback" not in out + done.stderr
    assert "done: open the lineage with `make dev`" in out
    assert "DeprecationWarning" not in done.stderr  # libraries' notices stay quiet, Feast's import included
    assert (data / "dagster").is_dir()
    verified = loopwise(data, "audit", "verify", **BUILT_ENV)
    assert verified.returncode == 0 and "hash chain verified" in verified.stdout


def test_a_refused_gate_stops_the_demo_with_its_reasons_not_a_traceback(tmp_path: Path) -> None:
    done = loopwise(tmp_path / "data", "demo", "--days", "2", LOOPWISE_PROFILE="test",
                    LOOPWISE__REGISTRY__FLOORS="{auc: 0.999}")
    assert done.returncode == 1
    for model in ("ticket-escalation", "order-refund-risk"):
        assert f"{model} version 1: gate refused" in done.stdout
    assert re.search(r"auc [\d.]+ < floor 0\.999", done.stdout)
    assert re.search(r"^silver_orders\s+0\s+\d+$", done.stdout, re.M)  # what ran is still reported
    assert re.search(r"stopped by blocking checks: (ticket_escalation|order_refund_risk)/registered_model: passes_gate, "
                     r"(ticket_escalation|order_refund_risk)/registered_model: passes_gate", done.stderr)
    assert "Traceback" not in done.stdout + done.stderr
