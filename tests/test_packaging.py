"""A production install: the wheel, with the runtime dependencies of uv.lock and none of the dev
group, in a fresh virtual environment. Every module of the product imports there, and the CLI
starts; nothing the tests or the demo need (restate-sdk, hypercorn, pytest) is installed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.local_stack import PROJECT_DIR

UV = PROJECT_DIR / ".tools" / "bin" / "uv"

IMPORT_EVERYTHING = """
import importlib, importlib.util, pkgutil, sys
for top in ("restate_recovery", "flows", "tasks", "deployments"):
    package = importlib.import_module(top)
    for module in pkgutil.walk_packages(package.__path__, top + "."):
        importlib.import_module(module.name)
    assert "site-packages" in package.__file__, package.__file__
absent = [m for m in ("restate", "hypercorn", "pytest", "hypothesis") if importlib.util.find_spec(m)]
assert absent == [], absent
print("imported")
"""


def run(
    args: list[str | Path], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "UV_PYTHON_DOWNLOADS": "never", "UV_NO_PROGRESS": "1", **(env or {})}
    environ.pop("VIRTUAL_ENV", None)
    result = subprocess.run(
        [str(a) for a in args], env=environ, cwd=cwd, capture_output=True, text=True,
        timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, f"{args}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def test_a_production_install_imports_every_module_and_runs_the_cli(tmp_path: Path) -> None:
    dist, venv = tmp_path / "dist", tmp_path / "venv"
    run([UV, "build", "--wheel", "--no-build-isolation", "--out-dir", dist], cwd=PROJECT_DIR)
    (wheel,) = dist.glob("restate_recovery-*.whl")
    # the runtime dependencies exactly as uv.lock pins them (no dev group), from uv's cache
    run(
        [UV, "sync", "--frozen", "--no-dev", "--no-install-project", "--offline",
         "--python", sys.executable],
        cwd=PROJECT_DIR,
        env={"UV_PROJECT_ENVIRONMENT": str(venv)},
    )  # fmt: skip
    python = venv / "bin" / "python"
    run([UV, "pip", "install", "--offline", "--no-deps", "--python", python, wheel], cwd=tmp_path)

    imported = run([python, "-c", IMPORT_EVERYTHING], cwd=tmp_path)
    helped = run([venv / "bin" / "restate-recovery", "--help"], cwd=tmp_path)

    assert imported.stdout.strip() == "imported"
    for command in (
        "doctor",
        "force-redeploy",
        "cleanup-stale-deployments",
        "recover-stuck-workflow",
    ):
        assert command in helped.stdout
