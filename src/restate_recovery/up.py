"""``restate-recovery up``: the whole control plane in one command, on embedded defaults.

A Prefect server with a home that persists (``<data dir>/control-plane/prefect``; its database
SQLite there, or PostgreSQL by ``PREFECT_SERVER_DATABASE_CONNECTION_URL``), the runbook
deployments served from one process (``deployments/serve.py``: no work pool, no worker), the
automations applied, and the operator API. It prints the Prefect UI URL, the API URL and, when the
audit database has no active API key yet, a first one (shown once). Ctrl-C (or SIGTERM) stops the
API, the served deployments and the Prefect server, in that order; if one of them exits on its
own, the others are stopped and the command fails, naming its log.

Prefect's retention is set for the scheduled doctor's 288 runs a day: its vacuum service removes
events and, with them, finished flow runs (their logs and artifacts as orphans) older than
``RECOVERY_PREFECT_RETENTION_DAYS`` (default 30). The audit table is never vacuumed by this.
"""

from __future__ import annotations

import ctypes
import getpass
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import httpx

from restate_recovery.prefect_env import seed_embedded_database
from restate_recovery.settings import DATA_DIR

BIN = Path(sys.executable).parent
# The embedded Prefect server's port (``up --prefect-port``; ``api`` alone uses this one).
PREFECT_PORT = int(os.environ.get("RECOVERY_EMBEDDED_PREFECT_PORT", "4200"))
API_PORT = 8000
START_TIMEOUT_SECONDS = 180.0  # a new Prefect database is migrated at its first start


class UpError(RuntimeError):
    """A part of the control plane did not start or stopped on its own (a message for people)."""


def home() -> Path:
    return DATA_DIR / "control-plane"


def prefect_server_env(prefect_home: Path, port: int, *, ui: bool) -> dict[str, str]:
    """The embedded Prefect server's environment: its own home, SQLite there unless a database
    URL is set, loopback, and the retention of the doctor's runs."""
    env = dict(os.environ)
    env.pop("PREFECT_API_URL", None)
    seconds = round(float(env.get("RECOVERY_PREFECT_RETENTION_DAYS", "30")) * 86400)
    if seconds <= 3600:  # Prefect's own bound on its vacuum
        raise UpError("RECOVERY_PREFECT_RETENTION_DAYS must be more than one hour (1/24)")
    env.update(
        {
            "PREFECT_HOME": str(prefect_home),
            "PREFECT_SERVER_API_HOST": "127.0.0.1",
            "PREFECT_SERVER_API_PORT": str(port),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
            "PREFECT_SERVER_UI_ENABLED": "true" if ui else "false",
            "PREFECT_UI_API_URL": f"http://127.0.0.1:{port}/api",
            "PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED": '["events", "flow_runs", "orphans"]',
            "PREFECT_SERVER_SERVICES_DB_VACUUM_RETENTION_PERIOD": f"PT{seconds}S",
            "PREFECT_SERVER_EVENTS_RETENTION_PERIOD": f"PT{seconds}S",
        }
    )
    env.setdefault(
        "PREFECT_SERVER_DATABASE_CONNECTION_URL",
        f"sqlite+aiosqlite:///{prefect_home / 'prefect.db'}",
    )
    return env


PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before it runs: SIGTERM once the process that started it is gone (even
    SIGKILLed: nothing of the control plane outlives its supervisor). Linux only."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: Ctrl-C and SIGTERM still stop the children
        pass


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> Child:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                self.argv,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C reaches us only: we stop it in order
                preexec_fn=_die_with_parent,
            )
        return self

    def exited(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def stop(self, grace: float) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        except ProcessLookupError:
            pass


def wait_until(child: Child, what: str, ready: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.exited() is not None:
            raise UpError(f"{child.name} exited with {child.exited()} ({what}): see {child.log}")
        try:
            if ready():
                return
        except (httpx.HTTPError, OSError, ValueError):
            pass
        time.sleep(0.25)
    raise UpError(f"{child.name}: {what} not within {timeout:.0f} s: see {child.log}")


def answers(url: str) -> bool:
    return httpx.get(url, timeout=2.0).status_code == 200


def prefect_answering(api_url: str) -> bool:
    try:
        return answers(f"{api_url}/health")
    except httpx.HTTPError:
        return False


def start_prefect(base: Path, port: int, *, ui: bool) -> tuple[str, Child | None]:
    """The embedded Prefect server's API URL, and its process (none when one already answers
    on that port: a second ``up``, or ``api``, share it)."""
    api_url = f"http://127.0.0.1:{port}/api"
    if prefect_answering(api_url):
        return api_url, None
    env = prefect_server_env(base / "prefect", port, ui=ui)
    # a new SQLite home starts from the pre-migrated copy when there is one (a checkout)
    seed_embedded_database(base / "prefect", env["PREFECT_SERVER_DATABASE_CONNECTION_URL"])
    child = Child(
        "prefect server",
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env,
        base / "logs" / "prefect-server.log",
    ).start()
    wait_until(child, "its /api/health", lambda: answers(f"{api_url}/health"),
               START_TIMEOUT_SECONDS)  # fmt: skip
    return api_url, child


def first_key() -> str | None:
    """A first API key (system:operate, the OS user's), when the audit database has no active
    one; None otherwise."""
    from sqlmodel import Session

    from restate_recovery import store

    with Session(store.engine()) as session:
        if any(k.revoked_at is None for k in store.list_api_keys(session=session)):
            return None
        _, plaintext = store.create_api_key(
            session=session,
            actor=getpass.getuser(),
            role="platform-operator",
            permissions=["system:operate"],
        )
        return plaintext


@dataclass
class ControlPlane:
    base: Path
    prefect_port: int = PREFECT_PORT
    api_port: int = API_PORT
    ui: bool = True
    children: list[Child] = field(default_factory=list)
    say: Callable[[str], None] = print

    def start(self) -> None:
        api_url, prefect = start_prefect(self.base, self.prefect_port, ui=self.ui)
        if prefect is not None:
            self.children.append(prefect)
        else:
            self.say(f"Prefect: using the server already at {api_url}")
        os.environ["PREFECT_API_URL"] = api_url
        env = {**os.environ, "PREFECT_API_URL": api_url}
        served = Child(
            "served deployments",
            [sys.executable, "-m", "deployments.serve"],
            env,
            self.base / "logs" / "serve.log",
        ).start()
        self.children.append(served)
        wait_until(served, "the runbook deployments", lambda: deployments_exist(api_url), 120)
        import asyncio

        from deployments import automations

        applied = asyncio.run(automations.apply())
        self.say(f"automations applied: {', '.join(applied)}")
        api = api_child(self.base, api_url, "127.0.0.1", self.api_port)
        self.children.append(api)
        url = f"http://127.0.0.1:{self.api_port}"
        wait_until(api, "its /openapi.json", lambda: answers(f"{url}/openapi.json"), 120)
        self.say(f"Prefect UI:   {api_url.removesuffix('/api')}")
        self.say(f"operator API: {url}")
        key = first_key()
        if key is not None:
            self.say(f"first API key (shown only now; store it): X-Api-Key: {key}")
        self.say(f"logs: {self.base / 'logs'}; Ctrl-C stops everything")

    def watch(self, stopping: Callable[[], bool]) -> None:
        while not stopping():
            for child in self.children:
                if child.exited() is not None:
                    raise UpError(f"{child.name} exited with {child.exited()}: see {child.log}")
            time.sleep(0.5)

    def stop(self) -> None:
        for child in reversed(self.children):  # the API first (it drains its records)
            child.stop(grace=45.0 if child.name == "operator API" else 15.0)


def deployments_exist(api_url: str) -> bool:
    from restate_recovery.runbooks import RUNBOOKS

    response = httpx.post(f"{api_url}/deployments/filter", json={}, timeout=5.0)
    names = {d["name"] for d in response.json()}
    return {r.deployment for r in RUNBOOKS} <= names


def api_child(base: Path, api_url: str, host: str, port: int) -> Child:
    return Child(
        "operator API",
        [str(BIN / "restate-recovery"), "api", "--host", host, "--port", str(port)],
        {**os.environ, "PREFECT_API_URL": api_url},
        base / "logs" / "api.log",
    ).start()


def run_api(base: Path, *, host: str, port: int) -> int:
    """``restate-recovery api`` with no Prefect server named: the embedded one (started unless
    it runs already) and the API beside it, until Ctrl-C."""
    plane = ControlPlane(base, api_port=port)

    def start() -> None:
        api_url, prefect = start_prefect(base, plane.prefect_port, ui=True)
        if prefect is not None:
            plane.children.append(prefect)
        print(f"the operator API uses the embedded Prefect server at {api_url}",  # noqa: T201
              file=sys.stderr)  # fmt: skip
        api = api_child(base, api_url, host, port)
        plane.children.append(api)
        wait_until(api, "its /openapi.json",
                   lambda: answers(f"http://{host}:{port}/openapi.json"), 120)  # fmt: skip

    return supervise(plane, start)


def run(base: Path, *, prefect_port: int, api_port: int, ui: bool) -> int:
    plane = ControlPlane(base, prefect_port, api_port, ui)
    return supervise(plane, plane.start)


def supervise(plane: ControlPlane, start: Callable[[], None]) -> int:
    """Start, then watch until Ctrl-C or SIGTERM (or a part exits on its own); stop it all."""
    stop = {"now": False, "up": False}

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop["now"] = True
        if not stop["up"]:  # still starting: stop starting
            raise UpError("stopped before everything was up")

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        start()
        stop["up"] = True
        plane.watch(lambda: stop["now"])
        print("stopping...")  # noqa: T201 - a command's output
        return 0
    except UpError as exc:
        print(f"restate-recovery: {exc}", file=sys.stderr)  # noqa: T201
        return 1
    finally:
        plane.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
