"""The operator API application: ``create_app()``, served by ``restate-recovery api``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST

from restate_recovery import janitor, leases, metrics, store
from restate_recovery.api import errors
from restate_recovery.api.deps import Runner
from restate_recovery.api.middleware import RequestContext
from restate_recovery.api.routes import router
from restate_recovery.settings import get_settings

logger = logging.getLogger(__name__)

# Doctor answers waiting to be recorded as flow runs; past that a new doctor call waits before
# probing. On shutdown the API waits this long for them.
MAX_PENDING_RECORDS = 16
DRAIN_RECORDS_SECONDS = 30.0


async def sweep_forever() -> None:
    """What dead processes left behind, every ``leases.REAP_SECONDS`` (``janitor``)."""
    while True:
        try:
            await janitor.sweep()
        except Exception as exc:  # the audit database is away: the next sweep will do
            logger.warning("sweep failed: %s", type(exc).__name__)
        await asyncio.sleep(leases.REAP_SECONDS)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    await asyncio.to_thread(store.engine)  # migrate the audit database before serving
    runner = Runner(
        max_runs=get_settings().recovery_api_max_concurrent_runs,
        max_pending_records=MAX_PENDING_RECORDS,
    )
    app.state.runner = runner
    sweeping = asyncio.create_task(sweep_forever())  # its first sweep: at start-up
    yield
    sweeping.cancel()
    await runner.close(drain_seconds=DRAIN_RECORDS_SECONDS)


async def prometheus_metrics(request: Request) -> Response:
    """This process's metrics in Prometheus' format (``restate_recovery.metrics``), with a
    readout at most ``READOUT_MAX_AGE_SECONDS`` old; no key is needed (nothing in them is
    secret: route, component, status and finding names and numbers)."""
    runner: Runner = request.app.state.runner
    await runner.doctor.refresh(metrics.READOUT_MAX_AGE_SECONDS)
    return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


def create_app() -> FastAPI:
    app = FastAPI(
        title="restate-recovery operator API",
        version="1",
        description="Operator-only routes that bring the Restate engine back to health.",
        lifespan=lifespan,
    )
    app.include_router(router)
    app.add_api_route(
        "/metrics",
        prometheus_metrics,
        methods=["GET"],
        include_in_schema=False,
        response_class=PlainTextResponse,
    )
    errors.install(app)
    app.add_middleware(RequestContext)
    return app
