"""The migration and snapshot API against a real in-process server and its leader.

The test plays the nodes through the node API (register, report, upload a
snapshot) — the same HTTP calls ``aether node`` makes — so the leader's whole
migration path runs for real: the request, the checkpoint command, the
replacement placed with ``restore_from``, the migration's row and its events.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from datetime import timedelta
from typing import Any, TypeVar

import httpx
import pytest
from sqlalchemy import update

from aether.client import ApiClient
from aether.core.lifecycle import Command, State
from aether.errors import BadRequestError
from aether.model.app import AppSpec
from aether.model.cluster import InstanceRecord
from aether.server.services.migrations import progress
from aether.store.records.repo import now
from aether.store.records.schema import MigrationRecord, SnapshotRecord
from tests.support.api import assert_envelope, bearer, unique
from tests.support.fake_nodes import FakeNodes, deployed
from tests.support.server import RunningServer, running_server
from tests.support.waiting import eventually

T = TypeVar("T")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """Its own server: fake nodes here would take other tests' instances. Long leases:
    the test's nodes do not heartbeat."""
    with running_server(tmp_path_factory.mktemp("migrations"), lease_ttl=120.0) as running:
        yield running


def snapshot_bytes() -> bytes:
    return os.urandom(256)


async def upload_snapshot(
    http: httpx.AsyncClient, token: str, key: str, data: bytes, **headers: str
) -> httpx.Response:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    return await http.post(
        "/api/v1/snapshots",
        content=data,
        headers={
            **bearer(token),
            "X-Aether-Artifact-Digest": headers.pop("digest", digest),
            "X-Aether-Instance": key,
            "X-Aether-Snapshot-Kind": headers.pop("kind", "cooperative"),
        },
    )


# -- asking ----------------------------------------------------------------------------


async def test_migrate_validates_the_instance_and_the_target(
    server: RunningServer, http: httpx.AsyncClient, nodes: FakeNodes
) -> None:
    n1, n2 = await nodes.register(unique("n")), await nodes.register(unique("n"))
    app, inst = await deployed(http, server, nodes)
    here = inst["node"]
    admin = bearer(server.admin_token)

    async def ask(body: dict[str, Any], token: str = server.admin_token) -> httpx.Response:
        return await http.post("/api/v1/instances/migrate", json=body, headers=bearer(token))

    assert_envelope(await ask({"instance": f"{app}/7"}), 404, "not_found")
    assert_envelope(await ask({"instance": "instances/nowhere/x@1/0"}), 404, "not_found")
    assert_envelope(await ask({"instance": inst["key"], "to": here}), 400, "bad_request")
    assert_envelope(await ask({"instance": inst["key"], "to": "no-such-node"}), 404, "not_found")
    viewer = server.token("viewer")
    assert_envelope(await ask({"instance": inst["key"]}, viewer), 403, "forbidden")
    other = server.new_tenant()
    assert_envelope(await ask({"instance": inst["key"]}, other), 404, "not_found")
    # a draining target is refused with the reason
    target = n2 if here == n1 else n1
    assert (await http.post(f"/api/v1/nodes/{target}/drain", headers=admin)).status_code == 200
    try:
        body = assert_envelope(
            await ask({"instance": inst["key"], "to": target}), 409, "bad_target"
        )
        assert "draining" in body["message"]
    finally:
        await http.post(f"/api/v1/nodes/{target}/undrain", headers=admin)

    # APP/N names the same instance
    response = await ask({"instance": f"{app}/{inst['n']}", "to": target})
    assert response.status_code == 202, response.text
    moved = response.json()
    assert moved["instance"] == inst["key"] and moved["from_node"] == here
    assert moved["to_node"] == target and moved["kind"] == "stateless"
    assert moved["status"] == "requested"
    # once is enough
    again = assert_envelope(await ask({"instance": inst["key"]}), 409, "already_migrating")
    assert moved["id"] in again["message"]
    record = await nodes.record(inst["key"])
    assert record["migrate_to"] == target and record["migration_id"] == moved["id"]


