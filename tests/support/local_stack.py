"""Start a real, throw-away Restate stack on loopback: restate-server plus the sample service.

Used by the demo job and by the test fixtures. Everything binds to 127.0.0.1 on free ports and
keeps its data in a directory the caller owns; ``stop()`` ends the processes.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from restate_recovery.sql import invocation_id_literal

logger = logging.getLogger(__name__)

PROJECT_DIR = Path(__file__).resolve().parents[2]
RESTATE_NPM_DIR = PROJECT_DIR / "tools" / "restate" / "node_modules" / "@restatedev"
WORKFLOW = "IdentityRecoveryWorkflow"
READY_QUERY = "SELECT count(*) AS n FROM sys_invocation_status"


class StackError(RuntimeError):
    """The local stack could not be started."""


_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback port nothing listens on, never one this process handed out before (the kernel
    may offer a just-closed port again: one server once got the same port for two roles)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def _npm_binary(package: str, name: str, env_var: str) -> Path:
    configured = os.environ.get(env_var)
    if configured:
        return Path(configured)
    candidates = sorted(RESTATE_NPM_DIR.glob(f"{package}-linux-*/bin/{name}"))
    if not candidates:
        raise StackError(
            f"{name} is not installed under {RESTATE_NPM_DIR}: run ./scripts/bootstrap "
            f"(or set {env_var})"
        )
    return candidates[0]


def restate_server_binary() -> Path:
    return _npm_binary("restate-server", "restate-server", "RESTATE_SERVER_BIN")


def restate_cli_binary() -> Path:
    return _npm_binary("restate", "restate", "RESTATE_CLI_BIN")


def _wait_until(
    check: str, deadline_s: float, probe: Callable[[], bool], process: subprocess.Popen[bytes]
) -> None:
    deadline = time.monotonic() + deadline_s
    last_error = "never answered"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise StackError(f"{check}: the process exited with {process.returncode}")
        try:
            if probe():
                return
        except (httpx.HTTPError, OSError) as exc:
            last_error = repr(exc)
        time.sleep(0.05)
    raise StackError(f"{check}: not ready after {deadline_s:.0f} s ({last_error})")


def _spawn(
    what: str,
    args: list[str],
    *,
    log_path: Path,
    probe: Callable[[], bool],
    timeout_s: float,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start a process in its own session, logging to ``log_path``; wait until ``probe`` passes.
    On failure the process is stopped and the error carries the log's tail."""
    log = log_path.open("ab")
    process = subprocess.Popen(
        args,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    log.close()
    try:
        _wait_until(what, timeout_s, probe, process)
    except StackError as exc:
        _terminate(process)
        tail = log_path.read_text(errors="replace")[-2000:]
        raise StackError(f"{exc}\n--- {log_path} (tail) ---\n{tail}") from exc
    return process


@dataclass
class RestateServer:
    """One restate-server process with its own ports and data directory."""

    base_dir: Path
    admin_port: int = field(default_factory=free_port)
    ingress_port: int = field(default_factory=free_port)
    node_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    extra_config: str = ""  # top-level lines added to restate.toml

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def ingress_url(self) -> str:
        return f"http://127.0.0.1:{self.ingress_port}"

    @property
    def log_path(self) -> Path:
        return self.base_dir / "restate-server.log"

    def start(self, *, timeout_s: float = 60.0) -> RestateServer:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        config = self.base_dir / "restate.toml"
        config.write_text(
            "\n".join(
                [
                    'node-name = "recovery-test"',
                    f'base-dir = "{self.base_dir / "data"}"',
                    f'bind-address = "127.0.0.1:{self.node_port}"',
                    f'advertised-address = "http://127.0.0.1:{self.node_port}/"',
                    "disable-telemetry = true",
                    "default-num-partitions = 2",
                    self.extra_config,
                    "[admin]",
                    f'bind-address = "127.0.0.1:{self.admin_port}"',
                    "[ingress]",
                    f'bind-address = "127.0.0.1:{self.ingress_port}"',
                    "",
                ]
            )
        )
        self.process = _spawn(
            "restate-server",
            [str(restate_server_binary()), "--config-file", str(config)],
            log_path=self.log_path,
            probe=self._ready,
            timeout_s=timeout_s,
        )
        return self

    def _ready(self) -> bool:
        response = httpx.post(
            f"{self.admin_url}/query",
            json={"query": READY_QUERY},
            headers={"accept": "application/json"},
            timeout=2.0,
        )
        return response.status_code == 200

    def register(self, service_url: str) -> str:
        response = httpx.post(
            f"{self.admin_url}/deployments",
            json={"uri": service_url, "force": True},
            timeout=30.0,
        )
        if response.status_code not in (200, 201):
            raise StackError(f"registering {service_url}: {response.status_code} {response.text}")
        deployment_id: str = response.json()["id"]
        return deployment_id

    def stop(self) -> None:
        _terminate(self.process)

    def kill(self) -> None:
        """Kill -9, as a crash would."""
        _kill(self.process)


@dataclass
class SampleService:
    """The sample workflow service, served by hypercorn on a free port."""

    log_dir: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)  # e.g. SAMPLE_SERVICE_FIXED=1

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, timeout_s: float = 60.0) -> SampleService:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        hypercorn = shutil.which("hypercorn", path=str(Path(sys.executable).parent))
        if hypercorn is None:
            raise StackError(
                "hypercorn is not installed in this environment: run ./scripts/bootstrap"
            )
        self.process = _spawn(
            "sample service",
            [
                hypercorn,
                "--bind",
                f"127.0.0.1:{self.port}",
                "tests.support.sample_service:app",
            ],
            log_path=self.log_dir / "sample-service.log",
            probe=self._listening,
            timeout_s=timeout_s,
            env={**os.environ, **self.env} if self.env else None,
        )
        return self

    def _listening(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=1.0):
            return True

    def stop(self) -> None:
        _terminate(self.process)


