"""``restate-recovery up`` for real: a Prefect server of its own home, the served deployments, the
automations and the operator API, with a first API key; a doctor through the API; a scheduled
doctor deployment; Ctrl-C stops every process it started. And ``restate-recovery api`` with no
Prefect server named runs beside the same embedded one instead of refusing."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import RestateStack
from tests.support.local_stack import free_port

pytestmark = [pytest.mark.restate, pytest.mark.prefect]

CLI = str(Path(sys.executable).parent / "restate-recovery")
PREFIX = "/api/v2/admin/operator/restate"


class Command:
    """A CLI command in a session of its own; its output is collected as it comes."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [CLI, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, text=True, start_new_session=True,
        )  # fmt: skip
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if match := re.search(pattern, line):
                    return match
            assert self.process.poll() is None, "\n".join(self.lines)
            time.sleep(0.2)
        raise AssertionError(
            f"{pattern!r} not printed within {timeout} s:\n" + "\n".join(self.lines)
        )

    def descendants(self) -> list[int]:
        return descendants_of(self.process.pid)

    def interrupt(self, timeout: float = 90) -> int:
        os.kill(self.process.pid, signal.SIGINT)
        return self.process.wait(timeout=timeout)


@pytest.fixture
def up_env(tmp_path: Path, restate: RestateStack) -> Iterator[dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RESTATE_", "RECOVERY_"))}
    env.pop("PREFECT_API_URL", None)
    env.update(
        RECOVERY_DATA_DIR=str(tmp_path / "data"),
        RECOVERY_DATABASE_URL=f"sqlite:///{tmp_path / 'audit.db'}",
        RESTATE_ADMIN_URL=restate.admin_url,
        RESTATE_INGRESS_URL=restate.ingress_url,
        RESTATE_SERVICE_URL=restate.service_url,
    )
    yield env


def parents() -> dict[int, int]:
    """pid -> parent pid of every process, from /proc."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        found[int(stat.parent.name)] = int(fields[1])
    return found


def descendants_of(pid: int) -> list[int]:
    tree, found, todo = parents(), [], [pid]
    while todo:
        parent = todo.pop()
        kids = [p for p, pp in tree.items() if pp == parent]
        found += kids
        todo += kids
    return found


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def gone(pids: list[int]) -> bool:
    return not [p for p in pids if running(p)]


def test_up_starts_the_control_plane_answers_and_stops_it_all_on_ctrl_c(
    up_env: dict[str, str], tmp_path: Path
) -> None:
    prefect_port, api_port = free_port(), free_port()
    up = Command(["up", "--prefect-port", str(prefect_port), "--api-port", str(api_port),
                  "--no-ui"], up_env)  # fmt: skip
    try:
        key = up.wait_for(r"X-Api-Key: (rrk_\S+)", timeout=240).group(1)
        up.wait_for(r"Ctrl-C stops everything", timeout=10)
        printed = "\n".join(up.lines)
        assert f"operator API: http://127.0.0.1:{api_port}" in printed
        assert f"Prefect UI:   http://127.0.0.1:{prefect_port}" in printed
        assert "automations applied:" in printed
        children = up.descendants()
        assert len(children) >= 3, children  # Prefect server, served deployments, API

        answer = httpx.post(f"http://127.0.0.1:{api_port}{PREFIX}/doctor", json={},
                            headers={"X-Api-Key": key}, timeout=60)  # fmt: skip
        assert answer.status_code == 200, answer.text
        assert answer.json()["admin"]["status"] == "ok"
        prefect = f"http://127.0.0.1:{prefect_port}/api"
        deployments = httpx.post(f"{prefect}/deployments/filter", json={}, timeout=10).json()
        doctor = next(d for d in deployments if d["name"] == "doctor")
        assert doctor["schedules"], doctor  # the scheduled doctor
        automations = httpx.post(f"{prefect}/automations/filter", json={}, timeout=10).json()
        assert automations, "no automation applied"
        # the Prefect home persists in the data directory, SQLite there
        assert (tmp_path / "data" / "control-plane" / "prefect" / "prefect.db").exists()
    finally:
        code = up.interrupt()
    assert code == 0, "\n".join(up.lines)
    assert "stopping..." in up.lines
    deadline = time.monotonic() + 30
    while not gone(children):
        assert time.monotonic() < deadline, f"left running: {children}"
        time.sleep(0.2)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{api_port}/openapi.json", timeout=2)

    # a second up on the same home: no new key (one is active), the same database
    again = Command(["up", "--prefect-port", str(prefect_port), "--api-port", str(api_port),
                     "--no-ui"], up_env)  # fmt: skip
    try:
        again.wait_for(r"Ctrl-C stops everything", timeout=240)
        assert not any("X-Api-Key" in line for line in again.lines)
    finally:
        assert again.interrupt() == 0


def test_the_api_alone_without_a_prefect_server_uses_the_embedded_one(
    up_env: dict[str, str],
) -> None:
    api_port, prefect_port = free_port(), free_port()  # the embedded port: 4200 unless set
    api = Command(["api", "--port", str(api_port)],
                  {**up_env, "RECOVERY_EMBEDDED_PREFECT_PORT": str(prefect_port)})  # fmt: skip
    try:
        api.wait_for(rf"uses the embedded Prefect server at http://127.0.0.1:{prefect_port}/api",
                     240)  # fmt: skip
        deadline = time.monotonic() + 120
        while not httpx_answers(f"http://127.0.0.1:{api_port}/openapi.json"):
            assert time.monotonic() < deadline, "\n".join(api.lines)
            assert api.process.poll() is None, "\n".join(api.lines)
            time.sleep(0.3)
        assert httpx_answers(f"http://127.0.0.1:{prefect_port}/api/health")
        children = api.descendants()
    finally:
        code = api.interrupt()
    assert code == 0, "\n".join(api.lines)
    deadline = time.monotonic() + 30
    while not gone(children):
        assert time.monotonic() < deadline, f"left running: {children}"
        time.sleep(0.2)


def httpx_answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def test_retention_vacuums_runs_older_than_it_with_their_artifacts_and_audit_rows_stay(
    up_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """up's Prefect server with the shortest retention Prefect takes (just over an hour) and its
    vacuum every second: a doctor run that ended two hours ago goes, with its artifact; the two
    doctor runs the CLI recorded just now stay, and so do their audit rows."""
    from datetime import UTC, datetime, timedelta

    from sqlmodel import Session

    from restate_recovery import store, up

    monkeypatch.setenv("RECOVERY_PREFECT_RETENTION_DAYS", str(3601 / 86400))
    monkeypatch.setenv("PREFECT_SERVER_SERVICES_DB_VACUUM_LOOP_SECONDS", "1")
    api_url, server = up.start_prefect(tmp_path / "cp", free_port(), ui=False)
    assert server is not None
    try:
        env = {**up_env, "PREFECT_API_URL": api_url}
        for _ in range(2):
            done = subprocess.run([CLI, "doctor", "--json"], env=env, capture_output=True,
                                  text=True, timeout=120)  # fmt: skip
            assert done.returncode == 0, done.stderr
        recent = httpx.post(f"{api_url}/flow_runs/filter", json={}, timeout=10).json()
        assert len(recent) == 2 and all(r["state_type"] == "COMPLETED" for r in recent)

        def post(path: str, body: dict[str, object]) -> dict[str, object]:
            response = httpx.post(f"{api_url}{path}", json=body, timeout=10)
            assert response.status_code < 300, (path, response.text)
            answer: dict[str, object] = response.json()
            return answer

        old = post("/flow_runs/", {"flow_id": recent[0]["flow_id"], "name": "restate-doctor"})
        for state in ("RUNNING", "COMPLETED"):
            post(f"/flow_runs/{old['id']}/set_state", {"state": {"type": state}, "force": True})
        post("/artifacts/", {"key": "restate-doctor", "type": "markdown", "data": "# old",
                             "flow_run_id": old["id"]})  # fmt: skip
        # two hours cannot be waited for here: the run's end is moved back in Prefect's own
        # database (Prefect's API takes no state time from a client)
        database = sqlite3.connect(tmp_path / "cp" / "prefect" / "prefect.db")
        with database:
            (end,) = database.execute(
                "SELECT end_time FROM flow_run WHERE id = ?", (str(old["id"]),)
            ).fetchone()
            moved = datetime.fromisoformat(end) - timedelta(hours=2)
            database.execute("UPDATE flow_run SET end_time = ? WHERE id = ?",
                             (moved.isoformat(sep=" "), str(old["id"])))  # fmt: skip
        database.close()
        ended = httpx.get(f"{api_url}/flow_runs/{old['id']}", timeout=10).json()["end_time"]
        assert datetime.fromisoformat(ended) < datetime.now(UTC) - timedelta(hours=1)

        deadline = time.monotonic() + 90
        while httpx.get(f"{api_url}/flow_runs/{old['id']}", timeout=10).status_code != 404:
            assert time.monotonic() < deadline, "the old run was not vacuumed"
            time.sleep(1)
        artifacts = httpx.post(f"{api_url}/artifacts/filter", json={}, timeout=10).json()
        assert old["id"] not in {a["flow_run_id"] for a in artifacts}  # went with its run
        assert {a["flow_run_id"] for a in artifacts} == {r["id"] for r in recent}
        left = httpx.post(f"{api_url}/flow_runs/filter", json={}, timeout=10).json()
        assert {r["id"] for r in left} == {r["id"] for r in recent}
    finally:
        server.stop(grace=15)
    with Session(store.engine_for(up_env["RECOVERY_DATABASE_URL"])) as session:
        rows = store.list_attempts(session=session)
    assert [(r.route, r.outcome) for r in rows] == [("doctor", "success")] * 2


def test_a_supervisor_killed_with_sigkill_leaves_none_of_its_processes_behind(
    up_env: dict[str, str],
) -> None:
    api_port, prefect_port = free_port(), free_port()
    api = Command(["api", "--port", str(api_port)],
                  {**up_env, "RECOVERY_EMBEDDED_PREFECT_PORT": str(prefect_port)})  # fmt: skip
    try:
        api.wait_for(r"uses the embedded Prefect server", 240)
        deadline = time.monotonic() + 120
        while not httpx_answers(f"http://127.0.0.1:{api_port}/openapi.json"):
            assert time.monotonic() < deadline, "\n".join(api.lines)
            time.sleep(0.3)
        children = api.descendants()
        assert len(children) >= 2, children  # the Prefect server and the API
    finally:
        os.kill(api.process.pid, signal.SIGKILL)
        api.process.wait(timeout=10)
    deadline = time.monotonic() + 30
    while not gone(children):
        assert time.monotonic() < deadline, f"left running after SIGKILL: {children}"
        time.sleep(0.2)