async def test_a_stateless_move_finishes_when_the_replacement_serves(
    server: RunningServer, http: httpx.AsyncClient, nodes: FakeNodes
) -> None:
    await nodes.register(unique("n"))
    await nodes.register(unique("n"))
    app, inst = await deployed(http, server, nodes)
    async with ApiClient(server.base_url, server.admin_token) as api:
        moved = await api.migrate(inst["key"])

        async def replacement() -> dict[str, Any] | None:
            others = [i for i in await nodes.instances(app) if i["key"] != inst["key"]]
            return others[0] if others else None

        new = await eventually(replacement, "the replacement")
        assert new["node"] != inst["node"]  # anywhere but where it was
        assert (await nodes.record(new["key"]))["migration_id"] == moved.id
        assert (await nodes.record(inst["key"]))["command"] == "ACTIVATE"  # still serving
        await nodes.bring_up(new["key"])

        async def finished() -> Any:
            current = await api.migration(moved.id)
            return current if current.status == "done" else None

        done = await eventually(finished, "the migration to finish")
        assert done.to_node == new["node"] and done.replacement == new["key"]
        assert done.finished_at is not None
        assert (await nodes.record(inst["key"]))["command"] in ("DEACTIVATE", "UNLOAD")
        listed = await api.migrations(app)
        assert [m.id for m in listed] == [moved.id]


async def test_a_stateful_move_checkpoints_then_restores_on_the_target(
    server: RunningServer, http: httpx.AsyncClient, nodes: FakeNodes
) -> None:
    n1, n2 = await nodes.register(unique("n")), await nodes.register(unique("n"))
    app, inst = await deployed(http, server, nodes, stateful=True, state_dir="data")
    target = n2 if inst["node"] == n1 else n1
    async with ApiClient(server.base_url, server.admin_token) as api:
        moved = await api.migrate(f"{app}/{inst['n']}", target)
        assert moved.kind == "stateful"

        async def checkpoint_asked() -> bool:
            record = await nodes.record(inst["key"])
            return record["command"] == "DEACTIVATE" and record["checkpoint"] is True

        await eventually(checkpoint_asked, "DEACTIVATE with checkpoint")
        assert len(await nodes.instances(app)) == 1  # nothing placed before the checkpoint
        await eventually(
            lambda: _status(api, moved.id, "checkpointing"), "the row to say checkpointing"
        )

        # the node stops it, stores the snapshot, reports LOADED with the digest
        await nodes.api.report(inst["key"], "DEACTIVATING")
        data = snapshot_bytes()
        stored = await upload_snapshot(http, server.node_token(inst["node"]), inst["key"], data)
        assert stored.status_code == 201, stored.text
        digest = stored.json()["digest"]
        assert stored.json()["tier"] == "hot" and stored.json()["app"] == app
        await nodes.api.report(inst["key"], "LOADED", snapshot=digest)

        async def replacement() -> dict[str, Any] | None:
            others = [i for i in await nodes.instances(app) if i["key"] != inst["key"]]
            return others[0] if others else None

        new = await eventually(replacement, "the replacement")
        assert new["node"] == target
        record = await nodes.record(new["key"])
        assert record["restore_from"] == digest and record["migration_id"] == moved.id
        await eventually(lambda: _status(api, moved.id, "restoring"), "the row to say restoring")
        await nodes.bring_up(new["key"])
        done = await eventually(lambda: _status(api, moved.id, "done"), "the migration to finish")
        assert done.snapshot == digest and done.to_node == target

        # the old copy goes once its replacement exists
        assert (await nodes.record(inst["key"]))["command"] == "UNLOAD"
        # the timeline tells the story
        events = [e["type"] for e in await api.events(record["deployment_id"])]
        for kind in (
            "migration_requested",
            "migration_checkpointing",
            "migration_restoring",
            "migrated",
        ):
            assert kind in events, events
        assert [s.digest for s in await api.snapshots(app)] == [digest]


async def _status(api: ApiClient, migration_id: str, status: str) -> Any:
    current = await api.migration(migration_id)
    return current if current.status == status else None


