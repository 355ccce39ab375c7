"""Records on a real PostgreSQL (psycopg 3): the repository, and a server that outlives an outage.

The smoke tests run the ``Records`` methods the API uses most against a fresh,
migrated database each. The chaos test runs a real in-process server on
PostgreSQL, stops PostgreSQL under it (``pg_ctl stop -m fast``), checks that the
API answers ``service_unavailable`` envelopes, starts PostgreSQL again and checks
that the same server serves again by itself, with nothing written before lost.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from aether.errors import NotFoundError
from aether.store.records import Records, open_records, upgrade_schema
from aether.store.records.agents import AgentVersion
from aether.store.records.repo import now
from aether.store.records.schema import Execution, Task
from aether.tasks.queue.base import NewTask
from aether.tasks.queue.sql import SqlTaskQueue
from tests.support.api import (
    MAX_ARTIFACT_BYTES,
    assert_envelope,
    bearer,
    deploy,
    unique,
    upload_random,
)
from tests.support.postgres import PostgresServer
from tests.support.server import running_server

TEMPLATE = "records_template"


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    """One PostgreSQL for the smoke tests, with a migrated template database."""
    with PostgresServer.launched() as server:
        upgrade_schema(server.create_database(TEMPLATE))
        yield server


@pytest.fixture
async def opened(postgres: PostgresServer) -> AsyncIterator[tuple[Records, AsyncEngine]]:
    url = postgres.create_database(template=TEMPLATE)
    engine, sessions = open_records(url)
    try:
        yield Records(sessions), engine
    finally:
        await engine.dispose()
        postgres.drop_database(make_url(url).database or "")


@pytest.fixture
def records(opened: tuple[Records, AsyncEngine]) -> Records:
    return opened[0]


# -- the engine -------------------------------------------------------------------------


async def test_records_run_on_psycopg(opened: tuple[Records, AsyncEngine]) -> None:
    _, engine = opened
    assert (engine.dialect.name, engine.dialect.driver) == ("postgresql", "psycopg")
    async with engine.connect() as conn:
        version = await conn.scalar(text("SHOW server_version_num"))
    assert int(version) >= 120000


async def test_connections_killed_by_the_server_are_replaced_transparently(
    opened: tuple[Records, AsyncEngine],
) -> None:
    records, engine = opened
    tenant = await records.ensure_tenant("acme")
    await asyncio.gather(*(records.list_apps(tenant.id) for _ in range(5)))  # fill the pool
    async with engine.connect() as conn:  # what a PostgreSQL restart does to the pool
        killed = await conn.scalar(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        )
    assert killed >= 1
    for _ in range(10):  # every pooled connection is dead; pre-ping swaps each for a new one
        assert (await records.ensure_tenant("acme")).id == tenant.id


# -- tenants and tokens -------------------------------------------------------------------


async def test_tenants_are_made_once_even_when_raced(records: Records) -> None:
    made = await asyncio.gather(*(records.ensure_tenant("acme") for _ in range(10)))
    assert len({tenant.id for tenant in made}) == 1
    assert (await records.ensure_tenant("globex")).id != made[0].id


async def test_tokens_authenticate_until_revoked(records: Records) -> None:
    tenant = await records.ensure_tenant("acme")
    assert not await records.has_token("admin")
    token_id, token = await records.issue_token(tenant.id, "admin", "ci")
    assert await records.has_token("admin")

    principal = await records.authenticate(token)
    assert principal is not None
    assert (principal.tenant, principal.role, principal.token_id) == ("acme", "admin", token_id)
    assert [t.id for t in await records.list_tokens(tenant.id)] == [token_id]
    assert (await records.get_token(tenant.id, token_id)).name == "ci"

    await records.revoke_token(token_id)
    assert await records.authenticate(token) is None
    assert await records.authenticate("ae_a_not-a-token") is None
    assert not await records.has_token("admin")
    with pytest.raises(NotFoundError):
        await records.get_token((await records.ensure_tenant("globex")).id, token_id)


# -- apps, deployments, events ------------------------------------------------------------


async def test_apps_and_deployments(records: Records) -> None:
    tenant = await records.ensure_tenant("acme")
    apps = await asyncio.gather(*(records.get_or_create_app(tenant.id, "web") for _ in range(5)))
    assert len({app.id for app in apps}) == 1
    app = apps[0]
    assert app.require_signature is False  # the server default, on PostgreSQL's boolean

    spec = {"name": "web", "env": {"GREETING": "grüß dich ✓"}, "ports": [8080], "tls": None}
    raced = await asyncio.gather(
        *(
            records.create_deployment(
                tenant.id, app, digest=f"sha256:{i:064x}", spec=spec, instances=2
            )
            for i in range(4)
        )
    )
    assert sorted(d.version for d, _ in raced) == [1, 2, 3, 4]  # the unique (app, version) retry
    assert all(created for _, created in raced)
    listed = await records.list_deployments(tenant.id, app)
    assert [d.version for d in listed] == [4, 3, 2, 1]
    assert all(d.spec == spec for d in listed)

    first = await records.get_deployment_by_version(tenant.id, app, 1)
    assert await records.set_deployment_status(first.id, "active")
    assert not await records.set_deployment_status(first.id, "active")  # rowcount: unchanged
    assert (await records.get_deployment(tenant.id, first.id)).status == "active"
    for i in range(3):
        await records.add_event(first.id, "placed", f"instance {i}")
    assert [e.message for e in await records.list_events(first.id)] == [
        "instance 0",
        "instance 1",
        "instance 2",
    ]

    updated = await records.update_app_settings(
        tenant.id, app, {"require_signature": True, "retain_deployments": 3}
    )
    assert (updated.require_signature, updated.retain_deployments) == (True, 3)
    assert [a.name for a in await records.list_apps(tenant.id)] == ["web"]
    other = await records.ensure_tenant("globex")
    with pytest.raises(NotFoundError):
        await records.get_deployment(other.id, first.id)


async def test_artifacts_and_idempotency_keys(records: Records) -> None:
    tenant = await records.ensure_tenant("acme")
    digest = "sha256:" + "ab" * 32
    await asyncio.gather(*(records.add_artifact(tenant.id, digest, 512) for _ in range(3)))
    assert await records.has_artifact(tenant.id, digest)
    await records.set_artifact_metadata(
        tenant.id, digest, sbom={"packages": []}, manifest=[{"path": "a.py", "size": 1}]
    )
    row = await records.artifact_row(tenant.id, digest)
    assert (row.size_bytes, row.sbom, row.manifest) == (
        512,
        {"packages": []},
        {"files": [{"path": "a.py", "size": 1}]},
    )

    response = {"id": "d1", "version": 1, "nested": {"ok": True}}
    await records.save_idempotent(tenant.id, "key-1", "h1", 201, response)
    await records.save_idempotent(tenant.id, "key-1", "h2", 500, {})  # the first one stays
    saved = await records.get_idempotent(tenant.id, "key-1")
    assert saved is not None
    assert (saved.request_hash, saved.status_code, saved.response) == ("h1", 201, response)
    assert await records.get_idempotent(tenant.id, "key-2") is None


# -- nodes, sandboxes, signals, decisions, roll-ups -----------------------------------------


async def test_nodes_sandboxes_and_executions(records: Records) -> None:
    tenant = await records.ensure_tenant("acme")
    await records.upsert_node("n1", "http://127.0.0.1:1", {"drivers": ["process"]})
    await records.upsert_node("n1", "http://127.0.0.1:2", {"drivers": ["bwrap"]})
    await records.set_node_draining("n1", True, reason="risk HIGH", by="controller")
    [node] = await records.list_nodes()
    assert (node.router_url, node.capabilities, node.draining, node.drained_by) == (
        "http://127.0.0.1:2",
        {"drivers": ["bwrap"]},
        True,
        "controller",
    )
    with pytest.raises(NotFoundError):
        await records.set_node_draining("nope", True)

    sandbox = await records.create_sandbox(
        tenant.id, "sb1", name="s", driver=None, vcpus=1, memory_mb=256, network=False
    )
    assert (await records.create_sandbox(
        tenant.id, "sb1", name="again", driver=None, vcpus=2, memory_mb=1, network=True
    )).name == sandbox.name  # fmt: skip
    await records.update_sandbox("sb1", status="running", node="n1")
    assert (await records.get_sandbox("sb1", tenant.id)).status == "running"
    execution = Execution(
        id="e1",
        tenant_id=tenant.id,
        sandbox_id="sb1",
        task_id=None,
        command="echo",
        args=["hi", "✓"],
        exit_code=0,
        stdout="hi ✓\n",
        stderr="",
        started_at=now(),
        finished_at=now(),
    )
    await records.add_execution(execution)
    [listed] = await records.list_executions(tenant.id, "sb1")
    assert (listed.args, listed.stdout) == (["hi", "✓"], "hi ✓\n")


async def test_signals_decisions_and_rollups(records: Records) -> None:
    ids = await records.add_signals(
        [
            {"node": "n1", "kind": "spot_price", "value": 0.1, "source": "sim", "ts": 1.0},
            {"node": "n2", "kind": "spot_price", "value": 0.2, "source": "sim", "ts": 2.0},
            {"node": "n1", "kind": "rebalance", "value": 1.0, "source": "sim", "ts": 3.0},
        ]
    )
    assert ids == sorted(ids) and len(set(ids)) == 3
    latest = await records.latest_signals_by_node("sim")
    assert {node: row.id for node, row in latest.items()} == {"n1": ids[2], "n2": ids[1]}
    assert [s.id for s in await records.read_signals(ids[0])] == ids[1:]

    for ts in (10.0, 20.0):
        await records.add_decision(
            ts=ts,
            layer=1,
            kind="scale",
            target="x" * 300,  # cut to the column's 128 characters
            action={"instances": 3},
            inputs={"cpu": 0.9},
            reason="busy",
            outcome="applied",
        )
    decisions = await records.list_decisions(None)
    assert [d.ts for d in decisions] == [20.0, 10.0]
    assert decisions[0].target == "x" * 128
    assert await records.delete_decisions_before(15.0) == 1

    rows = [{"kind": "node", "name": "n1", "samples": 60, "avg": {"cpu": 0.5}, "max": {"cpu": 1}}]
    await records.write_rollups(600.0, rows)
    await records.write_rollups(600.0, rows)  # a new leader rewriting the minute
    [rollup] = await records.list_rollups("node", "n1", since=0.0)
    assert (rollup.samples, rollup.avg_values, rollup.max_values) == (60, {"cpu": 0.5}, {"cpu": 1})
    assert await records.delete_rollups_before(660.0) == 1


# -- tasks: claims skip what another claimer holds ------------------------------------------


async def test_a_claim_skips_a_task_another_transaction_has_locked(
    opened: tuple[Records, AsyncEngine],
) -> None:
    records, engine = opened
    tenant = await records.ensure_tenant("acme")
    queue = SqlTaskQueue(records.sessions)
    t0 = 1_700_000_000.0
    top = await queue.submit(tenant.id, NewTask(type="job:run", priority=9), now=t0)
    low = await queue.submit(tenant.id, NewTask(type="job:run", priority=1), now=t0)

    async def claim(worker: str) -> str | None:
        claimed = await queue.claim(
            worker, node="n1", drivers=("process",), queues=("default",), lease=30, now=t0
        )
        return None if claimed is None else claimed.id

    async with engine.connect() as conn, conn.begin():  # another claimer, mid-transaction
        await conn.execute(select(Task.id).where(Task.id == top.id).with_for_update())
        # FOR UPDATE SKIP LOCKED: passes over the locked row instead of waiting for it
        # (the timeout only guards against a hang)
        assert await asyncio.wait_for(claim("w1"), timeout=60) == low.id
        assert await asyncio.wait_for(claim("w2"), timeout=60) is None
    assert await claim("w3") == top.id  # released: claimable again


# -- chaos: PostgreSQL stops under a running server ---------------------------------------


async def _until_ok(http: httpx.AsyncClient, path: str, token: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        response = await http.get(path, headers=bearer(token))
        if response.status_code == 200:
            return
        assert_envelope(response, 503, "service_unavailable")  # never anything but 503 meanwhile
        assert time.monotonic() < deadline, f"{path} still failing after PostgreSQL came back"
        await asyncio.sleep(0.2)


async def test_stopping_postgres_answers_503_and_the_server_recovers_by_itself(
    tmp_path: Path,
) -> None:
    with (
        PostgresServer.launched() as pg,
        running_server(
            tmp_path / "data",
            records_url=pg.create_database("aether"),
            max_artifact_bytes=MAX_ARTIFACT_BYTES,
        ) as server,
    ):
        # connect/read bounded: an outage must answer, not hang
        async with httpx.AsyncClient(base_url=server.base_url, timeout=30.0) as http:
            admin = server.admin_token
            # -- before: apps, deployments, tasks, tokens
            app = unique("pg")
            digest = await upload_random(http, admin)
            response = await deploy(http, admin, app, digest, instances=1)
            assert response.status_code == 201, response.text
            deployment_id = response.json()["id"]
            job = {"type": "job:run", "payload": {"app": app, "command": "true"}}
            task_ids = []
            for i in range(3):
                submitted = await http.post(
                    "/api/v1/tasks",
                    json={"type": "job:run", "payload": {"app": app, "command": f"echo {i}"}},
                    headers=bearer(admin),
                )
                assert submitted.status_code == 201, submitted.text
                task_ids.append(submitted.json()["id"])
            issued = await http.post(
                "/api/v1/tokens", json={"role": "operator", "name": "ops"}, headers=bearer(admin)
            )
            assert issued.status_code == 201, issued.text
            operator = issued.json()["token"]

            # -- PostgreSQL goes away: every call that needs the records answers 503
            await asyncio.to_thread(pg.stop)
            calls = [
                http.get("/api/v1/apps", headers=bearer(admin)),
                http.get(f"/api/v1/apps/{app}/deployments", headers=bearer(admin)),
                http.get(f"/api/v1/tasks/{task_ids[0]}", headers=bearer(admin)),
                http.get("/api/v1/tasks", headers=bearer(operator)),
                http.get("/api/v1/tokens", headers=bearer(admin)),
                http.post("/api/v1/tasks", json=job, headers=bearer(admin)),
                http.get("/readyz"),
            ]
            # through the idempotency middleware, which reads the records first
            calls.append(deploy(http, admin, app, digest, instances=1, key="after-outage"))
            for response in await asyncio.gather(*calls):
                assert_envelope(response, 503, "service_unavailable")
            assert (await http.get("/healthz")).status_code == 200  # the process is alive

            # -- PostgreSQL returns on the same address: the same server serves again
            await asyncio.to_thread(pg.start)
            await _until_ok(http, "/api/v1/apps", admin)
            assert (await http.get("/readyz")).status_code == 200

            # nothing written before the outage is lost
            apps = await http.get("/api/v1/apps", headers=bearer(admin))
            assert app in [a["name"] for a in apps.json()]
            deployments = await http.get(f"/api/v1/apps/{app}/deployments", headers=bearer(admin))
            assert [d["id"] for d in deployments.json()] == [deployment_id]
            listed = await http.get("/api/v1/tasks", headers=bearer(operator))
            assert listed.status_code == 200, listed.text
            assert set(task_ids) <= {t["id"] for t in listed.json()}
            tokens = await http.get("/api/v1/tokens", headers=bearer(admin))
            assert "ops" in [t["name"] for t in tokens.json()]

            # and new writes go through; the key refused during the outage was not spent
            again = await deploy(http, admin, app, digest, instances=1, key="after-outage")
            assert again.status_code == 201, again.text
            assert again.json()["version"] == 2
            replay = await deploy(http, admin, app, digest, instances=1, key="after-outage")
            assert (replay.status_code, replay.json()["id"]) == (201, again.json()["id"])
            submitted = await http.post("/api/v1/tasks", json=job, headers=bearer(operator))
            assert submitted.status_code == 201, submitted.text


# -- deleting a tenant -------------------------------------------------------------------


async def _populate(records: Records, tenant_id: str, digest: str) -> str:
    """One of every record a tenant owns; the id of its deployment."""
    app = await records.get_or_create_app(tenant_id, "shop")
    dep, _ = await records.create_deployment(
        tenant_id, app, digest=digest, spec={"name": "shop"}, instances=1
    )
    await records.add_event(dep.id, "created", "v1")
    await records.add_artifact(tenant_id, digest, 10)
    token_id, _ = await records.issue_token(tenant_id, "admin", "ci")
    await records.open_session(token_id, 60)
    await records.create_sandbox(
        tenant_id, "vm-1", name="box", driver="process", vcpus=1, memory_mb=64, network=False
    )
    at = now()
    await records.add_execution(
        Execution(
            id="ex-1",
            tenant_id=tenant_id,
            sandbox_id="vm-1",
            task_id=None,
            command="true",
            args=[],
            exit_code=0,
            stdout="",
            stderr="",
            started_at=at,
            finished_at=at,
        )
    )
    await records.add_snapshot(
        tenant_id=tenant_id,
        app="shop",
        instance="instances/n1/shop@1/0",
        node="n1",
        digest=digest,
        size_bytes=10,
        kind="periodic",
    )
    return dep.id


async def test_a_tenant_is_purged_with_every_record_it_owns(records: Records) -> None:
    """PostgreSQL checks the foreign keys SQLite does not: the order of the deletes."""
    gone = await records.ensure_tenant("gone")
    kept = await records.ensure_tenant("kept")
    digest = "sha256:" + "a" * 64
    deployment = await _populate(records, gone.id, digest)
    await _populate(records, kept.id, digest)
    queue = SqlTaskQueue(records.sessions)
    await queue.submit(gone.id, NewTask(type="noop"))
    agent, _ = await records.add_agent(gone.id, "a", AgentVersion(model="model://m"), "me")
    await records.add_agent_version(gone.id, agent.id, AgentVersion(model="model://n"), "me")
    await records.add_agent_recipe(gone.id, "r", {"id": "r", "name": "R", "open": ["model"]})

    purged = await records.purge_tenant(gone.id)

    assert len(purged.token_ids) == 1 and purged.digests == {digest}
    assert await records.find_tenant("gone") is None
    assert await records.list_apps(gone.id, include_deleted=True) == []
    assert await records.list_events(deployment) == []
    assert await records.claimed_digests({digest}) == {digest}  # the other tenant's claim
    assert len(await records.list_apps(kept.id)) == 1
    assert await records.agents(gone.id) == [] and await records.agent_recipes(gone.id) == []
    assert await records.agent_versions(gone.id, agent.id) == []
    # the leader may still write an event of an instance of the gone tenant: dropped
    await records.add_event(deployment, "instance_failed", "after the tenant went")
    assert await records.list_events(deployment) == []
