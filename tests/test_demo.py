"""The batch path, `loopwise demo`, end to end on the embedded engine, as a user runs it.

Each step is a real Dagster run on the instance (Sail, Delta, Feast, MLflow, the audit trail) for every declared
model, on two of the test profile's small days. The dev profile's days, with its gate's floors, go
through the README's first command in tests/test_loop.py; here, as for the session's `built` platform, one
model's floors are set aside (a 200-row day's model may fall short of them) and the other's made unreachable, so
one run shows both a registered model and a refused gate.
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


def test_demo_lands_builds_trains_registers_and_a_refused_gate_stops_only_its_model(tmp_path: Path) -> None:
    """One run of the batch path: every table, the training sets and the online store are built; one model's gate
    passes (with its lineage back to the raw files), the other's refuses it and the demo stops with its reasons."""
    data = tmp_path / "data"
    done = loopwise(data, "demo", "--days", "2", **BUILT_ENV,
                    LOOPWISE__REGISTRY__MODELS="{order-refund-risk: {floors: {auc: 0.999}}}")
    out = done.stdout
    assert done.returncode == 1, out[-3000:] + done.stderr[-3000:]
    for table in TABLES:
        rows = re.search(rf"^{table}\s+0\s+(\d+)$", out, re.M)
        assert rows and int(rows.group(1)) > 0, (table, out)
    for source in ("tickets", "orders", "ticket_outcomes"):
        assert re.search(rf"quarantined {source}\s+[1-9]\d* rows", out), source
    assert re.search(r"^training_set_ticket_escalation\s+0\s+\d+\s+\(escalated rate \d", out, re.M)
    assert re.search(r"^training_set_order_refund_risk\s+0\s+\d+\s+\(refunded rate \d", out, re.M)
    assert re.search(r"online features of \{'customer_id': 'C\d+'\} \(feature service escalation_v1\): 20 values", out)
    # The passing model is registered, with its lineage to the raw files.
    assert "ticket-escalation version 1: gate passed" in out
    lineage = out[out.index("lineage of ticket-escalation/1:"):]
    for table in ["training_set_ticket_escalation", "features_customer_orders", *TABLES]:
        assert re.search(rf"^    {table}\s+Delta version 0", lineage, re.M), table
    # The refused one names its reason, and the blocking check that stopped it is the only one.
    assert "order-refund-risk version 1: gate refused" in out
    assert re.search(r"auc [\d.]+ < floor 0\.999", out)
    assert re.search(r"stopped by blocking checks: order_refund_risk/registered_model: passes_gate;", done.stderr)
    assert "ticket_escalation/registered_model" not in done.stderr
    assert "Traceback" not in out + done.stderr
    assert "DeprecationWarning" not in done.stderr  # libraries' notices stay quiet, Feast's import included
    assert (data / "dagster").is_dir()
    verified = loopwise(data, "audit", "verify", **BUILT_ENV)
    assert verified.returncode == 0 and "hash chain verified" in verified.stdout
