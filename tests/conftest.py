"""Session fixtures: a real restate-server, the real sample workflow service, a real Prefect server.

Nothing here skips: if a server cannot start, the fixture raises and every test using it fails,
with the server's log tail in the error.
"""

from __future__ import annotations

import os
import random
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

# Before anything imports prefect: a private PREFECT_HOME and the session server's URL.
SESSION_DIR = Path(tempfile.mkdtemp(prefix="restate-recovery-tests-"))
KEEP_SESSION_DIR = bool(os.environ.get("RECOVERY_KEEP_TEST_DIR"))  # to read the servers' logs
POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "")  # set by scripts/test (and so .ci/run)
for _name in list(os.environ):
    if _name.startswith(("RESTATE_", "RECOVERY_", "PREFECT_")):
        del os.environ[_name]
os.environ["PREFECT_HOME"] = str(SESSION_DIR / "prefect-client")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "1"
os.environ["RECOVERY_DATABASE_URL"] = f"sqlite:///{SESSION_DIR / 'recovery.db'}"

from restate_recovery.settings import DATA_DIR, get_settings  # noqa: E402
from tests.support.local_stack import (  # noqa: E402
    PrefectServer,
    RestateServer,
    SampleService,
    free_port,
)

PREFECT_PORT = free_port()
os.environ["PREFECT_API_URL"] = f"http://127.0.0.1:{PREFECT_PORT}/api"

import pytest  # noqa: E402


@dataclass(frozen=True)
class RestateStack:
    server: RestateServer
    service_url: str
    deployment_id: str

    @property
    def admin_url(self) -> str:
        return self.server.admin_url

    @property
    def ingress_url(self) -> str:
        return self.server.ingress_url


# Libraries that keep threads alive between tests and draw from the global ``random`` there:
# websockets' keep-alive pings and reconnect delays (Prefect's events client), Prefect's retry
# and service-loop jitter, uvicorn, SQLAlchemy. Hypothesis reads any change to the global
# generator during a draw as "a strategy uses random" (a HypothesisDeprecationWarning, an error
# here), so a ping landing mid-draw failed a property test at random (CI, stop 11).
BACKGROUND_RANDOM_USERS = (
    "websockets",
    "prefect",
    "uvicorn",
    "sqlalchemy",
    "anyio",
    "httpcore",
    "docket",
    "redis",
)


def own_random() -> SimpleNamespace:
    """The ``random`` module with every drawing function bound to a private generator."""
    generator = random.Random()
    names = {name: getattr(random, name) for name in dir(random) if not name.startswith("_")}
    for name in list(names):
        if callable(names[name]) and not isinstance(names[name], type) and hasattr(generator, name):
            names[name] = getattr(generator, name)
    return SimpleNamespace(**names)


@pytest.fixture
def background_threads_own_random() -> Iterator[None]:
    """For Hypothesis tests: every loaded module of those libraries that imported ``random``
    draws from a private generator while the test runs, so the global one is Hypothesis's."""
    with pytest.MonkeyPatch.context() as patch:
        for name, module in list(sys.modules.items()):
            # vars(), not getattr(): Prefect's packages import unknown attributes lazily
            if name.split(".")[0] in BACKGROUND_RANDOM_USERS and (
                vars(module).get("random") is random
            ):
                patch.setattr(module, "random", own_random())
        yield


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not KEEP_SESSION_DIR:
        shutil.rmtree(SESSION_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def sample_service() -> Iterator[SampleService]:
    service = SampleService(SESSION_DIR / "sample-service").start()
    yield service
    service.stop()


def _start_stack(base_dir: Path, service: SampleService) -> RestateStack:
    server = RestateServer(base_dir).start()
    try:
        deployment_id = server.register(service.url)
    except Exception:
        server.stop()
        raise
    return RestateStack(server=server, service_url=service.url, deployment_id=deployment_id)


@pytest.fixture(scope="session")
def restate(sample_service: SampleService) -> Iterator[RestateStack]:
    """One restate-server for the session, with the sample service registered."""
    stack = _start_stack(SESSION_DIR / "restate", sample_service)
    yield stack
    stack.server.stop()


@pytest.fixture
def fresh_restate(tmp_path: Path, sample_service: SampleService) -> Iterator[RestateStack]:
    """A restate-server of this test's own (about 1 s), for tests that need an empty one."""
    stack = _start_stack(tmp_path / "restate", sample_service)
    yield stack
    stack.server.stop()


@pytest.fixture
def settings_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """Set RESTATE_* variables through the returned monkeypatch; settings are re-read."""
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


@pytest.fixture
def restate_env(settings_env: pytest.MonkeyPatch, restate: RestateStack) -> RestateStack:
    settings_env.setenv("RESTATE_ADMIN_URL", restate.admin_url)
    settings_env.setenv("RESTATE_INGRESS_URL", restate.ingress_url)
    settings_env.setenv("RESTATE_SERVICE_URL", restate.service_url)
    get_settings.cache_clear()
    return restate


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh schema in the machine's PostgreSQL for this session (fails if it is unreachable)."""
    import sqlalchemy as sa

    from restate_recovery.store import normalize_url

    if not POSTGRES_URL:
        pytest.fail("TEST_POSTGRES_URL is not set: run the tests with ./scripts/test")
    schema = f"rr_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(normalize_url(POSTGRES_URL), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    separator = "&" if "?" in POSTGRES_URL else "?"
    yield f"{POSTGRES_URL}{separator}options=-csearch_path%3D{schema}"
    with admin.connect() as connection:
        connection.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


def postgres_admin() -> Any:
    """An autocommit engine on the machine's PostgreSQL (fails if ``TEST_POSTGRES_URL`` is not
    set)."""
    import sqlalchemy as sa

    from restate_recovery.store import normalize_url

    if not POSTGRES_URL:
        pytest.fail("TEST_POSTGRES_URL is not set: run the tests with ./scripts/test")
    return sa.create_engine(normalize_url(POSTGRES_URL), isolation_level="AUTOCOMMIT")


@pytest.fixture(scope="module")
def prefect_on_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    """A real Prefect server of the module's own on a database of its own in the machine's
    PostgreSQL, migrated by Prefect itself (as production runs it)."""
    import sqlalchemy as sa

    from restate_recovery.store import normalize_url

    name = f"rr_prefect_{uuid.uuid4().hex[:10]}"
    engine = postgres_admin()
    with engine.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    base = sa.engine.make_url(normalize_url(POSTGRES_URL))
    url = base.set(drivername="postgresql+asyncpg", database=name).render_as_string(False)
    home = tmp_path_factory.mktemp("prefect-pg")
    server = PrefectServer(home=home, template_cache=home, database_url=url)
    try:
        server.start(timeout_s=240)
        yield server
    finally:
        server.stop()
        with engine.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[PrefectServer]:
    """One real Prefect server for the session, started from a pre-migrated template DB."""
    server = PrefectServer(
        home=SESSION_DIR / "prefect-server",
        template_cache=DATA_DIR / "prefect-template",
        port=PREFECT_PORT,
    ).start()
    yield server
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=5)  # send the last run logs while the server is still up
    server.stop()
