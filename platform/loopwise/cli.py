"""The `loopwise` command line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import warnings
from datetime import UTC, date, timedelta
from pathlib import Path
from typing import Annotated

import typer

from loopwise.config import ConfigError, Settings, load_settings

app = typer.Typer(help="Loopwise: an asset-based data and model platform on Dagster.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)

DATA_LAYER_SELECTION = "group:raw or group:bronze or group:silver"
# The main job, in the order its runs go: each step is one Dagster run.
DEMO_STEPS = (
    ("register features (feast apply)", "key:feast_registry", False),
    ("landing files to silver, features, online store", DATA_LAYER_SELECTION + " or key:features_customer_orders"
     " or key:features_customer_support or key:online_features", True),
    ("training set (point-in-time join through Feast)", "key:training_set", False),
    ("train, evaluate, register through the gate", "key:trained_model or key:model_evaluation or key:registered_model",
     False),
)
audit = typer.Typer(help="The audit trail: verify, export, read and record events.", no_args_is_help=True)
app.add_typer(audit, name="audit")


@app.callback()
def _main() -> None:
    from loopwise.secrets import install_log_redaction

    install_log_redaction()
    warnings.filterwarnings("ignore", category=DeprecationWarning)  # libraries' notices, not the user's concern


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(2) from None


def _parse_date(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a date; use YYYY-MM-DD") from None


@app.command()
def land(
    day: Annotated[str, typer.Option("--date", help="the day to land, YYYY-MM-DD")],
    rows: Annotated[int, typer.Option(help="about how many tickets the day has (orders are about 3x)")] = 2000,
    seed: Annotated[int, typer.Option(help="the same seed lands the same data")] = 7,
    drift: Annotated[str | None, typer.Option(
        help="shift named aspects: topic, amounts=F, channel=NAME, escalation=X (comma-separated)")] = None,
    bad_rows: Annotated[float, typer.Option(
        "--bad-rows", help="share of malformed rows to inject (0 to 0.5): every kind a real feed has")] = 0.0,
    fmt: Annotated[str, typer.Option("--format", help="csv or parquet")] = "csv",
) -> None:
    """Write one day's tickets, orders and ticket outcomes to the landing zone."""
    from loopwise.landing import zone
    from loopwise.landing.synthetic import DriftSpecError

    settings = _settings()
    try:
        landed = zone.land_day(settings.paths.landing, _parse_date(day), rows, seed, drift, bad_rows, fmt)
    except (DriftSpecError, ValueError) as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(2) from None
    for f in landed:
        kinds: dict[str, int] = {}
        for kind in f.bad_lines.values():
            kinds[kind] = kinds.get(kind, 0) + 1
        bad = ", ".join(f"{k}={v}" for k, v in sorted(kinds.items())) or "none"
        typer.echo(f"landed {f.rows:>6} rows  {f.path}  (malformed: {bad})")


def _print_tables(settings: Settings, days: list[date] | None = None) -> None:
    from loopwise.contracts import SOURCES
    from loopwise.lake.tables import DateRange, Lake
    from loopwise.pipelines import stages

    lake = Lake(settings.lake_uri, settings.lake.storage_options)
    window = DateRange(min(days), max(days)) if days else None
    typer.echo(f"{'table':<26}{'version':>8}  {'rows' + (' in ' + str(window) if window else ''):>28}")
    for source in SOURCES:
        for table in (stages.raw_table(lake, source), stages.bronze_table(lake, source), stages.silver_table(lake, source)):
            version = table.current_version()
            rows = table.count(window) if version is not None else 0
            typer.echo(f"{table.name:<26}{'-' if version is None else version:>8}  {rows:>28}")
    quarantine = stages.quarantine_table(lake)
    typer.echo(f"{quarantine.name:<26}{quarantine.current_version() if quarantine.exists() else '-':>8}")
    for source, count in sorted(stages.quarantine_counts(lake).items()):
        typer.echo(f"  quarantined {source:<20}{count:>8} rows")


@app.command()
def tables() -> None:
    """Show every Delta table's version, row count and the quarantine counts."""
    _print_tables(_settings())


def _print_training_and_online(settings: Settings, root: Path) -> None:
    from loopwise.features import stages as features
    from loopwise.features.retrieval import online_features
    from loopwise.features.store import feature_store
    from loopwise.lake.tables import Lake

    lake = Lake(settings.lake_uri, settings.lake.storage_options)
    training = lake.table(features.TRAINING_SET)
    data = training.read()
    label_rate = sum(data.column(features.LABEL).to_pylist()) / max(1, data.num_rows)
    typer.echo(f"{training.name:<26}{training.current_version():>8}  {data.num_rows:>28}  (escalation rate {label_rate:.1%})")
    customer = data.column("customer_id")[0].as_py()
    store = feature_store(settings, root / "feature_repo")
    # The demo's days are fixed (2026-03) for deterministic output, so staleness against today is not checked here.
    row = online_features(store, [customer], stale_after=timedelta(days=36500))[0]
    typer.secho(f"online features of customer {customer} as served (feature service escalation_v1):", bold=True)
    for name, value in sorted(row.values.items()):
        typer.echo(f"  {name:<24} {value.value!s:>10}  {value.status.value}")