async def test_drain_marks_every_instance_as_a_migration(
    server: RunningServer, http: httpx.AsyncClient, nodes: FakeNodes
) -> None:
    await nodes.register(unique("n"))
    await nodes.register(unique("n"))
    _, inst = await deployed(http, server, nodes)
    response = await http.post(
        f"/api/v1/nodes/{inst['node']}/drain", headers=bearer(server.admin_token)
    )
    try:
        assert response.status_code == 200
        (migration_id,) = response.json()["migrations"]
        async with ApiClient(server.base_url, server.admin_token) as api:
            row = await api.migration(migration_id)
        assert row.instance == inst["key"] and row.from_node == inst["node"]
        record = await nodes.record(inst["key"])
        assert record["migrate_to"] == "" and record["migration_id"] == migration_id
    finally:
        await http.post(f"/api/v1/nodes/{inst['node']}/undrain", headers=bearer(server.admin_token))


# -- snapshots -------------------------------------------------------------------------


async def test_snapshot_upload_is_verified_and_scoped(
    server: RunningServer, http: httpx.AsyncClient, nodes: FakeNodes
) -> None:
    await nodes.register(unique("n"))
    app, inst = await deployed(http, server, nodes, stateful=True, state_dir="data")
    join, admin = server.node_token(inst["node"]), server.admin_token
    data = snapshot_bytes()
    wrong = "sha256:" + "0" * 64
    assert_envelope(
        await upload_snapshot(http, join, inst["key"], data, digest=wrong), 400, "digest_mismatch"
    )
    assert_envelope(await upload_snapshot(http, join, "instances/x/y@1/0", data), 404, "not_found")
    assert_envelope(
        await upload_snapshot(http, join, inst["key"], data, kind="zfs"), 400, "bad_request"
    )
    assert_envelope(
        await upload_snapshot(http, server.token("viewer"), inst["key"], data), 403, "forbidden"
    )
    stored = await upload_snapshot(http, join, inst["key"], data)
    assert stored.status_code == 201, stored.text
    digest = stored.json()["digest"]
    assert stored.json()["schema"] == 1  # the node reads this answer: it carries its version

    listed = await http.get("/api/v1/snapshots", params={"app": app}, headers=bearer(admin))
    assert [s["digest"] for s in listed.json()] == [digest]
    assert listed.json()[0]["node"] == inst["node"] and listed.json()[0]["kind"] == "cooperative"
    for token in (join, admin):
        got = await http.get(f"/api/v1/snapshots/{digest}", headers=bearer(token))
        assert got.status_code == 200 and got.content == data
    assert_envelope(
        await http.get(f"/api/v1/snapshots/{digest}", headers=bearer(server.token("viewer"))),
        403,
        "forbidden",
    )
    other = server.new_tenant()
    assert_envelope(
        await http.get(f"/api/v1/snapshots/{digest}", headers=bearer(other)), 404, "not_found"
    )
    assert (await http.get("/api/v1/snapshots", headers=bearer(other))).json() == []

    # a node may only report a snapshot the server stores
    with pytest.raises(BadRequestError):
        await nodes.api.report(inst["key"], "ACTIVE", snapshot=wrong)


async def test_gc_applies_snapshot_retention(
    server: RunningServer, http: httpx.AsyncClient, nodes: FakeNodes
) -> None:
    await nodes.register(unique("n"))
    app, inst = await deployed(http, server, nodes, stateful=True, state_dir="data")
    digests = []
    for _ in range(3):
        response = await upload_snapshot(
            http, server.node_token(inst["node"]), inst["key"], snapshot_bytes()
        )
        digests.append(response.json()["digest"])
    newest, middle, oldest = digests[2], digests[1], digests[0]

    async def age(digest: str, days: float) -> None:
        async with server.ctx.records.sessions() as session:
            await session.execute(
                update(SnapshotRecord)
                .where(SnapshotRecord.digest == digest)
                .values(created_at=now() - timedelta(days=days))
            )
            await session.commit()

    # the oldest is past a week; the middle one is 2 days old (cold: kept); the newest hot
    server.run(age(oldest, 9))
    server.run(age(middle, 2))
    response = await http.post("/api/v1/gc", headers=bearer(server.admin_token))
    assert response.status_code == 200, response.text
    assert response.json()["deleted_snapshots"] == 1
    listed = await http.get(
        "/api/v1/snapshots", params={"app": app}, headers=bearer(server.admin_token)
    )
    assert [(s["digest"], s["tier"]) for s in listed.json()] == [
        (newest, "hot"),
        (middle, "cold"),
    ]
    assert not server.run(server.ctx.registry.exists(oldest))

    # a snapshot an instance restores from survives whatever its age
    key = inst["key"]
    record = await nodes.record(key)
    record["restore_from"] = middle
    server.run(server.ctx.store.put(key, json.dumps(record).encode()))
    server.run(age(middle, 30))
    response = await http.post("/api/v1/gc", headers=bearer(server.admin_token))
    assert response.json()["deleted_snapshots"] == 0
    assert server.run(server.ctx.registry.exists(middle))


