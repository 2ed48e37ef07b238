"""The paths a user takes through Dagster on a fresh instance: `dg` on the project, and a job and a backfill
launched as the UI launches them. (A landed day carried to the online store by the daemon alone, with its landing
sensor and automation conditions, is tests/test_loop.py's, through the README's first command.)

Real processes on loopback: `dg` (dagster-dg-cli), and `dg dev` (the webserver and the daemon, which runs the
backfill). Nothing is started by hand.
"""

import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.services import child_env, free_port, server_process, wait_http

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DATA_LAYER = ["raw_tickets", "raw_orders", "raw_ticket_outcomes", "bronze_tickets", "bronze_orders",
              "bronze_ticket_outcomes", "silver_tickets", "silver_orders", "silver_ticket_outcomes",
              "features_customer_orders", "features_customer_support", "online_features"]


def fresh_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    home = tmp_path / "dagster"
    home.mkdir(exist_ok=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return child_env(LOOPWISE_PROFILE="test", LOOPWISE_DATA_DIR=str(tmp_path / "data"), DAGSTER_HOME=str(home), **extra)


def run(env: dict[str, str], *args: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def materialized_partitions(env: dict[str, str], asset: str) -> set[str]:
    code = ("import dagster as dg, sys; i = dg.DagsterInstance.get(); "
            f"print(sorted(i.get_materialized_partitions(dg.AssetKey({asset!r}))))")
    out = run(env, sys.executable, "-c", code)
    assert out.returncode == 0, out.stderr[-2000:]
    return set(eval(out.stdout.strip().splitlines()[-1]))  # a printed list of strings


def test_dg_checks_lists_and_launches_the_data_layer_job_on_a_fresh_instance(tmp_path: Path) -> None:
    env = fresh_env(tmp_path)
    checked = run(env, str(BIN / "dg"), "check", "defs")
    assert checked.returncode == 0 and "All definitions loaded successfully" in checked.stdout, checked.stderr[-3000:]
    listed = run(env, str(BIN / "dg"), "list", "defs", "--json")
    assert listed.returncode == 0, listed.stderr[-3000:]
    keys = {a["asset_key"] for a in json.loads(listed.stdout)["assets"]}
    assert set(DATA_LAYER) | {"feast_registry", "ticket_escalation/registered_model"} <= keys
    assert run(env, str(BIN / "loopwise"), "land", "--date", "2026-03-02", "--rows", "40").returncode == 0
    # The job as a user launches it for one day: no `feast_registry` in its selection, and no registry yet.
    launched = run(env, str(BIN / "dg"), "launch", "--job", "data_layer", "--partition", "2026-03-02")
    assert launched.returncode == 0, (launched.stdout + launched.stderr)[-4000:]
    assert "2026-03-02" in materialized_partitions(env, "online_features")
    assert (tmp_path / "data" / "feast" / "applied_repo.digest").exists()


@pytest.fixture
def dg_dev(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    port = free_port()
    # The sensors stay off: the backfill is the only thing that runs (the daemon's own carrying of landed days is
    # tests/test_loop.py's, through the README's first command).
    env = fresh_env(tmp_path, LOOPWISE__AUTOMATION__ON_BY_DEFAULT="false")
    url = f"http://127.0.0.1:{port}"
    # Stopped as Ctrl-C stops it (SIGINT to its group): on SIGTERM one in this suite took the whole 60 s.
    with server_process([str(BIN / "dg"), "dev", "--host", "127.0.0.1", "--port", str(port)], tmp_path / "dg-dev.log",
                        env, grace_seconds=20, signum=signal.SIGINT) as proc:
        wait_http(f"{url}/server_info", proc, "dg dev", seconds=180)
        yield url, env


def graphql(url: str, query: str, variables: dict) -> dict:
    request = urllib.request.Request(f"{url}/graphql", data=json.dumps({"query": query, "variables": variables}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        body = json.loads(response.read())
    assert "errors" not in body, body
    return body["data"]


def wait_for(what: str, seconds: float, check) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {seconds:.0f} s waiting for {what}")
        time.sleep(3)


BACKFILL = """mutation($params: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $params) {
  __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message } } }"""
BACKFILL_STATUS = """query($id: String!) { partitionBackfillOrError(backfillId: $id) {
  __typename ... on PartitionBackfill { status } ... on PythonError { message } } }"""


def test_a_ui_backfill_runs_the_data_layer_for_landed_days(dg_dev: tuple[str, dict[str, str]]) -> None:
    url, env = dg_dev
    # A backfill of the partitioned data layer over two landed days, launched from the asset graph as the UI does.
    for day in ("2026-03-02", "2026-03-03"):
        assert run(env, str(BIN / "loopwise"), "land", "--date", day, "--rows", "40").returncode == 0
    launched = graphql(url, BACKFILL, {"params": {
        "assetSelection": [{"path": [key]} for key in DATA_LAYER], "partitionNames": ["2026-03-02", "2026-03-03"]}})
    result = launched["launchPartitionBackfill"]
    assert result["__typename"] == "LaunchBackfillSuccess", result

    def finished() -> bool:
        status = graphql(url, BACKFILL_STATUS, {"id": result["backfillId"]})["partitionBackfillOrError"]["status"]
        assert status not in ("FAILED", "COMPLETED_FAILED", "CANCELED"), status
        return status in ("COMPLETED", "COMPLETED_SUCCESS")

    wait_for("the backfill to complete", 420, finished)
    assert {"2026-03-02", "2026-03-03"} <= materialized_partitions(env, "online_features")