def _print_model(settings: Settings) -> None:
    from loopwise.events import open_for
    from loopwise.lake.tables import Lake
    from loopwise.lineage import model_lineage
    from loopwise.registry import GATE_EVALUATED

    store = open_for(settings)
    gates = store.read(kind=GATE_EVALUATED)
    if not gates:
        return
    gate = gates[-1]
    version = gate.payload["version"]
    typer.secho(f"{settings.registry.model_name} version {version}: gate {gate.reason}", bold=True)
    typer.echo("  metrics: " + ", ".join(f"{k} {v}" for k, v in gate.payload["candidate"].items()))
    for reason in gate.payload["reasons"]:
        typer.echo(f"  - {reason}")
    typer.secho("lineage:", bold=True)
    chain = model_lineage(settings.tracking_uri, store, Lake(settings.lake_uri), f"{settings.registry.model_name}/{version}")
    for step in chain.steps:
        runs = ", ".join(r[:8] for r in step.runs if r) or "-"
        typer.echo(f"  {step.asset:<28} {step.detail}  (runs {runs})")


def find_project_root(start: Path | None = None) -> Path:
    """The Loopwise repository that holds definitions.py and workspace.yaml."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "definitions.py").exists() and (folder / "workspace.yaml").exists():
            return folder
    raise FileNotFoundError(f"no Loopwise project (definitions.py, workspace.yaml) at or above {here}; "
                            "run this command from the repository")


def failed_blocking_checks(log: str) -> list[str]:
    """`asset: check` for each blocking check that stopped a Dagster run, from the run's log."""
    found = [f"{asset}: {check}"
             for block in re.findall(r"blocking asset checks? failed with ERROR severity:\n((?:[\w/]+: [\w,]+\n?)+)", log)
             for asset, checks in re.findall(r"([\w/]+): ([\w,]+)", block) for check in checks.split(",")]
    return list(dict.fromkeys(found))  # the step's failure and the run's failure both name them


def dagster_env(settings: Settings) -> dict[str, str]:
    """The environment for Dagster commands: its instance lives under the data root unless DAGSTER_HOME says."""
    env = dict(os.environ)
    home = Path(env.get("DAGSTER_HOME") or settings.paths.dagster_home).resolve()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text("telemetry:\n  enabled: false\n")
    env["DAGSTER_HOME"] = str(home)
    env.setdefault("LOOPWISE_DATA_DIR", str(settings.data_dir.resolve()))
    return env


@app.command()
def demo(
    days: Annotated[int, typer.Option(help="how many consecutive days to land, from the profile's first demo date")] = 0,
) -> None:
    """The main job: land the demo days; run them through silver, features and the online store; build the
    training set; train, evaluate and register through the gate; print what each step produced."""
    from loopwise.landing import zone

    settings = _settings()
    demo_days = list(settings.demo.dates)
    if days:
        demo_days = [demo_days[0] + timedelta(days=i) for i in range(days)]
    root = find_project_root()
    typer.secho(f"profile {settings.profile}, data under {settings.paths.root}", bold=True)
    for day in demo_days:
        landed = zone.land_day(settings.paths.landing, day, settings.demo.tickets_per_day, settings.demo.seed,
                               None, settings.demo.bad_row_fraction)
        typer.echo(f"landed {day}: " + ", ".join(f"{f.source} {f.rows} rows ({len(f.bad_lines)} malformed)" for f in landed))
    partition_range = f"{min(demo_days)}...{max(demo_days)}"
    env = dagster_env(settings)
    stopped_by: list[str] = []
    for title, selection, partitioned in DEMO_STEPS:
        typer.secho(f"{title}{f' for {partition_range}' if partitioned else ''} (one run)...", bold=True, nl=False)
        cmd = [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "definitions", "--select", selection,
               *(["--partition-range", partition_range] if partitioned else [])]
        started = time.monotonic()
        completed = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
        typer.echo(f" {time.monotonic() - started:.0f} s")
        if completed.returncode != 0:
            stopped_by = failed_blocking_checks(completed.stdout + completed.stderr)
            if not stopped_by:
                typer.echo(completed.stdout[-4000:])
                typer.echo(completed.stderr[-8000:], err=True)
                typer.secho(f"the Dagster run for {selection!r} failed (its log is above)", fg="red", err=True)
                raise typer.Exit(1)
            break
    sync = subprocess.run([sys.executable, "-m", "sensors.audit"], cwd=root, env=env, capture_output=True, text=True)
    typer.echo(f"audit trail: {(sync.stdout.strip().splitlines() or [sync.stderr.strip()[-300:]])[-1]}")
    _print_tables(settings, demo_days)
    if not stopped_by:
        with warnings.catch_warnings():  # Feast's import turns every DeprecationWarning back on ('once'): undo it after
            _print_training_and_online(settings, root)
    _print_model(settings)
    if stopped_by:
        typer.secho(f"stopped by blocking checks: {', '.join(stopped_by)}; nothing downstream of them ran "
                    f"(the checks' metadata and the run's log: `make dev`, instance {env['DAGSTER_HOME']})",
                    fg="red", err=True)
        raise typer.Exit(1)
    typer.secho(f"done: open the lineage with `make dev` (Dagster UI, instance {env['DAGSTER_HOME']})", fg="green")


