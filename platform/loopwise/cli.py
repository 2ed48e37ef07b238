"""The `loopwise` command line."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path
from typing import Annotated

import typer

from loopwise.config import ConfigError, Settings, load_settings

app = typer.Typer(help="Loopwise: an asset-based data and model platform on Dagster.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)

DATA_LAYER_SELECTION = "group:raw or group:bronze or group:silver"


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


def find_project_root(start: Path | None = None) -> Path:
    """The Loopwise repository that holds definitions.py and workspace.yaml."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "definitions.py").exists() and (folder / "workspace.yaml").exists():
            return folder
    raise FileNotFoundError(f"no Loopwise project (definitions.py, workspace.yaml) at or above {here}; "
                            "run this command from the repository")


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
    """The main job: land the demo days, materialize them to silver in one Dagster run, print the tables."""
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
    typer.secho(f"materializing {DATA_LAYER_SELECTION} for {partition_range} (one run)", bold=True)
    cmd = [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "definitions",
           "--select", DATA_LAYER_SELECTION, "--partition-range", partition_range]
    completed = subprocess.run(cmd, cwd=root, env=dagster_env(settings), capture_output=True, text=True)
    if completed.returncode != 0:
        typer.echo(completed.stdout[-4000:])
        typer.echo(completed.stderr[-8000:], err=True)
        typer.secho("the Dagster run failed (its log is above)", fg="red", err=True)
        raise typer.Exit(1)
    _print_tables(settings, demo_days)
    typer.secho(f"done: open the lineage with `make dev` (Dagster UI, instance {dagster_env(settings)['DAGSTER_HOME']})",
                fg="green")


if __name__ == "__main__":
    app()
