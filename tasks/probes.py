"""The doctor's probes as Prefect tasks (one task run per component in the run history).

Reads only. No retries here: a probe's failure is the finding, not something to hide (the
client asks a GET once more only when a kept connection was closed under it).
``NO_CACHE``: the inputs are live clients, and a doctor must never answer from a cache.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
from prefect import task
from prefect.cache_policies import NO_CACHE

from restate_recovery.client import RestateAdminClient
from restate_recovery.doctor import probes
from restate_recovery.models import (
    AdminReadout,
    ClusterReadout,
    DeploymentsReadout,
    IngressReadout,
    InvocationsReadout,
    ServicesReadout,
)


@task(name="probe-ingress", cache_policy=NO_CACHE)
async def probe_ingress(http: httpx.AsyncClient | None, timeout: float) -> IngressReadout:
    return await probes.probe_ingress(http, timeout)


@task(name="probe-admin", cache_policy=NO_CACHE)
async def probe_admin(client: RestateAdminClient, timeout: float) -> AdminReadout:
    return await probes.probe_admin(client, timeout)


@task(name="probe-deployments", cache_policy=NO_CACHE)
async def probe_deployments(client: RestateAdminClient, timeout: float) -> DeploymentsReadout:
    return await probes.probe_deployments(client, timeout)


@task(name="probe-services", cache_policy=NO_CACHE)
async def probe_services(client: RestateAdminClient, timeout: float) -> ServicesReadout:
    return await probes.probe_services(client, timeout)


@task(name="probe-invocations", cache_policy=NO_CACHE)
async def probe_invocations(
    client: RestateAdminClient, timeout: float, on_sent: Callable[[], None] | None = None
) -> InvocationsReadout:
    return await probes.probe_invocations(client, timeout, on_sent)


@task(name="probe-cluster", cache_policy=NO_CACHE)
async def probe_cluster(endpoints: probes.Endpoints) -> ClusterReadout | None:
    return await probes.probe_cluster(endpoints)