def _store(settings: Settings):  # type: ignore[no-untyped-def]
    from loopwise.events import open_for
    from loopwise.secrets import SecretMissing

    try:
        return open_for(settings)
    except SecretMissing as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(2) from None


@audit.command("verify")
def audit_verify() -> None:
    """Check the hash chain; name every edited, reordered or deleted record (exit 1 if any)."""
    report = _store(_settings()).verify()
    if report.ok:
        typer.secho(f"audit trail intact: {report.records} records, hash chain verified", fg="green")
        return
    for problem in report.problems:
        typer.secho(problem, fg="red")
    raise typer.Exit(1)


@audit.command("export")
def audit_export(out: Annotated[Path, typer.Option(help="the JSON-lines file to write")] = Path("audit.jsonl")) -> None:
    """Write every event as JSON lines (with its hashes, so the export can be verified elsewhere)."""
    count = _store(_settings()).export(out)
    typer.echo(f"wrote {count} events to {out}")


@audit.command("log")
def audit_log(
    kind: Annotated[str | None, typer.Option(help="only events of this kind; * matches anything, e.g. 'lifecycle.*'")] = None,
    subject: Annotated[str | None, typer.Option(help="only events about this subject, e.g. model:ticket-escalation/3")] = None,
    tail: Annotated[int, typer.Option(help="how many of the most recent events")] = 20,
) -> None:
    """Show the most recent events."""
    records = _store(_settings()).read(kind=kind, subject=subject)[-tail:]
    for r in records:
        why = f"  ({r.reason})" if r.reason else ""
        typer.echo(f"{r.seq:>6}  {r.at[:19]}  {r.kind:<24} {r.subject:<40} by {r.actor}{why}")


@audit.command("record")
def audit_record(
    action: Annotated[str, typer.Option(help="what was done, e.g. 'paused retraining'")],
    subject: Annotated[str, typer.Option(help="what it was done to, e.g. asset:silver_orders")],
    reason: Annotated[str, typer.Option(help="why")],
    actor: Annotated[str, typer.Option(envvar="USER", help="who (default: $USER)")] = "unknown",
) -> None:
    """Record a manual action (who, what, why) in the audit trail."""
    from loopwise.events import Event

    record = _store(_settings()).append(Event("manual.action", subject, {"action": action}, actor, reason))
    typer.echo(f"recorded event {record.seq}")


@app.command()
def lineage(ref: Annotated[str, typer.Argument(help="MODEL@ALIAS or MODEL/VERSION, e.g. ticket-escalation@champion")]) -> None:
    """The chain from a model version back to the raw partitions it came from."""
    from loopwise.lake.tables import Lake
    from loopwise.lineage import model_lineage

    settings = _settings()
    try:
        chain = model_lineage(settings.tracking_uri, _store(settings), Lake(settings.lake_uri), ref)
    except Exception as exc:  # an unknown model, version or alias: say which
        typer.secho(f"no lineage for {ref}: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None
    for step in chain.steps:
        runs = ", ".join(r for r in step.runs if r) or "-"
        typer.echo(f"  {step.asset:<28} {step.detail}\n  {'':<28} Dagster runs: {runs}")


@app.command()
def status() -> None:
    """Every model version's state, the freshness of each asset group, and the endpoint's traffic."""
    from datetime import datetime

    from loopwise.lake.tables import Lake
    from loopwise.status import platform_status

    settings = _settings()
    report = platform_status(_store(settings), Lake(settings.lake_uri, settings.lake.storage_options))
    now = datetime.now(UTC)
    typer.secho("asset groups", bold=True)
    for g in report.groups:
        typer.echo(f"  {g.group:<10} {g.materialized}/{g.tables} tables  last complete: {g.age(now)}")
    typer.secho("model versions", bold=True)
    for v in report.versions:
        typer.echo(f"  {v.model}/{v.version:<6} {v.state.value:<12} since {v.since[:19]}")
    if not report.versions:
        typer.echo("  none yet")
    typer.secho("serving", bold=True)
    typer.echo("  " + (", ".join(f"{k} {v:.0%}" for k, v in report.traffic.items()) or "no endpoint deployed"))


if __name__ == "__main__":
    app()
