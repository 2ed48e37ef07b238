"""The loopwise command line: help on every command, landing, and clear errors."""

import re
from pathlib import Path

from loopwise.cli import app
from loopwise.config import Settings
from supportdesk import USE_CASE
from typer.testing import CliRunner

from tests.conftest import Built

runner = CliRunner()


def test_every_command_has_help() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    commands = re.findall(r"│ (\w+)\s", result.output)
    assert {"land", "demo", "tables"} <= set(commands)
    for command in commands:
        sub = runner.invoke(app, [command, "--help"])
        assert sub.exit_code == 0 and "Usage" in sub.output, command


def test_land_writes_every_source_and_reports_malformed_rows(settings: Settings) -> None:
    result = runner.invoke(app, ["land", "--date", "2026-03-02", "--rows", "50", "--bad-rows", "0.1"])
    assert result.exit_code == 0, result.output
    for source in ("tickets", "orders", "ticket_outcomes"):
        assert (settings.paths.landing / source / "2026-03-02.csv").exists()
    assert "truncated_line=" in result.output


def test_land_parquet(settings: Settings) -> None:
    result = runner.invoke(app, ["land", "--date", "2026-03-02", "--rows", "20", "--format", "parquet"])
    assert result.exit_code == 0, result.output
    assert (settings.paths.landing / "orders" / "2026-03-02.parquet").exists()


def test_bad_input_gets_a_clear_error(settings: Settings) -> None:
    bad_date = runner.invoke(app, ["land", "--date", "2026-02-30"])
    assert bad_date.exit_code == 2 and "YYYY-MM-DD" in bad_date.output
    bad_drift = runner.invoke(app, ["land", "--date", "2026-03-02", "--drift", "weather"])
    assert bad_drift.exit_code == 2 and "known aspects" in bad_drift.output


def test_a_bad_profile_value_stops_before_any_work(settings: Settings, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LOOPWISE__VALIDATION__MAX_BAD_ROW_FRACTION", "lots")
    result = runner.invoke(app, ["land", "--date", "2026-03-02"])
    assert result.exit_code == 2
    assert "validation.max_bad_row_fraction" in result.output
    assert not settings.paths.landing.exists()


def test_audit_verify_names_a_tampered_record_and_status_shows_versions(settings: Settings, tmp_path: Path) -> None:
    import sqlite3

    from loopwise.events import open_store
    from loopwise.lifecycle import Lifecycle

    store = open_store(settings.events_url)
    lifecycle = Lifecycle(store)
    for state in ("trained", "validated", "challenger"):
        lifecycle.transition("ticket-escalation", 1, state)
    recorded = runner.invoke(app, ["audit", "record", "--action", "paused retraining", "--subject", "job:retrain",
                                   "--reason", "holiday freeze", "--actor", "alice"])
    assert recorded.exit_code == 0, recorded.output
    log = runner.invoke(app, ["audit", "log", "--kind", "manual.*"])
    assert "job:retrain" in log.output and "by alice" in log.output and "holiday freeze" in log.output
    status = runner.invoke(app, ["status"])
    assert status.exit_code == 0, status.output
    assert "ticket-escalation/1" in status.output and "challenger" in status.output
    assert "raw" in status.output and "never materialized" in status.output
    assert "features" in status.output and "ticket_escalation" in status.output and "order_refund_risk" in status.output
    assert runner.invoke(app, ["audit", "verify"]).exit_code == 0
    out = tmp_path / "audit.jsonl"
    assert "wrote 4 events" in runner.invoke(app, ["audit", "export", "--out", str(out)]).output

    conn = sqlite3.connect(settings.paths.events / "events.db")
    conn.execute("DROP TRIGGER audit_events_no_update")
    conn.execute("UPDATE audit_events SET actor = 'mallory' WHERE seq = 4")
    conn.commit()
    verify = runner.invoke(app, ["audit", "verify"])
    assert verify.exit_code == 1 and "record 4 was edited" in verify.output


def test_status_and_lineage_work_for_every_model(built: Built, monkeypatch) -> None:
    for name, value in built.env.items():
        monkeypatch.setenv(name, value)
    status = runner.invoke(app, ["status"])
    assert status.exit_code == 0, status.output
    for spec in USE_CASE.models:
        assert re.search(rf"{spec.name}/1\s+champion", status.output), status.output  # the first release
        assert re.search(rf"{spec.slug}\s+1/1 tables", status.output)
        assert re.search(rf"{spec.name}\s+version 1 \(champion\) 100%\s+\[release promoted\]", status.output)
        chain = runner.invoke(app, ["lineage", f"{spec.name}@challenger"])
        assert chain.exit_code == 0, chain.output
        assert spec.training_table in chain.output and spec.feature_service in chain.output
        assert re.search(r"raw_orders\s+Delta version 0, partitions 2026-03-02..2026-03-03", chain.output)
    unknown = runner.invoke(app, ["lineage", "no-such-model@champion"])
    assert unknown.exit_code == 2 and "no lineage for no-such-model@champion" in unknown.output
