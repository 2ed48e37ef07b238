"""Shared fixtures: an isolated data root per test, one embedded Sail session per test process, and one
platform built once per session (`built`) for every test that only reads what the main job makes."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pytest
from loopwise.config import Settings, load_settings
from loopwise.lake.tables import Lake

DAY1, DAY2 = date(2026, 3, 2), date(2026, 3, 3)
REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts"
_UNTRACKED = pytest.StashKey[set[str]]()


def _untracked_files() -> set[str]:
    """Files in the source tree that git neither tracks nor ignores (empty outside a git checkout)."""
    import subprocess

    done = subprocess.run(["git", "-C", str(REPO), "ls-files", "--others", "--exclude-standard"],
                          capture_output=True, text=True)
    return set(done.stdout.splitlines()) if done.returncode == 0 else set()


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_UNTRACKED] = _untracked_files()
    if _xdist_controller(session.config):  # before the workers start, so that they inherit where the loop runs
        import tempfile

        from tests.test_loop import SHARED_ROOT

        os.environ[SHARED_ROOT] = tempfile.mkdtemp(prefix="loopwise-loop-")


def _is_loop(nodeid: str) -> bool:
    return nodeid.startswith("tests/test_loop.py")


def _xdist_controller(config: pytest.Config) -> bool:
    return config.pluginmanager.hasplugin("dsession")


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """The closed loop's end-to-end test runs `loopwise loop` (~4 min alone, 8-10 min beside the suite) in the
    background, beside the rest of the suite (it mostly waits on the Dagster daemon's ticks): started as soon as
    the tests are collected, asserted last. Under pytest-xdist (`make test`) the controller starts it, beside
    its workers."""
    items[:] = [item for item in items if not _is_loop(item.nodeid)] + [item for item in items if _is_loop(item.nodeid)]


def pytest_collection_finish(session: pytest.Session) -> None:
    config = session.config
    if hasattr(config, "workerinput") or config.option.collectonly:
        return  # an xdist worker: its controller starts the loop
    if any(_is_loop(item.nodeid) for item in session.items):
        from tests.test_loop import RUN, LoopRun

        config.stash[RUN] = LoopRun.start()


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node: object, ids: list[str]) -> None:
    """In the xdist controller: once a worker has collected the loop's test, start the loop where workers look."""
    from tests.test_loop import RUN, SHARED_ROOT, LoopRun

    config: pytest.Config = node.config  # type: ignore[attr-defined]
    if RUN not in config.stash and not config.option.collectonly and any(_is_loop(i) for i in ids):
        config.stash[RUN] = LoopRun.start(Path(os.environ[SHARED_ROOT]))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run when anything wrote into the source tree: the platform writes under its data root only."""
    from tests.test_loop import RUN, SHARED_ROOT

    loop = session.config.stash.get(RUN, None)
    unused = Path(os.environ.get(SHARED_ROOT, "")) if loop is None and _xdist_controller(session.config) else None
    if unused is not None and unused.name.startswith("loopwise-loop-"):  # made in sessionstart, for no loop
        shutil.rmtree(unused, ignore_errors=True)
    if loop is not None:
        loop.stop()  # a run stopped before its test (-x, ^C) leaves no daemon behind
        if exitstatus == 0:  # ~350 MB a run; kept for a look when anything failed
            shutil.rmtree(loop.root, ignore_errors=True)
        else:
            print(f"\nthe loop's data root is kept for a look: {loop.root}")
    written = sorted(_untracked_files() - session.config.stash.get(_UNTRACKED, set()))
    if written:
        print(f"\nFAILED: the tests wrote into the source tree (everything belongs under the data root): {written}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


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
def apache_spark(spark: object) -> object:
    """A real Apache Spark Connect server (local[2], needs Java 17), proven not to be Sail. Only
    tests/test_transforms.py asks for it, so that one worker starts the Java server, once."""
    import shutil

    from loopwise.spark import connect, engine_version

    if shutil.which("java") is None:
        pytest.skip("Java is not installed: the Apache Spark Connect server cannot start")
    session = connect("local[2]")
    assert engine_version(session).startswith("4."), engine_version(session)
    assert engine_version(spark).startswith("Sail ")
    return session


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


@dataclass
class Built:
    """A platform built once per test session through the main job's runs (read it, never change it)."""

    settings: Settings
    instance: object  # dagster.DagsterInstance
    steps: list[object]  # jobs.main.StepResult, in order
    landed: list[object]  # loopwise.landing.zone.LandedFile of both days
    env: dict[str, str]

    @property
    def lake(self) -> Lake:
        return Lake(self.settings.lake_uri)


BUILT_ENV = {"LOOPWISE_PROFILE": "test", "LOOPWISE__TRAINING__EPOCHS": "3",
             # The gate is tested on its own; here every model must register, whatever 2 days of data give.
             "LOOPWISE__REGISTRY__FLOORS": "{auc: 0.0}", "LOOPWISE__REGISTRY__CEILINGS": "{brier: 1.0}"}


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    """Two landed days (with malformed rows) through raw, bronze, silver, features, the online store, and every
    declared model trained, evaluated and registered: the main job's own runs (`jobs.main.run`), once per session.

    Under pytest-xdist the first worker to ask builds it once for all, and each worker gets its own copy (data
    root and Dagster instance), so what one worker's tests write never reaches another's. Building it took 60-110 s
    a worker beside the suite."""
    import dagster as dg

    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker is None:
        home = tmp_path_factory.mktemp("built")
        steps, landed = _build(home)
    else:
        steps, landed, home = _shared_build(tmp_path_factory.getbasetemp().parent / "built", worker)
    env = _built_env(home)
    with _profile(env):
        settings = load_settings()
        if worker is not None:  # Feast's registry names the origin's lake: point the copy's at its own
            from loopwise.backends import Backends
            from loopwise.features.store import ensure_applied

            backends = Backends(settings)
            ensure_applied(backends.feature_store(), backends.use_case.feature_repo, settings.lake_uri)
    with dg.instance_for_test(temp_dir=str(home / "dagster")) as instance:
        yield Built(settings, instance, steps, landed, env)


def _built_env(home: Path) -> dict[str, str]:
    """The built platform's profile, with its data root under `home`."""
    return {**BUILT_ENV, "LOOPWISE_DATA_DIR": str(home / "data")}


def _build(home: Path) -> tuple[list[object], list[object]]:
    """Build the platform under `home` (data root `data/`, Dagster instance `dagster/`); the steps and landed files."""
    import dagster as dg
    from loopwise.landing import zone
    from supportdesk import USE_CASE

    from jobs import main

    (home / "dagster").mkdir(parents=True)
    with dg.instance_for_test(temp_dir=str(home / "dagster")) as instance, _profile(_built_env(home)):
        settings = load_settings()
        landed = [f for day in (DAY1, DAY2) for f in
                  zone.land_day(USE_CASE, settings.paths.landing, day, 200, seed=15, bad_row_fraction=0.02)]
        steps = list(main.run(settings, instance, [DAY1, DAY2]))
    assert [s.success for s in steps] == [True] * len(main.steps()), [(s.title, s.error) for s in steps]
    return steps, landed


def _shared_build(shared: Path, worker: str) -> tuple[list[object], list[object], Path]:
    """The platform built once for every xdist worker under `shared/origin`, then copied for each worker before
    anyone uses it: the origin is never opened again (its MLflow runs' artifacts are read from there, never changed)."""
    import fcntl
    import pickle
    import shutil
    from dataclasses import replace

    shared.mkdir(exist_ok=True)
    result, failed = shared / "result.pickle", shared / "failed.txt"
    with open(shared / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if failed.exists():
            pytest.fail(f"the shared platform build failed in another worker: {failed.read_text()}")
        if not result.exists():
            origin = shared / "origin"
            try:
                steps, landed = _build(origin)
            except BaseException as exc:
                failed.write_text(repr(exc))
                raise
            for n in range(int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))):
                shutil.copytree(origin, shared / f"gw{n}", symlinks=True)
            result.write_bytes(pickle.dumps((steps, landed)))
        steps, landed = pickle.loads(result.read_bytes())
    home = shared / worker
    return steps, [replace(f, path=home / f.path.relative_to(shared / "origin")) for f in landed], home


@contextmanager
def _profile(env: dict[str, str]) -> Iterator[None]:
    """The profile comes from the environment (feature_repo/ reads the lake's location from it too): set it while
    building or loading only, so the tests that follow see their own."""
    with pytest.MonkeyPatch.context() as patch:
        for name in [n for n in os.environ if n.startswith("LOOPWISE")]:
            patch.delenv(name)
        for name, value in env.items():
            patch.setenv(name, value)
        yield
