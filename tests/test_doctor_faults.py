"""Doctor verdicts for faults a real server cannot easily produce (httpx.MockTransport)."""

from __future__ import annotations

import httpx
import pytest

from restate_recovery.doctor.probes import Endpoints, run_doctor
from restate_recovery.models import DoctorReadout

ENDPOINTS = Endpoints(
    admin_urls=("http://admin.test:9070",),
    ingress_url="http://ingress.test:8080",
    probe_timeout=1.0,
)

HEALTHY: dict[str, httpx.Response] = {
    "GET /health": httpx.Response(200),
    "GET /version": httpx.Response(200, json={"version": "1.7.12"}),
    "GET /deployments": httpx.Response(
        200,
        json={
            "deployments": [
                {"id": "dp_1", "uri": "http://svc:9080/", "created_at": "2026-01-01T00:00:00Z"}
            ]
        },
    ),
    "GET /services": httpx.Response(200, json={"services": [{"name": "W", "revision": 1}]}),
    "POST /query": httpx.Response(200, json={"rows": []}),
    "GET /restate/health": httpx.Response(200, json={"services": []}),
}


def transport(overrides: dict[str, httpx.Response]) -> httpx.MockTransport:
    routes = {**HEALTHY, **overrides}

    def handler(request: httpx.Request) -> httpx.Response:
        return routes[f"{request.method} {request.url.path}"]

    return httpx.MockTransport(handler)


async def readout_with(overrides: dict[str, httpx.Response]) -> DoctorReadout:
    mock = transport(overrides)
    return await run_doctor(ENDPOINTS, admin_transport=mock, ingress_transport=mock)


def statuses(readout: DoctorReadout) -> dict[str, str]:
    return {name: part.status for name, part in readout.components()}


async def test_mocked_healthy_engine_is_all_ok() -> None:
    readout = await readout_with({})
    assert set(statuses(readout).values()) == {"ok"}
    assert readout.admin.version == "1.7.12"


@pytest.mark.parametrize(
    ("route", "component"),
    [
        ("GET /deployments", "deployments"),
        ("GET /services", "services"),
        ("POST /query", "invocations"),
        ("GET /version", "admin"),
        ("GET /restate/health", "ingress"),
    ],
)
@pytest.mark.parametrize(
    "fault",
    [
        httpx.Response(500, json={"message": "internal", "restate_code": None}),
        httpx.Response(503),
        httpx.Response(200, content=b"{not json"),
        httpx.Response(200, json={"unexpected": True}),
        httpx.Response(200, content=b"\xff\xff\xff\xff\x00\x00\x00\x00ARROW1"),
        httpx.Response(200),
    ],
    ids=["500-json", "503-empty", "malformed-json", "wrong-shape", "arrow-body", "empty-200"],
)
async def test_a_bad_answer_degrades_only_its_component(
    route: str, component: str, fault: httpx.Response
) -> None:
    readout = await readout_with({route: fault})
    assert statuses(readout) == {
        name: ("degraded" if name == component else "ok") for name in statuses(readout)
    }
    if component in ("deployments", "services", "invocations"):
        assert getattr(readout, component).error


async def test_query_rows_of_the_wrong_shape_degrade_invocations() -> None:
    readout = await readout_with({"POST /query": httpx.Response(200, json={"rows": [{"x": 1}]})})
    assert readout.invocations.status == "degraded"
    assert "unexpected" in (readout.invocations.error or "")
    assert readout.deployments.status == "ok"


async def test_transport_errors_mark_unreachable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/services":
            raise httpx.ReadTimeout("timed out", request=request)
        if request.url.path == "/deployments":
            raise httpx.RemoteProtocolError("peer closed connection mid-body", request=request)
        return HEALTHY[f"{request.method} {request.url.path}"]

    mock = httpx.MockTransport(handler)
    readout = await run_doctor(ENDPOINTS, admin_transport=mock, ingress_transport=mock)
    assert readout.services.status == "unreachable"
    assert "ReadTimeout" in (readout.services.error or "")
    assert readout.deployments.status == "unreachable"
    assert readout.admin.status == "ok"
    assert readout.invocations.status == "ok"
