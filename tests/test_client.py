"""The admin client's contract with Restate, checked on the wire with httpx.MockTransport."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from restate_recovery import client as client_module
from restate_recovery.client import RestateAdminClient
from restate_recovery.errors import RestateBadResponse, RestateRejected, RestateUnreachable

Handler = Callable[[httpx.Request], httpx.Response]


def client_for(handler: Handler) -> RestateAdminClient:
    return RestateAdminClient.connect(
        "http://admin.test:9070", timeout=1.0, transport=httpx.MockTransport(handler)
    )


async def test_query_sends_accept_application_json_exactly_on_a_fresh_connection() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"rows": [{"status": "running"}]})

    async with client_for(handler) as client:
        rows = await client.query("SELECT status FROM sys_invocation")
    assert rows == [{"status": "running"}]
    assert seen[0].headers["accept"] == "application/json"
    assert seen[0].headers["connection"] == "close"  # no keep-alive stall (docs/performance.md)
    assert seen[0].headers["content-type"] == "application/json"
    assert json.loads(seen[0].content) == {"query": "SELECT status FROM sys_invocation"}


@pytest.mark.parametrize("force", [True, False])
async def test_register_always_sends_force(force: bool) -> None:
    bodies: list[dict[str, object]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(201, json={"id": "dp_1abc", "services": []})

    async with client_for(handler) as client:
        registered = await client.register_deployment(uri="http://svc:9080", force=force)
    assert registered.id == "dp_1abc"
    assert bodies == [{"uri": "http://svc:9080", "force": force}]


async def test_delete_uses_force_true() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(202)

    async with client_for(handler) as client:
        await client.delete_deployment("dp_1abc")
    assert seen[0].method == "DELETE"
    assert seen[0].url.path == "/deployments/dp_1abc"
    assert seen[0].url.params["force"] == "true"


async def test_paths_refuse_ids_that_are_not_ids() -> None:
    async with client_for(lambda r: httpx.Response(200)) as client:
        with pytest.raises(ValueError):
            await client.delete_deployment("../services")
        with pytest.raises(ValueError):
            await client.kill_invocation("inv_1/../../x")


async def test_json_errors_keep_message_and_restate_code() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            500, json={"message": "[META0003] unreachable", "restate_code": "META0003"}
        )

    async with client_for(handler) as client:
        with pytest.raises(RestateRejected) as info:
            await client.register_deployment(uri="http://dead:9080", force=True)
    assert info.value.status_code == 500
    assert info.value.restate_code == "META0003"
    assert info.value.message == "[META0003] unreachable"
    assert "dead" not in info.value.path


@pytest.mark.parametrize(
    ("response", "message"),
    [
        (httpx.Response(501), "Not Implemented"),
        (httpx.Response(400, text="invalid query"), "invalid query"),
        (httpx.Response(404, json={"message": "not found", "restate_code": None}), "not found"),
    ],
)
async def test_non_json_and_empty_errors(response: httpx.Response, message: str) -> None:
    async with client_for(lambda r: response) as client:
        with pytest.raises(RestateRejected) as info:
            await client.list_services()
    assert info.value.message == message
    assert info.value.restate_code is None


async def test_transport_failures_are_unreachable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    async with client_for(handler) as client:
        with pytest.raises(RestateUnreachable) as info:
            await client.health()
    assert "ConnectError" in str(info.value)


async def test_wrong_shapes_are_bad_responses() -> None:
    async with client_for(lambda r: httpx.Response(200, json={"nope": []})) as client:
        with pytest.raises(RestateBadResponse):
            await client.list_deployments()
    async with client_for(lambda r: httpx.Response(200, content=b"\xff\x00arrow")) as client:
        with pytest.raises(RestateBadResponse):
            await client.query("SELECT 1")


async def test_deployments_drop_clear_text_headers() -> None:
    payload = {
        "deployments": [
            {
                "id": "dp_1",
                "uri": "http://svc:9080/",
                "created_at": "2026-01-01T00:00:00.000000000Z",
                "additional_headers": {"authorization": "Bearer secret"},
                "services": [{"name": "W", "revision": 2}],
            }
        ]
    }
    async with client_for(lambda r: httpx.Response(200, json=payload)) as client:
        (deployment,) = await client.list_deployments()
    assert "secret" not in deployment.model_dump_json()
    assert deployment.service_url == "http://svc:9080/"


async def test_state_write_targets_the_service_and_key() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(202)

    async with client_for(handler) as client:
        await client.set_state(service_name="W", service_key="k1", new_state={})
    assert seen[0].url.path == "/services/W/state"
    assert json.loads(seen[0].content) == {"object_key": "k1", "new_state": {}}


async def test_a_get_on_a_connection_closed_under_it_is_asked_once_more_a_write_never() -> None:
    calls: list[str] = []

    def dropped_once(request: httpx.Request) -> httpx.Response:
        calls.append(request.method)
        if len(calls) == 1 or request.method != "GET":
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
        return httpx.Response(200, json={"deployments": []})

    client = client_for(dropped_once)
    assert await client.list_deployments() == []
    assert calls == ["GET", "GET"]

    calls.clear()
    with pytest.raises(RestateUnreachable):
        await client.kill_invocation("inv_1dsdNV5sSgLN1ccNEbbLdYZ6ZGdZgZKBMF")
    assert calls == ["PATCH"]

    calls.clear()

    def always_dropped(request: httpx.Request) -> httpx.Response:
        calls.append(request.method)
        raise httpx.RemoteProtocolError("Server disconnected without sending a response.")

    with pytest.raises(RestateUnreachable):
        await client_for(always_dropped).list_deployments()
    assert calls == ["GET", "GET"]  # once more, not forever


MOVING = (
    "partition 2 doesn't exist on this node, this is benign if the partition is being "
    "transferred out of/into this node."
)


@pytest.mark.parametrize(
    "message",
    [
        MOVING,
        "Datafusion error: External error: connect throttled; 1.1s left in throttling window",
        "Datafusion error: External error: expecting a partition store",
    ],  # fmt: skip
    ids=["transferred", "throttled", "no-partition-store"],
)
async def test_a_query_meeting_a_moving_partition_is_asked_again_until_answered(
    message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_module, "MOVING_PARTITION_RETRIES", (0.01, 0.01, 0.01))
    answers = [httpx.Response(500, json={"message": message})] * 2 + [
        httpx.Response(200, json={"rows": [{"n": 1}]})
    ]
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return answers[len(seen) - 1]

    async with client_for(handler) as client:
        assert await client.query("SELECT 1 AS n") == [{"n": 1}]
    assert seen == ["/query"] * 3


async def test_other_query_errors_and_a_partition_that_stays_away_are_not_hidden(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(client_module, "MOVING_PARTITION_RETRIES", (0.01, 0.01))
    seen: list[str] = []

    def other(request: httpx.Request) -> httpx.Response:
        seen.append("other")
        return httpx.Response(500, json={"message": "table 'nodes' not found"})

    async with client_for(other) as client:
        with pytest.raises(RestateRejected, match="not found"):
            await client.query("SELECT * FROM nodes")
    assert seen == ["other"]  # asked once

    def away(request: httpx.Request) -> httpx.Response:
        seen.append("away")
        return httpx.Response(500, json={"message": MOVING})

    async with client_for(away) as client:
        with pytest.raises(RestateRejected, match="benign"):
            await client.query("SELECT 1")
    assert seen.count("away") == 3  # once, then once after each of the two pauses