# -- progress, as a pure reading ---------------------------------------------------------


def _row(kind: str = "stateless") -> MigrationRecord:
    return MigrationRecord(
        id="m1",
        tenant_id="t",
        app="web",
        instance="instances/n1/web@1/0",
        from_node="n1",
        to_node=None,
        kind=kind,
        status="requested",
        snapshot=None,
        replacement=None,
        reason="asked",
        started_at=now(),
        finished_at=None,
    )


def _inst(node: str, n: int, command: Command, state: State | None, **kw: Any) -> InstanceRecord:
    return InstanceRecord(
        app="web",
        version=1,
        n=n,
        node=node,
        tenant="t",
        deployment_id="d",
        digest="sha256:" + "0" * 64,
        spec=AppSpec(name="web", start="true"),
        command=command,
        state=state,
        **kw,
    )


def test_progress_reads_the_store() -> None:
    row = _row()
    source = _inst("n1", 0, Command.ACTIVATE, State.ACTIVE, migrate_to="", migration_id="m1")
    assert progress(row, source, None).status == "requested"
    starting = _inst("n2", 1, Command.LOAD, State.LOADING, migration_id="m1")
    step = progress(row, source, starting)
    assert (step.status, step.to_node, step.replacement) == ("requested", "n2", starting.key)
    serving = starting.model_copy(update={"command": Command.ACTIVATE, "state": State.ACTIVE})
    assert progress(row, source, serving).status == "requested"  # the old one still serves
    retiring = source.model_copy(update={"command": Command.DEACTIVATE})
    assert progress(row, retiring, serving).status == "done"
    failed = serving.model_copy(update={"state": State.FAILED, "message": "boom"})
    assert progress(row, source, failed).reason == "the replacement on n2 failed: boom"
    assert progress(row, source, None, waiting="no room").reason == "waiting: no room"
    assert progress(row, source, None, expired=True).status == "failed"


def test_progress_of_a_drain_that_raced_its_mark() -> None:
    """The planner placed the replacement before the migration's id reached the source."""
    row = _row()
    retiring = _inst("n1", 0, Command.DEACTIVATE, State.DEACTIVATING, migration_id="m1")
    assert progress(row, retiring, None, app_whole=True).status == "done"
    assert progress(row, retiring, None, app_whole=False).status == "requested"
    assert progress(row, None, None, app_whole=True).status == "done"
    assert progress(row, None, None, app_whole=False).status == "failed"
    # a stateful move is never assumed done: its state must have been restored
    assert progress(_row("stateful"), None, None, app_whole=True).status == "failed"


def test_progress_of_a_stateful_move() -> None:
    row = _row("stateful")
    digest = "sha256:" + "5" * 64
    stopping = _inst(
        "n1", 0, Command.DEACTIVATE, State.DEACTIVATING, checkpoint=True, migration_id="m1"
    )
    assert progress(row, stopping, None).status == "checkpointing"
    stored = stopping.model_copy(update={"state": State.LOADED, "snapshot": digest})
    step = progress(row, stored, None)
    assert step.status == "checkpointing" and step.snapshot == digest
    restoring = _inst("n2", 1, Command.LOAD, None, restore_from=digest, migration_id="m1")
    assert progress(row, stored, restoring).status == "restoring"
    broken = stopping.model_copy(update={"state": State.FAILED, "message": "checkpoint failed"})
    assert progress(row, broken, None).status == "failed"


