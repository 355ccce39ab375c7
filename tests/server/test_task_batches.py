"""Batched task routes against a real server: ``POST /tasks:batch`` and ``POST /tasks/exchange``."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from tests.support.api import assert_envelope, bearer, unique
from tests.support.server import RunningServer


def _create(queue: str, name: str = "box", **extra: Any) -> dict[str, Any]:
    return {"type": "vm:create", "payload": {"name": name}, "queue": queue, **extra}


async def _exchange(
    http: httpx.AsyncClient, server: RunningServer, node: str, queue: str, **body: Any
) -> httpx.Response:
    payload = {"node": node, "drivers": ["bwrap"], "queues": [queue], **body}
    return await http.post(
        "/api/v1/tasks/exchange", json=payload, headers=bearer(server.node_token(node))
    )


def _created(task: dict[str, Any], node: str) -> dict[str, Any]:
    vm_id = task["payload"]["vm_id"]
    return {"vm_id": vm_id, "name": "box", "status": "running", "driver": "bwrap", "isolated": True}


async def test_a_batch_is_queued_whole_in_order(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    queue = unique("q")
    key = unique("key")
    body = {"tasks": [_create(queue, "a"), _create(queue, "b", idempotency_key=key)]}
    answer = await http.post("/api/v1/tasks:batch", json=body, headers=bearer(server.admin_token))
    assert answer.status_code == 201, answer.text
    tasks = answer.json()["tasks"]
    assert [t["payload"]["name"] for t in tasks] == ["a", "b"]
    assert all(t["state"] == "pending" and t["queue"] == queue for t in tasks)
    # the key names the task first submitted with it, in a later batch and within one
    again = {"tasks": [_create(queue, "c", idempotency_key=key), _create(queue, "d")]}
    answer = await http.post("/api/v1/tasks:batch", json=again, headers=bearer(server.admin_token))
    first, fresh = answer.json()["tasks"]
    assert first["id"] == tasks[1]["id"] and fresh["payload"]["name"] == "d"
    listed = await http.get(
        "/api/v1/tasks", params={"queue": queue}, headers=bearer(server.admin_token)
    )
    assert len(listed.json()) == 3


async def test_one_bad_task_queues_none_and_is_named(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    queue = unique("q")
    body = {
        "tasks": [
            _create(queue),
            {"type": "vm:execute", "payload": {"vm_id": "vm-x"}, "queue": queue},
        ]
    }
    bad = await http.post("/api/v1/tasks:batch", json=body, headers=bearer(server.admin_token))
    assert "tasks[1]" in assert_envelope(bad, 400, "bad_request")["message"]
    listed = await http.get(
        "/api/v1/tasks", params={"queue": queue}, headers=bearer(server.admin_token)
    )
    assert listed.json() == []
    empty = await http.post(
        "/api/v1/tasks:batch", json={"tasks": []}, headers=bearer(server.admin_token)
    )
    assert_envelope(empty, 400, "bad_request")
    viewer = await http.post(
        "/api/v1/tasks:batch",
        json={"tasks": [_create(queue)]},
        headers=bearer(server.token("viewer")),
    )
    assert_envelope(viewer, 403, "forbidden")


async def test_exchange_claims_reports_and_claims_again_in_one_request(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    queue, node = unique("q"), unique("node")
    body = {"tasks": [_create(queue, "box", priority=p) for p in (1, 9, 5)]}
    submitted = await http.post(
        "/api/v1/tasks:batch", json=body, headers=bearer(server.admin_token)
    )
    ids = [t["id"] for t in submitted.json()["tasks"]]
    first = await _exchange(http, server, node, queue, want=2)
    assert first.status_code == 200, first.text
    claimed = first.json()["tasks"]
    # highest priority first; each claimed once, active, first attempt
    assert [t["id"] for t in claimed] == [ids[1], ids[2]]
    assert all(t["state"] == "active" and t["attempts"] == 1 for t in claimed)

    report = [{"id": t["id"], "attempt": 1, "result": _created(t, node)} for t in claimed]
    second = await _exchange(http, server, node, queue, reports=report, want=5, wait=5)
    answer = second.json()
    assert [r["state"] for r in answer["reports"]] == ["succeeded", "succeeded"]
    assert [t["id"] for t in answer["tasks"]] == [ids[0]]  # the last one; no waiting
    for task in claimed:
        vm = (
            await http.get(
                f"/api/v1/sandboxes/{task['payload']['vm_id']}",
                headers=bearer(server.admin_token),
            )
        ).json()
        assert (vm["status"], vm["node"]) == ("running", node)

    # the same reports again: already finished, nothing changes
    third = await _exchange(http, server, node, queue, reports=report)
    assert [r["code"] for r in third.json()["reports"]] == ["conflict", "conflict"]


async def test_reports_of_attempts_the_node_does_not_hold_change_nothing(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    queue, node, other = unique("q"), unique("node"), unique("node")
    await http.post(
        "/api/v1/tasks:batch",
        json={"tasks": [_create(queue), _create(queue)]},
        headers=bearer(server.admin_token),
    )
    mine, theirs = (await _exchange(http, server, node, queue, want=2)).json()["tasks"]
    answer = await _exchange(
        http,
        server,
        other,
        queue,
        reports=[
            {"id": theirs["id"], "attempt": 1, "result": _created(theirs, other)},
            {"id": "nope", "attempt": 1, "error": "x"},
        ],
    )
    assert [r["code"] for r in answer.json()["reports"]] == ["forbidden", "not_found"]
    # the refused report is in the audit trail, though the exchange itself was answered 200
    audit = await http.get(
        "/api/v1/audit",
        params={"target": f"tasks/{theirs['id']}", "outcome": "refused"},
        headers=bearer(server.admin_token),
    )
    (event,) = audit.json()["events"]
    assert event["actor"] == other and "does not hold the claim" in event["detail"]
    wrong = await _exchange(
        http,
        server,
        node,
        queue,
        reports=[
            {"id": mine["id"], "attempt": 2, "result": _created(mine, node)},  # not this attempt
            {"id": theirs["id"], "attempt": 1, "result": {"vm_id": "vm-other"}},  # bad result
        ],
    )
    codes = [r["code"] for r in wrong.json()["reports"]]
    assert codes == ["forbidden", "bad_request"]
    for task in (mine, theirs):
        now = await http.get(f"/api/v1/tasks/{task['id']}", headers=bearer(server.admin_token))
        assert now.json()["state"] == "active"
    failed = await _exchange(
        http,
        server,
        node,
        queue,
        reports=[{"id": mine["id"], "attempt": 1, "error": "boom", "retryable": False}],
    )
    assert failed.json()["reports"] == [
        {"id": mine["id"], "state": "failed", "code": None, "message": None}
    ]
    # a node credential acts as itself only
    borrowed = await http.post(
        "/api/v1/tasks/exchange",
        json={"node": other, "queues": [queue], "want": 1},
        headers=bearer(server.node_token(node)),
    )
    assert_envelope(borrowed, 403, "forbidden")
    both = await _exchange(http, server, node, queue, reports=[{"id": mine["id"], "attempt": 1}])
    assert_envelope(both, 400, "bad_request")


async def test_an_exchange_with_nothing_to_report_waits_for_work(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    queue, node = unique("q"), unique("node")
    started = time.monotonic()
    empty = await _exchange(http, server, node, queue, want=1, wait=0.6)
    assert empty.json() == {"schema": 1, "reports": [], "tasks": []}
    assert time.monotonic() - started >= 0.5


async def test_a_long_poll_answers_when_the_task_is_final(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    """``GET /tasks/{id}?wait=``: held until the node's report makes the task final."""
    queue, node = unique("q"), unique("node")
    submitted = await http.post(
        "/api/v1/tasks", json=_create(queue), headers=bearer(server.admin_token)
    )
    task_id = submitted.json()["id"]
    started = time.monotonic()
    short = await http.get(
        f"/api/v1/tasks/{task_id}", params={"wait": 0.3}, headers=bearer(server.admin_token)
    )
    assert short.json()["state"] == "pending" and time.monotonic() - started >= 0.3

    waiting = asyncio.ensure_future(
        http.get(
            f"/api/v1/tasks/{task_id}", params={"wait": 30}, headers=bearer(server.admin_token)
        )
    )
    (claimed,) = (await _exchange(http, server, node, queue, want=1)).json()["tasks"]
    await asyncio.sleep(0.2)
    assert not waiting.done()  # claimed is not final: still held
    report = [{"id": task_id, "attempt": 1, "result": _created(claimed, node)}]
    await _exchange(http, server, node, queue, reports=report)
    answer = await asyncio.wait_for(waiting, 10)  # woken by the report, not after 30 s
    assert answer.json()["state"] == "succeeded"

    # bad input and another tenant's task: refused at once
    too_long = await http.get(
        f"/api/v1/tasks/{task_id}", params={"wait": 61}, headers=bearer(server.admin_token)
    )
    assert_envelope(too_long, 400, "bad_request")
    other = await http.get(
        f"/api/v1/tasks/{task_id}",
        params={"wait": 30},
        headers=bearer(server.token("admin", tenant="other")),
    )
    assert_envelope(other, 404, "not_found")
