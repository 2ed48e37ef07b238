"""Secrets: by name from the environment or a mounted file; never printed, stored or logged."""

import logging
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
from loopwise.config import load_settings
from loopwise.events import Event
from loopwise.secrets import SecretMissing, get_secret, redact

from resources import EventStoreResource
from sensors import audit_trail_sensor
from tests.conftest import DAY1, PLANTED_SECRET
from tests.services import child_env
from tests.test_data_layer_assets import materialize

ROOT = Path(__file__).resolve().parent.parent


def test_a_secret_comes_from_the_environment_or_a_mounted_file(tmp_path: Path) -> None:
    assert get_secret("api_token", {"LOOPWISE_SECRET_API_TOKEN": "abc"}) == "abc"
    (tmp_path / "api_token").write_text("from-file\n")
    assert get_secret("api_token", {"LOOPWISE_SECRETS_DIR": str(tmp_path)}) == "from-file"


def test_a_missing_secret_names_itself_and_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(SecretMissing) as err:
        get_secret("postgres_password", {"LOOPWISE_SECRETS_DIR": str(tmp_path)})
    assert "postgres_password" in str(err.value) and "LOOPWISE_SECRET_POSTGRES_PASSWORD" in str(err.value)
    assert str(tmp_path / "postgres_password") in str(err.value)


def test_a_missing_secret_fails_the_definitions_at_start(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOPWISE")}
    env.update(LOOPWISE_PROFILE="prod", LOOPWISE_DATA_DIR=str(tmp_path), LOOPWISE_SECRETS_DIR=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", "import definitions"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode != 0
    assert "secret 'postgres_password' is not set" in out.stderr


def test_redaction_reaches_into_nested_values() -> None:
    get_secret("planted", {"LOOPWISE_SECRET_PLANTED": PLANTED_SECRET})
    assert redact({"dsn": f"postgresql://u:{PLANTED_SECRET}@h/db", "list": [PLANTED_SECRET]}) == \
        {"dsn": "postgresql://u:***@h/db", "list": ["***"]}


def test_the_planted_secret_never_appears_in_any_output(postgres, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """Use the platform with its database password as a secret; grep everything it produced."""
    env = {
        "LOOPWISE_PROFILE": "test", "LOOPWISE_DATA_DIR": str(tmp_path / "data"),
        "LOOPWISE__EVENTS__URL": postgres.url, "LOOPWISE__EVENTS__PASSWORD_SECRET": "postgres_password",
        "LOOPWISE_SECRET_POSTGRES_PASSWORD": PLANTED_SECRET,
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    outputs: list[str] = []

    def cli(*args: str) -> None:
        done = subprocess.run([sys.executable, "-m", "loopwise.cli", *args], cwd=ROOT, env=child_env(**env),
                              capture_output=True, text=True)
        outputs.extend([done.stdout, done.stderr])

    cli("land", "--date", DAY1.isoformat(), "--rows", "60")
    # Someone pastes the password into a reason: the trail stores it masked.
    cli("audit", "record", "--action", "rotated credentials", "--subject", "db:events",
        "--reason", f"old password {PLANTED_SECRET} leaked")
    settings = load_settings()
    events = EventStoreResource(url=settings.events_url, password_secret="postgres_password")
    with dg.instance_for_test() as instance:
        assert materialize(settings, instance, DAY1).success
        audit_trail_sensor(dg.build_sensor_context(instance=instance, resources={"events": events}))
        for run in instance.get_runs():
            outputs.extend(str(e) for e in instance.all_logs(run.run_id))
    store = events.store()
    store.append(Event("manual.action", "db:events", {"dsn": f"postgresql://loopwise:{PLANTED_SECRET}@x/db"}))
    logging.getLogger("loopwise.test").warning("connecting with %s", PLANTED_SECRET)
    outputs.extend(r.getMessage() for r in caplog.records)
    cli("audit", "log", "--tail", "100")
    cli("audit", "verify")
    cli("status")
    cli("audit", "export", "--out", str(tmp_path / "audit.jsonl"))
    outputs.append((tmp_path / "audit.jsonl").read_text())
    # A connection failure's error message.
    bad = subprocess.run([sys.executable, "-m", "loopwise.cli", "audit", "verify"], cwd=ROOT, capture_output=True,
                         text=True, env=child_env(**{**env, "LOOPWISE__EVENTS__URL": postgres.url.replace("/postgres", "/nosuchdb")}))
    outputs.extend([bad.stdout, bad.stderr])
    assert bad.returncode != 0 and "nosuchdb" in bad.stderr

    everything = "\n".join(outputs)
    assert "rotated credentials" in everything and "asset:silver_orders" in everything  # the outputs are real
    assert "***" in everything
    assert PLANTED_SECRET not in everything
