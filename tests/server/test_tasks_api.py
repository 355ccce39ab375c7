"""The task API against a real server: validation, placement, claims, tenancy."""

from __future__ import annotations

import time
from typing import Any

import httpx

from tests.support.api import assert_envelope, bearer, unique
from tests.support.server import RunningServer


async def _submit(
    http: httpx.AsyncClient, token: str, body: dict[str, Any], **headers: str
) -> httpx.Response:
    return await http.post("/api/v1/tasks", json=body, headers={**bearer(token), **headers})


async def _claim(http: httpx.AsyncClient, join: str, node: str, **extra: Any) -> httpx.Response:
    body = {"node": node, "drivers": ["bwrap", "process"], "queues": ["default"], "wait": 0}
    body.update(extra)
    return await http.post("/api/v1/tasks/claim", json=body, headers=bearer(join))


async def test_unknown_type_and_bad_payload_are_refused(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    bad = await _submit(http, server.admin_token, {"type": "vm:teleport", "payload": {}})
    body = assert_envelope(bad, 400, "unknown_task_type")
    assert "vm:create" in body["message"]
    bad = await _submit(http, server.admin_token, {"type": "vm:create", "payload": {"vcpus": 2}})
    assert "name" in assert_envelope(bad, 400, "bad_request")["message"]
    bad = await _submit(
        http, server.admin_token, {"type": "vm:create", "payload": {"name": "x"}, "priority": 500}
    )
    assert_envelope(bad, 400, "bad_request")


async def test_roles_and_tenants(server: RunningServer, http: httpx.AsyncClient) -> None:
    viewer = server.token("viewer")
    refused = await _submit(http, viewer, {"type": "vm:create", "payload": {"name": "v"}})
    assert_envelope(refused, 403, "forbidden")
    refused = await _submit(
        http, server.join_token, {"type": "vm:create", "payload": {"name": "j"}}
    )
    assert_envelope(refused, 403, "forbidden")
    mine = await _submit(
        http, server.admin_token, {"type": "vm:create", "payload": {"name": unique("t")}}
    )
    assert mine.status_code == 201
    other = server.mint("admin", server.new_tenant())
    assert_envelope(
        await http.get(f"/api/v1/tasks/{mine.json()['id']}", headers=bearer(other)),
        404,
        "not_found",
    )
    listed = await http.get("/api/v1/tasks", headers=bearer(other))
    assert mine.json()["id"] not in {t["id"] for t in listed.json()}
    vm_id = mine.json()["payload"]["vm_id"]
    assert_envelope(
        await http.get(f"/api/v1/sandboxes/{vm_id}", headers=bearer(other)), 404, "not_found"
    )
    operator = server.token("operator")
    claim = await http.post(
        "/api/v1/tasks/claim", json={"node": "x", "wait": 0}, headers=bearer(operator)
    )
    assert_envelope(claim, 403, "forbidden")


async def test_create_claim_complete_then_execute_is_pinned(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    admin = server.admin_token
    node = unique("node")
    queue = unique("q")  # the server is shared: keep this test's tasks apart
    created = await _submit(
        http, admin, {"type": "vm:create", "payload": {"name": "box"}, "queue": queue}
    )
    assert created.status_code == 201, created.text
    task = created.json()
    vm_id = task["payload"]["vm_id"]
    assert task["state"] == "pending" and task["max_retry"] == 3 and task["timeout"] == 300
    sandbox = (await http.get(f"/api/v1/sandboxes/{vm_id}", headers=bearer(admin))).json()
    assert sandbox["status"] == "creating" and sandbox["node"] is None

    early = await _submit(
        http, admin, {"type": "vm:execute", "payload": {"vm_id": vm_id, "command": "echo"}}
    )
    assert "still being created" in assert_envelope(early, 409, "conflict")["message"]
    missing = await _submit(
        http, admin, {"type": "vm:execute", "payload": {"vm_id": "vm-nope", "command": "echo"}}
    )
    assert_envelope(missing, 404, "not_found")

    claimed = await _claim(http, server.node_token(node), node, queues=[queue])
    assert claimed.status_code == 200, claimed.text
    assert claimed.json()["id"] == task["id"] and claimed.json()["state"] == "active"
    result = {
        "vm_id": vm_id,
        "name": "box",
        "status": "running",
        "driver": "bwrap",
        "isolated": True,
    }
    done = await http.post(
        f"/api/v1/tasks/{task['id']}/complete",
        json={"node": node, "attempt": 1, "result": result},
        headers=bearer(server.node_token(node)),
    )
    assert done.json()["state"] == "succeeded"
    sandbox = (await http.get(f"/api/v1/sandboxes/{vm_id}", headers=bearer(admin))).json()
    assert (sandbox["status"], sandbox["node"], sandbox["driver"]) == ("running", node, "bwrap")

    execute = await _submit(
        http,
        admin,
        {
            "type": "vm:execute",
            "payload": {"vm_id": vm_id, "command": "echo", "args": ["hi"]},
            "queue": queue,
        },
    )
    assert execute.status_code == 201
    assert execute.json()["node"] == node  # pinned to the sandbox's node
    away = unique("elsewhere")
    elsewhere = await _claim(http, server.node_token(away), away, queues=[queue])
    assert elsewhere.status_code == 204
    got = await _claim(http, server.node_token(node), node, queues=[queue])
    assert got.json()["id"] == execute.json()["id"]
    now = time.time()
    finished = await http.post(
        f"/api/v1/tasks/{got.json()['id']}/complete",
        json={
            "node": node,
            "attempt": 1,
            "result": {
                "vm_id": vm_id,
                "command": "echo",
                "args": ["hi"],
                "exit_code": 0,
                "stdout": "hi\n",
                "stderr": "",
                "started_at": now - 0.01,
                "finished_at": now,
            },
        },
        headers=bearer(server.node_token(node)),
    )
    assert finished.json()["result"]["stdout"] == "hi\n"
    executions = (
        await http.get(f"/api/v1/sandboxes/{vm_id}/executions", headers=bearer(admin))
    ).json()
    assert [(e["command"], e["args"], e["exit_code"], e["stdout"]) for e in executions] == [
        ("echo", ["hi"], 0, "hi\n")
    ]


async def test_idempotency_and_cancel(server: RunningServer, http: httpx.AsyncClient) -> None:
    admin = server.admin_token
    key = unique("key")
    body = {"type": "vm:create", "payload": {"name": "same"}, "delay": 3600}
    first = await _submit(http, admin, body, **{"Idempotency-Key": key})
    again = await _submit(http, admin, body, **{"Idempotency-Key": key})
    assert first.json()["id"] == again.json()["id"]
    assert first.json()["payload"]["vm_id"] == again.json()["payload"]["vm_id"]
    assert first.json()["state"] == "scheduled"
    cancelled = await http.post(f"/api/v1/tasks/{first.json()['id']}/cancel", headers=bearer(admin))
    assert cancelled.json()["state"] == "cancelled"
    again = await http.post(f"/api/v1/tasks/{first.json()['id']}/cancel", headers=bearer(admin))
    assert again.json()["state"] == "cancelled"


async def test_job_run_needs_a_deployed_app(server: RunningServer, http: httpx.AsyncClient) -> None:
    refused = await _submit(
        http,
        server.admin_token,
        {"type": "job:run", "payload": {"app": unique("ghost"), "command": "true"}},
    )
    assert_envelope(refused, 404, "not_found")


async def test_the_list_pages_with_before(server: RunningServer, http: httpx.AsyncClient) -> None:
    admin = server.admin_token
    queue = unique("pages")
    ids = []
    for n in range(5):
        made = await _submit(
            http, admin, {"type": "vm:create", "payload": {"name": f"p{n}"}, "queue": queue}
        )
        ids.append(made.json()["id"])
    newest_first = list(reversed(ids))

    async def page(**params: Any) -> list[str]:
        answer = await http.get(
            "/api/v1/tasks", params={"queue": queue, "limit": 2, **params}, headers=bearer(admin)
        )
        assert answer.status_code == 200, answer.text
        return [t["id"] for t in answer.json()]

    assert await page() == newest_first[:2]
    assert await page(before=newest_first[1]) == newest_first[2:4]
    assert await page(before=newest_first[3]) == newest_first[4:]
    other = await http.get(
        "/api/v1/tasks", params={"before": ids[0]}, headers=bearer(server.new_tenant())
    )
    assert_envelope(other, 404, "not_found")


def test_a_task_s_history_lists_its_attempts_and_is_the_tenant_s_own(
    server: RunningServer,
) -> None:
    node, queue = unique("histnode"), unique("q")
    admin, creds = bearer(server.admin_token), bearer(server.node_token(node))
    base = server.base_url
    made = httpx.post(
        f"{base}/api/v1/tasks",
        json={"type": "vm:create", "payload": {"name": "hist"}, "queue": queue},
        headers=admin,
    )
    assert made.status_code == 201, made.text
    task_id = made.json()["id"]
    claim = {"node": node, "drivers": ["process"], "queues": [queue], "wait": 0}
    assert httpx.post(f"{base}/api/v1/tasks/claim", json=claim, headers=creds).status_code == 200
    failed = httpx.post(
        f"{base}/api/v1/tasks/{task_id}/fail",
        json={"node": node, "attempt": 1, "error": "exit 3", "retryable": True},
        headers=creds,
    )
    assert failed.status_code == 200, failed.text
    history = httpx.get(f"{base}/api/v1/tasks/{task_id}/history", headers=admin)
    assert history.status_code == 200, history.text
    body = history.json()
    assert [e["state"] for e in body["events"]] == ["pending", "active", "retry"]
    (attempt,) = body["attempts"]
    assert (attempt["number"], attempt["node"], attempt["outcome"], attempt["error"]) == (
        1,
        node,
        "retry",
        "exit 3",
    )
    other = httpx.get(f"{base}/api/v1/tasks/{task_id}/history", headers=bearer(server.new_tenant()))
    assert other.status_code == 404


def test_stats_since_far_in_the_future_is_a_bad_request(server: RunningServer) -> None:
    answer = httpx.get(
        f"{server.base_url}/api/v1/tasks/stats",
        params={"since": 6.9e16},
        headers=bearer(server.token("viewer")),
    )
    assert_envelope(answer, 400, "bad_request")
    ok = httpx.get(
        f"{server.base_url}/api/v1/tasks/stats",
        params={"since": 1_700_000_000},
        headers=bearer(server.token("viewer")),
    )
    assert ok.status_code == 200 and set(ok.json()) >= {"pending", "failed"}