def _kill(process: subprocess.Popen[bytes] | None) -> None:
    if process is not None and process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def _terminate(process: subprocess.Popen[bytes] | None, grace: float = 3.0) -> None:
    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        # hypercorn can hang on open HTTP/2 streams (a sleeping workflow): do not wait long.
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def prefect_env(home: Path, database_path: Path) -> dict[str, str]:
    """Environment for a Prefect server (or CLI) that keeps everything under ``home``."""
    env = dict(os.environ)
    env.update(
        {
            "PREFECT_HOME": str(home),
            "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{database_path}",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
            "PREFECT_SERVER_UI_ENABLED": "false",
            "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": (
                "prefect.server.concurrency.lease_storage.filesystem"
            ),
            # Prefect's shortest deployment lease: a run that lost its slot shows it fast
            "PREFECT_SERVER_CONCURRENCY_INITIAL_DEPLOYMENT_LEASE_DURATION": "30",
        }
    )
    env.pop("PREFECT_API_URL", None)
    return env


def prefect_template_database(cache_dir: Path) -> Path:
    """A migrated, empty Prefect SQLite database for this Prefect version, made once and cached.

    A copy of it lets a Prefect server start in about 10 s instead of 20 (no migrations)."""
    import prefect

    template = cache_dir / f"prefect-{prefect.__version__}.db"
    if template.exists():
        return template
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = cache_dir / f"prefect-{prefect.__version__}.{os.getpid()}.partial.db"
    prefect_bin = str(Path(sys.executable).parent / "prefect")
    subprocess.run(
        [prefect_bin, "server", "database", "upgrade", "-y"],
        env=prefect_env(cache_dir / "home", partial),
        check=True,
        stdout=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        timeout=300,
    )
    partial.replace(template)
    return template


@dataclass
class PrefectServer:
    """A real ``prefect server start`` on a free loopback port, on a copy of the template DB."""

    home: Path
    template_cache: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    auth_string: str | None = None  # PREFECT_SERVER_API_AUTH_STRING: every client must send it
    # Prefect's database as a URL (postgresql+asyncpg://...), migrated by Prefect at start; the
    # default is a copy of the template SQLite database in ``home``.
    database_url: str | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    @property
    def database_path(self) -> Path:
        return self.home / "prefect.db"

    def start(self, *, timeout_s: float = 120.0) -> PrefectServer:
        self.home.mkdir(parents=True, exist_ok=True)
        if self.database_url is None and not self.database_path.exists():
            shutil.copyfile(prefect_template_database(self.template_cache), self.database_path)
        env = prefect_env(self.home, self.database_path)
        if self.database_url is not None:
            env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = self.database_url
        env.update(
            {
                "PREFECT_SERVER_API_HOST": "127.0.0.1",
                "PREFECT_SERVER_API_PORT": str(self.port),
                "PREFECT_API_URL": self.api_url,
            }
        )
        if self.auth_string is not None:
            env["PREFECT_SERVER_API_AUTH_STRING"] = self.auth_string
        self.process = _spawn(
            "prefect server",
            [str(Path(sys.executable).parent / "prefect"), "server", "start", "--no-ui"],
            env=env,
            log_path=self.home / "prefect-server.log",
            probe=self._healthy,
            timeout_s=timeout_s,
        )
        return self

    def _healthy(self) -> bool:
        return httpx.get(f"{self.api_url}/health", timeout=2.0).status_code == 200

    def stop(self) -> None:
        _terminate(self.process)

    def kill(self) -> None:
        """Kill -9, as a crash would (the database stays: ``start`` again restarts it)."""
        _kill(self.process)


