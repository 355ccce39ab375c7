"""The audit trail through the API: what produces events (with which actor, target and
outcome), who sees which, filters, pages, the JSON-lines export, verify, and that a
mutating call whose event cannot be written is not acknowledged (fail closed)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
from sqlalchemy import text

from aether.server.services.gc import collect_garbage
from tests.support.api import assert_envelope, audit_events, bearer, deploy, unique, upload_random
from tests.support.console import login_csrf
from tests.support.server import RunningServer, running_server


def token_id(server: RunningServer, token: str) -> str:
    principal = server.run(server.ctx.records.authenticate(token))
    assert principal is not None
    return principal.token_id


async def test_deploy_scale_and_token_create_are_events_of_their_token(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    admin = server.new_tenant()
    actor = token_id(server, admin)
    app = unique("audited")
    digest = await upload_random(http, admin)
    deployed = await deploy(http, admin, app, digest, instances=1)
    assert deployed.status_code == 201, deployed.text
    scaled = await http.post(
        f"/api/v1/apps/{app}/scale", json={"instances": 2}, headers=bearer(admin)
    )
    assert scaled.status_code == 200, scaled.text
    created = await http.post(
        "/api/v1/tokens", json={"role": "viewer", "name": "ci"}, headers=bearer(admin)
    )
    assert created.status_code == 201, created.text

    found = await audit_events(http, admin, actor=actor)
    by_action = {e["action"]: e for e in found}
    deploy_event = by_action["POST /apps/{app}/deployments"]
    assert deploy_event["target"] == f"apps/{app}/deployments"
    assert (deploy_event["outcome"], deploy_event["status"]) == ("ok", 201)
    assert deploy_event["trace_id"] == deployed.headers["x-trace-id"]
    assert (deploy_event["actor_kind"], deploy_event["role"]) == ("token", "admin")
    assert deploy_event["source"] == "127.0.0.1"
    assert by_action["POST /apps/{app}/scale"]["target"] == f"apps/{app}/scale"
    assert by_action["POST /tokens"]["outcome"] == "ok"
    assert "POST /artifacts" in by_action
    assert created.json()["token"] not in json.dumps(found)  # never a secret


async def test_a_refused_call_and_a_failed_authentication_are_refused_events(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    viewer = server.mint("viewer")
    refused = await http.post(
        f"/api/v1/apps/{unique('nope')}/scale", json={"instances": 2}, headers=bearer(viewer)
    )
    assert_envelope(refused, 403, "forbidden")
    [event] = await audit_events(http, server.admin_token, actor=token_id(server, viewer))
    assert (event["outcome"], event["status"], event["role"]) == ("refused", 403, "viewer")
    assert "may not do this" in event["detail"]

    anonymous = await http.post("/api/v1/tokens", json={"role": "viewer"}, headers=bearer("nope"))
    assert_envelope(anonymous, 401, "unauthorized")
    found = await audit_events(http, server.admin_token, outcome="refused", action="POST /tokens")
    mine = [e for e in found if e["trace_id"] == anonymous.headers["x-trace-id"]]
    assert [(e["actor_kind"], e["status"], e["tenant_id"]) for e in mine] == [
        ("anonymous", 401, None)
    ]


async def test_node_hot_paths_and_reads_are_not_audited(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    operator = server.mint("operator")
    asked = await http.post("/api/v1/blobs/missing", json={"digests": []}, headers=bearer(operator))
    assert asked.status_code in (200, 400), asked.text
    assert (await http.get("/api/v1/apps", headers=bearer(operator))).status_code == 200
    assert await audit_events(http, server.admin_token, actor=token_id(server, operator)) == []


async def test_only_admins_read_it_and_each_tenant_sees_its_own(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    a, b = server.new_tenant(), server.new_tenant()
    for token in (a, b):
        made = await http.post(
            "/api/v1/tokens", json={"role": "viewer", "name": "v"}, headers=bearer(token)
        )
        assert made.status_code == 201, made.text
    seen_by_a = await audit_events(http, a)
    assert {e["actor"] for e in seen_by_a} == {token_id(server, a)}
    assert await audit_events(http, a, actor=token_id(server, b)) == []
    everyone = await audit_events(http, server.admin_token, action="POST /tokens", limit=1000)
    assert {token_id(server, a), token_id(server, b)} <= {e["actor"] for e in everyone}
    for role in ("operator", "viewer"):
        answer = await http.get("/api/v1/audit", headers=bearer(server.mint(role)))
        assert_envelope(answer, 403, "forbidden")
    assert_envelope(await http.get("/api/v1/audit/verify", headers=bearer(a)), 403, "forbidden")
    assert_envelope(await http.get("/api/v1/audit"), 401, "unauthorized")
    assert_envelope(
        await http.get("/api/v1/audit", params={"outcome": "maybe"}, headers=bearer(a)),
        400,
        "bad_request",
    )


async def test_pages_follow_and_export_as_json_lines(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    admin = server.new_tenant()
    for _ in range(5):
        made = await http.post(
            "/api/v1/tokens", json={"role": "viewer", "name": "v"}, headers=bearer(admin)
        )
        assert made.status_code == 201
    first = (await http.get("/api/v1/audit", params={"limit": 2}, headers=bearer(admin))).json()
    assert len(first["events"]) == 2 and first["cursor"] == first["events"][-1]["id"]
    rest = await audit_events(http, admin, before=first["cursor"], limit=10)
    ids = [e["id"] for e in [*first["events"], *rest]]
    assert len(ids) == 5 and ids == sorted(ids, reverse=True)
    assert [e["id"] for e in await audit_events(http, admin, after=ids[2])] == sorted(ids[:2])

    for kwargs in (
        {"params": {"format": "jsonl"}},
        {"headers": {"accept": "application/x-ndjson"}},
    ):
        headers = {**bearer(admin), **kwargs.get("headers", {})}
        export = await http.get("/api/v1/audit", params=kwargs.get("params"), headers=headers)
        assert export.status_code == 200
        assert export.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in export.text.splitlines()]
        assert [e["id"] for e in lines] == sorted(ids)


async def test_verify_walks_the_chain(server: RunningServer, http: httpx.AsyncClient) -> None:
    answer = await http.get("/api/v1/audit/verify", headers=bearer(server.admin_token))
    assert answer.status_code == 200, answer.text
    verdict = answer.json()
    assert verdict["ok"] is True and verdict["first_bad"] is None and verdict["checked"] > 0


def test_console_sign_in_success_and_failures_are_events(server: RunningServer) -> None:
    admin = server.new_tenant()
    with httpx.Client(base_url=server.base_url, timeout=10.0) as client:
        bad_csrf = client.post("/ui/login", data={"token": admin, "csrf": "forged"})
        assert bad_csrf.status_code == 403
        wrong = client.post("/ui/login", data={"token": "wrong", "csrf": login_csrf(client)})
        assert wrong.status_code == 401
        good = client.post("/ui/login", data={"token": admin, "csrf": login_csrf(client)})
        assert good.status_code == 303
        traces = {r.headers["x-trace-id"] for r in (bad_csrf, wrong)}
    found = server.run(server.ctx.records.list_audit(None, action="console.signin", limit=1000))
    failures = {(e.outcome, e.status, e.actor_kind) for e in found if e.trace_id in traces}
    assert failures == {("refused", 403, "anonymous"), ("refused", 401, "anonymous")}
    mine = [e for e in found if e.actor == token_id(server, admin)]
    assert [(e.outcome, e.target, e.tenant) for e in mine] == [
        ("ok", "console", server.run(server.ctx.records.authenticate(admin)).tenant)  # type: ignore[union-attr]
    ]


def test_a_change_whose_event_cannot_be_written_is_not_acknowledged(tmp_path: Path) -> None:
    with running_server(tmp_path) as server:

        async def break_chain() -> None:
            async with server.ctx.records.sessions() as session:
                await session.execute(text("DELETE FROM audit_chain"))
                await session.commit()

        server.run(break_chain())
        answer = httpx.post(
            f"{server.base_url}/api/v1/tokens",
            json={"role": "viewer", "name": "v"},
            headers=bearer(server.admin_token),
        )
        body = assert_envelope(answer, 503, "service_unavailable")
        assert "audit log" in body["message"]
        read = httpx.get(f"{server.base_url}/api/v1/apps", headers=bearer(server.admin_token))
        assert read.status_code == 200  # reads are not audited: they go on


def test_the_garbage_collector_trims_by_retention_and_keeps_the_chain(tmp_path: Path) -> None:
    with running_server(tmp_path, audit_retention_days=30) as server:
        made = httpx.post(
            f"{server.base_url}/api/v1/tokens",
            json={"role": "viewer", "name": "old"},
            headers=bearer(server.admin_token),
        )
        assert made.status_code == 201
        soon = server.run(collect_garbage(server.ctx, now=time.time() + 29 * 86400))
        assert soon.trimmed_audit_events == 0
        later = server.run(collect_garbage(server.ctx, now=time.time() + 31 * 86400))
        assert later.trimmed_audit_events >= 1
        assert server.run(server.ctx.records.list_audit(None)) == []
        verdict = httpx.get(
            f"{server.base_url}/api/v1/audit/verify", headers=bearer(server.admin_token)
        ).json()
        assert verdict["ok"] is True and verdict["anchor_id"] >= 1
