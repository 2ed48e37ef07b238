"""`loopwise keys`: create (the key is shown once), list and revoke the API keys of the serving routes and the CLI.

Key management needs the admin role once auth is configured (the rule is in `loopwise.serving.auth`).
The first key, created while nothing is configured, must be an admin key: it is the one that can
make the others. `--break-glass` creates an admin key without one, for when every admin key is
lost; it needs the event store's own credentials and is recorded as `auth.break_glass`.
"""

from __future__ import annotations

from typing import Annotated

import typer

from loopwise.config import ConfigError, Settings, load_settings
from loopwise.events import Event, EventStore, open_for
from loopwise.secrets import SecretMissing
from loopwise.serving.auth import ROLES, AccessDenied, ApiKeys, Identity, authorize_cli, local_user

EXIT_DENIED = 77  # sysexits' EX_NOPERM: scripts can tell a refusal from a failure

keys = typer.Typer(help="API keys for the serving routes and the CLI: create (shown once), list, revoke.",
                   no_args_is_help=True)


def _open() -> tuple[Settings, EventStore]:
    try:
        settings = load_settings()
        return settings, open_for(settings)
    except (ConfigError, SecretMissing) as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(2) from None


def require_cli(settings: Settings, role: str, command: str, events: EventStore | None = None) -> Identity:
    """`authorize_cli` for a typer command: the caller's identity, or the refusal printed and exit 77."""
    try:
        return authorize_cli(settings, role, command=command, events=events)
    except AccessDenied as denial:
        typer.secho(f"refused: {denial.reason}", fg="red", err=True)
        raise typer.Exit(EXIT_DENIED) from None
    except ValueError as exc:  # a partial OIDC configuration
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(2) from None


@keys.command()
def create(
    name: Annotated[str, typer.Option(help="who or what uses the key, e.g. ci-deployer")],
    role: Annotated[str, typer.Option(help=f"one of {', '.join(ROLES)}")],
    break_glass: Annotated[bool, typer.Option(
        "--break-glass", help="create an admin key without one (every admin key lost); recorded")] = False,
) -> None:
    """Create a key with a role and print it once: only its scrypt hash is stored."""
    if role not in ROLES:
        raise typer.BadParameter(f"unknown role {role!r}: use one of {', '.join(ROLES)}", param_hint="--role")
    settings, store = _open()
    if break_glass:
        if role != "admin":
            raise typer.BadParameter("--break-glass creates admin keys only", param_hint="--role")
        identity = Identity(f"local:{local_user()}", "admin", "break-glass")
        store.append(Event("auth.break_glass", "auth:keys", {"name": name}, identity.subject,
                           "an admin key created without an admin credential"))
    else:
        identity = require_cli(settings, "admin", "keys create", store)
        if identity.via == "local" and role != "admin":
            typer.secho("the first key must be an admin key: it is the one that can create the others "
                        f"(loopwise keys create --name {name} --role admin)", fg="red", err=True)
            raise typer.Exit(2)
    try:
        record, key = ApiKeys(store).create(name, role, actor=identity.subject)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--name") from None
    typer.secho(f"created API key {record.id} ({record.name}, {record.role}); it is shown this once, store it now:",
                err=True)
    typer.echo(key)  # alone on stdout: KEY=$(loopwise keys create ...)


@keys.command("list")
def list_keys() -> None:
    """Every key: id, name, role, when and by whom it was created, and whether it is revoked (never a hash)."""
    settings, store = _open()
    require_cli(settings, "viewer", "keys list", store)
    records = ApiKeys(store).all()
    if not records:
        typer.echo("no API keys (create the first with: loopwise keys create --name NAME --role admin)")
        return
    typer.echo(f"{'id':<14}{'name':<24}{'role':<10}{'created':<21}{'by':<24}status")
    for r in records:
        status = f"revoked {r.revoked_at[:19]} by {r.revoked_by}" if r.revoked_at else "active"
        typer.echo(f"{r.id:<14}{r.name[:23]:<24}{r.role:<10}{r.created_at[:19]:<21}{r.created_by[:23]:<24}{status}")


@keys.command()
def revoke(
    key_id: Annotated[str, typer.Option("--id", help="the key's id (loopwise keys list)")],
    reason: Annotated[str, typer.Option(help="why, for the audit trail")] = "",
) -> None:
    """Revoke a key: every replica refuses it within seconds."""
    settings, store = _open()
    identity = require_cli(settings, "admin", "keys revoke", store)
    try:
        record = ApiKeys(store).revoke(key_id, actor=identity.subject, reason=reason)
    except LookupError as exc:
        typer.secho(str(exc.args[0]), fg="red", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"revoked API key {record.id} ({record.name}, {record.role})")
