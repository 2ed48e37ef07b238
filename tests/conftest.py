"""Shared fixtures: an isolated data root per test, one embedded Sail session per test process."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest
from loopwise.config import Settings, load_settings
from loopwise.lake.tables import Lake

DAY1, DAY2 = date(2026, 3, 2), date(2026, 3, 3)
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The test profile with its data root in a fresh temporary folder."""
    monkeypatch.setenv("LOOPWISE_PROFILE", "test")
    monkeypatch.setenv("LOOPWISE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("SPARK_REMOTE", raising=False)
    return load_settings()


@pytest.fixture
def lake(settings: Settings) -> Lake:
    return Lake(settings.lake_uri)


@pytest.fixture(scope="session")
def spark() -> Iterator[object]:
    """The embedded Sail session, shared by the whole test process as it is in a Dagster run."""
    from loopwise.spark import connect

    yield connect(None)


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


PLANTED_SECRET = "planted-Secret-9f3kq7-never-print"


@pytest.fixture(scope="session")
def postgres() -> Iterator[object]:
    """A real PostgreSQL server on loopback whose password is the planted secret."""
    from tests.services import postgres_server

    with postgres_server(PLANTED_SECRET) as server:
        yield server


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real Redis server on loopback (Debian's redis-server)."""
    from tests.services import redis_server

    with redis_server() as url:
        yield url
