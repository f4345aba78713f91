"""Settings, read from the environment (pydantic-settings) through a cached ``get_settings()``.

No URL here is a flow parameter: parameters are stored in Prefect's database and shown in its UI,
and these may carry credentials.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _data_dir() -> Path:
    """Where local state lives by default: ``RECOVERY_DATA_DIR``, else the checkout's ``.data``
    (a development install), else ``~/.restate-recovery``."""
    if os.environ.get("RECOVERY_DATA_DIR"):
        return Path(os.environ["RECOVERY_DATA_DIR"])
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").exists():
        return checkout / ".data"
    return Path.home() / ".restate-recovery"


DATA_DIR = _data_dir()


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", extra="ignore", frozen=True)

    restate_admin_url: str | None = Field(
        default=None, description="Restate admin API, e.g. http://restate:9070"
    )
    restate_ingress_url: str | None = Field(
        default=None, description="Restate ingress, e.g. http://restate:8080"
    )
    restate_node_urls: str | None = Field(
        default=None,
        description="Restate nodes' node addresses (port 5122 by default), comma-separated: "
        "the doctor reads the cluster's health through the first that answers",
    )
    restatectl_bin: str | None = Field(
        default=None, description="Restate's restatectl (default: on the PATH)"
    )
    restate_service_url: str | None = Field(
        default=None, description="The live durable workflow service URL (optional)"
    )
    recovery_database_url: str = Field(
        default=f"sqlite:///{DATA_DIR / 'recovery.db'}",
        description="Audit database (SQLite file by default, PostgreSQL by URL)",
    )
    recovery_probe_timeout_seconds: float = Field(
        default=3.0, gt=0, le=60, description="Bound on each doctor probe"
    )
    recovery_write_timeout_seconds: float = Field(
        default=30.0, gt=0, le=600, description="Bound on each admin write call"
    )
    recovery_drain_timeout_seconds: float = Field(
        default=30.0,
        ge=0,
        le=3600,
        description="How long cleanup waits for a stale deployment to drain",
    )
    recovery_approval_timeout_seconds: int = Field(
        default=3600, gt=0, le=7 * 86400, description="How long a write waits for approval"
    )
    recovery_rejection_quiet_seconds: int = Field(
        default=3600,
        ge=0,
        le=7 * 86400,
        description="After a rejection, how long findings for that target start no new plan "
        "(unless a new alert comes)",
    )
    recovery_auto_approve_redeploy: bool = Field(
        default=False,
        description="Auto-approve force-redeploy of RESTATE_SERVICE_URL (and only that URL)",
    )
    recovery_api_max_concurrent_runs: int = Field(
        default=8, ge=1, le=256, description="Flow runs the API runs at once; the rest queue"
    )
    recovery_lock_timeout_seconds: float = Field(
        default=120.0,
        gt=0,
        le=3600,
        description="How long a write waits for another on the same target",
    )
    recovery_timer_wait_seconds: float = Field(
        default=60.0,
        ge=0,
        le=3600,
        description="How long a recovery waits for a killed run's timer to pass before purging "
        "it (restatedev/restate#5425); one due later is refused",
    )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