def submit_workflow(
    ingress_url: str, key: str, mode: str, *, workflow: str = WORKFLOW, **extra: object
) -> str:
    """Start a run of the sample workflow (``/send``); returns its invocation id."""
    response = httpx.post(
        f"{ingress_url}/{workflow}/{key}/run/send", json={"mode": mode, **extra}, timeout=10.0
    )
    response.raise_for_status()
    invocation_id: str = response.json()["invocationId"]
    return invocation_id


def wait_for_status(admin_url: str, invocation_id: str, status: str, timeout: float = 30) -> None:
    """Poll ``sys_invocation`` until the invocation shows ``status``."""
    deadline = time.monotonic() + timeout
    query = f"SELECT status FROM sys_invocation WHERE id = {invocation_id_literal(invocation_id)}"
    while time.monotonic() < deadline:
        rows = httpx.post(
            f"{admin_url}/query",
            json={"query": query},
            headers={"accept": "application/json"},
            timeout=5.0,
        ).json()["rows"]
        if rows and rows[0].get("status") == status:
            return
        time.sleep(0.1)
    raise TimeoutError(f"{invocation_id} did not reach {status} within {timeout} s")


@dataclass
class OperatorApi:
    """``restate-recovery api`` as a real subprocess on a free loopback port."""

    env: dict[str, str]
    log_path: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, timeout_s: float = 60.0) -> OperatorApi:
        cli = str(Path(sys.executable).parent / "restate-recovery")
        self.process = _spawn(
            "operator API",
            [cli, "api", "--host", "127.0.0.1", "--port", str(self.port)],
            env=self.env,
            log_path=self.log_path,
            probe=self._up,
            timeout_s=timeout_s,
        )
        return self

    def _up(self) -> bool:
        return httpx.get(f"{self.url}/openapi.json", timeout=2.0).status_code == 200

    def create_key(self, *, actor: str, role: str, permissions: list[str]) -> str:
        cli = str(Path(sys.executable).parent / "restate-recovery")
        args = [cli, "api-keys", "create", "--actor", actor, "--role", role, "--json"]
        for permission in permissions:
            args += ["--permission", permission]
        result = subprocess.run(
            args, env=self.env, capture_output=True, text=True, check=True, timeout=60
        )
        key: str = json.loads(result.stdout)["key"]
        return key

    def stop(self) -> None:
        # it waits for doctor answers still being recorded (api.DRAIN_RECORDS_SECONDS)
        _terminate(self.process, grace=40.0)

    def kill(self) -> None:
        """Kill -9, as a crash would."""
        _kill(self.process)


@dataclass
class FullStack:
    """restate-server, the sample service (registered), a Prefect server and the operator API."""

    restate: RestateServer
    service: SampleService
    prefect: PrefectServer
    api: OperatorApi
    env: dict[str, str]


@contextmanager
def full_stack(work: Path, template_cache: Path) -> Iterator[FullStack]:
    """Everything on free loopback ports under ``work``; the API's environment points at it all.
    Sets ``PREFECT_API_URL`` in this process too (before Prefect is first imported here)."""
    restate = RestateServer(work / "restate").start()
    service = SampleService(work).start()
    prefect = PrefectServer(home=work / "prefect", template_cache=template_cache)
    os.environ["PREFECT_API_URL"] = prefect.api_url
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RESTATE_", "RECOVERY_"))}
    env.update(
        {
            "RESTATE_ADMIN_URL": restate.admin_url,
            "RESTATE_INGRESS_URL": restate.ingress_url,
            "RESTATE_SERVICE_URL": service.url,
            "PREFECT_API_URL": prefect.api_url,
            "RECOVERY_DATABASE_URL": f"sqlite:///{work / 'audit.db'}",
        }
    )
    api = OperatorApi(env=env, log_path=work / "api.log")
    try:
        prefect.start()
        restate.register(service.url)
        api.start()
        yield FullStack(restate, service, prefect, api, env)
    finally:
        api.stop()
        prefect.stop()
        service.stop()
        restate.stop()