def test_a_failed_checkpoint_says_so_and_what_the_app_restarts_from() -> None:
    row = _row("stateful")
    broken = _inst(
        "n1",
        0,
        Command.DEACTIVATE,
        State.FAILED,
        checkpoint=True,
        migration_id="m1",
        message="checkpoint failed: the state directory cannot be packed",
    )
    latest = "sha256:" + "7" * 64
    step = progress(row, broken, None, latest=latest)
    assert step.status == "failed"
    assert "the checkpoint on n1 failed" in step.reason
    assert f"restores the app's newest stored snapshot {latest}" in step.reason
    assert "starts empty" in progress(row, broken, None, latest=None).reason


def test_a_source_lost_while_checkpointing_names_the_snapshot_it_restarts_from() -> None:
    latest = "sha256:" + "8" * 64
    step = progress(_row("stateful"), None, None, latest=latest)
    assert step.status == "failed"
    assert "node n1 was lost" in step.reason and latest in step.reason


def test_a_target_lost_during_the_restore_is_blamed_on_the_target() -> None:
    row = _row("stateful")
    row.status, row.to_node = "restoring", "n2"
    row.replacement = "instances/n2/web@1/1"
    step = progress(row, None, None, latest="sha256:" + "9" * 64)
    assert step.status == "failed"
    assert "node n2 was lost during the restore" in step.reason
    assert "n1 was lost" not in step.reason


# -- recovery point: periodic checkpoints, orphans, restore ---------------------------


async def test_a_periodic_checkpoint_of_unchanged_state_sends_no_bytes(
    server: RunningServer, http: httpx.AsyncClient, nodes: FakeNodes
) -> None:
    await nodes.register(unique("n"))
    app, inst = await deployed(http, server, nodes, stateful=True, state_dir="data")
    token, key = server.node_token(inst["node"]), inst["key"]
    apps = await http.get(f"/api/v1/apps/{app}", headers=bearer(server.admin_token))
    assert apps.json()["rpo_seconds"] == 5.0 and apps.json()["checkpoint_age_seconds"] is None
    data = snapshot_bytes()
    stored = await upload_snapshot(http, token, key, data, kind="periodic")
    assert stored.status_code == 201, stored.text
    digest, first = stored.json()["digest"], stored.json()["taken_at"]

    unchanged = {
        **bearer(token),
        "X-Aether-Artifact-Digest": digest,
        "X-Aether-Instance": key,
        "X-Aether-Snapshot-Kind": "periodic",
        "X-Aether-Snapshot-Unchanged": "1",
    }
    confirmed = await http.post("/api/v1/snapshots", headers=unchanged)
    assert confirmed.status_code == 200, confirmed.text
    assert confirmed.json()["taken_at"] > first and confirmed.json()["digest"] == digest
    unknown = {**unchanged, "X-Aether-Artifact-Digest": "sha256:" + "1" * 64}
    assert_envelope(await http.post("/api/v1/snapshots", headers=unknown), 404, "not_found")
    admin = bearer(server.admin_token)
    listed = await http.get("/api/v1/snapshots", params={"app": app}, headers=admin)
    assert [(s["kind"], s["status"]) for s in listed.json()] == [("periodic", "stored")]
    shown = (await http.get(f"/api/v1/apps/{app}", headers=bearer(server.admin_token))).json()
    assert shown["rpo_seconds"] == 5.0 and 0 <= shown["checkpoint_age_seconds"] < 5


async def test_a_returning_nodes_state_is_kept_as_an_orphan_and_can_be_restored(
    server: RunningServer, http: httpx.AsyncClient, nodes: FakeNodes
) -> None:
    n1, n2 = await nodes.register(unique("n")), await nodes.register(unique("n"))
    app, inst = await deployed(http, server, nodes, stateful=True, state_dir="data")
    old, home = inst["key"], inst["node"]
    periodic = await upload_snapshot(
        http, server.node_token(home), old, snapshot_bytes(), kind="periodic"
    )
    checkpoint = periodic.json()["digest"]
    # the node's lease expires: the leader removes its instance and places a replacement
    server.run(server.ctx.store.delete(f"nodes/{home}"))

    async def replacement() -> dict[str, Any] | None:
        found = [i for i in await nodes.instances(app) if i["key"] != old]
        return found[0] if found else None

    new = await eventually(replacement, "the replacement")
    assert (await nodes.record(new["key"]))["restore_from"] == checkpoint
    await nodes.bring_up(new["key"])

    # the node comes back with newer state: stored as orphaned, with an event
    newer = snapshot_bytes()
    other = n2 if home == n1 else n1
    assert_envelope(
        await upload_snapshot(http, server.node_token(other), old, newer, kind="orphaned"),
        404,
        "not_found",
    )
    never = f"instances/{home}/{app}@1/7"  # never ran (no checkpoint of it from home)
    assert_envelope(
        await upload_snapshot(http, server.node_token(home), never, newer, kind="orphaned"),
        403,
        "forbidden",
    )
    taken = f"{now().timestamp() - 1:.3f}"
    orphan = await http.post(
        "/api/v1/snapshots",
        content=newer,
        headers={
            **bearer(server.node_token(home)),
            "X-Aether-Artifact-Digest": "sha256:" + hashlib.sha256(newer).hexdigest(),
            "X-Aether-Instance": old,
            "X-Aether-Snapshot-Kind": "orphaned",
            "X-Aether-Taken-At": taken,
        },
    )
    assert orphan.status_code == 201, orphan.text
    lost = orphan.json()["digest"]
    assert orphan.json()["status"] == "orphaned" and orphan.json()["kind"] == "orphaned"
    async with ApiClient(server.base_url, server.admin_token) as api:
        events = await api.events((await nodes.record(new["key"]))["deployment_id"])
        (lost_event,) = [e for e in events if e["type"] == "node_lost"]
        assert f"restores checkpoint {checkpoint[:19]}" in lost_event["message"]
        assert "RPO 5s" in lost_event["message"]
        (event,) = [e for e in events if e["type"] == "state_orphaned"]
        assert lost in event["message"] and checkpoint[:19] in event["message"]
        assert "missing" in event["message"] and f"snapshots restore {app}" in event["message"]
        # an orphan is never what a new instance restores on its own
        records = server.ctx.records
        tenant = server.run(records.list_snapshots(None, app))[0].tenant_id
        latest = server.run(records.latest_snapshots([(tenant, app)]))
        assert list(latest.values()) == [checkpoint]

        # restore: operators only, the caller's tenant only
        path = f"/api/v1/apps/{app}/snapshots/{lost}/restore"
        assert_envelope(
            await http.post(path, headers=bearer(server.token("viewer"))), 403, "forbidden"
        )
        assert_envelope(
            await http.post(path, headers=bearer(server.new_tenant())), 404, "not_found"
        )
        missing = f"/api/v1/apps/{app}/snapshots/sha256:{'2' * 64}/restore"
        assert_envelope(
            await http.post(missing, headers=bearer(server.admin_token)), 404, "not_found"
        )
        await nodes.register(unique("n"))  # a restore moves the instance to another node
        moved = await api.restore_snapshot(app, lost)
        assert moved.kind == "stateful" and moved.instance == new["key"]
        assert (await nodes.record(new["key"]))["restore"] == lost
        statuses = {s.digest: s.status for s in await api.snapshots(app)}
        assert statuses[lost] == "restored"

        # the instance checkpoints as it stops; its replacement restores the orphan
        async def checkpoint_asked() -> bool:
            return bool((await nodes.record(new["key"]))["command"] == "DEACTIVATE")

        await eventually(checkpoint_asked, "DEACTIVATE with checkpoint")
        await nodes.api.report(new["key"], "DEACTIVATING")
        own = await upload_snapshot(
            http, server.node_token(new["node"]), new["key"], snapshot_bytes()
        )
        await nodes.api.report(new["key"], "LOADED", snapshot=own.json()["digest"])

        async def restored() -> dict[str, Any] | None:
            found = [i for i in await nodes.instances(app) if i["key"] not in (old, new["key"])]
            return found[0] if found else None

        third = await eventually(restored, "the restored instance")
        assert (await nodes.record(third["key"]))["restore_from"] == lost
