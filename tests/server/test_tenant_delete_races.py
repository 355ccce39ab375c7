"""Deleting a tenant against what runs at the same time: other servers' token caches
(and theirs of a removed member's token),
a deploy while the delete is under way, a second delete of the same tenant.

Real servers: two in-process servers sharing one etcd (state) and one SQLite records
database for the cross-server case; the module's own server for the others, whose
delete is held in its last step (the purge) by a write lock the test takes on the
records database, as a slow database would.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.api import bearer, deploy, unique, upload_random
from tests.support.etcd import EtcdCluster
from tests.support.server import RunningServer, running_server


@pytest.fixture(scope="module")
def own(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(tmp_path_factory.mktemp("tenant-delete")) as running:
        yield running


@pytest.fixture
async def http(own: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=own.base_url, timeout=30.0) as client:
        yield client


def _refused_within(url: str, token: str, seconds: float) -> float:
    """Seconds until ``GET /api/v1/apps`` with ``token`` is a 401 (fails after ``seconds``)."""
    began = time.monotonic()
    while time.monotonic() - began < seconds:
        answer = httpx.get(f"{url}/api/v1/apps", headers=bearer(token), timeout=10)
        if answer.status_code == 401:
            return time.monotonic() - began
        assert answer.status_code == 200, answer.text
        time.sleep(0.05)
    raise AssertionError(f"the token still works at {url} after {seconds} s")


def test_another_servers_cache_forgets_a_deleted_tenants_tokens_within_a_second(
    tmp_path: Path,
) -> None:
    shared: dict[str, Any] = {
        "records_url": f"sqlite:///{tmp_path / 'records.db'}",
        "lease_ttl": 3.0,
    }
    with EtcdCluster(size=1) as etcd:
        shared["state_url"] = f"{etcd.url}/{unique('state')}"
        # every server has the same secrets key (docs/production.md): it seals the
        # cluster CA's key, which both servers sign node certificates with
        shared["secrets_key_file"] = str(tmp_path / "secrets.key")
        with running_server(tmp_path / "one", **shared) as one:
            (tmp_path / "two").mkdir()
            for name in ("admin.token", "join.token"):  # written once, by the first server
                shutil.copy(tmp_path / "one" / name, tmp_path / "two" / name)
            with running_server(tmp_path / "two", **shared) as two:
                admin = bearer(one.admin_token)
                name = unique("team")
                created = httpx.post(
                    f"{one.base_url}/api/v1/tenants", json={"name": name}, headers=admin
                )
                assert created.status_code == 201, created.text
                token = created.json()["admin_token"]
                viewer = one.mint("viewer")
                for credential in (token, viewer):  # now in the second server's cache
                    answer = httpx.get(f"{two.base_url}/api/v1/apps", headers=bearer(credential))
                    assert answer.status_code == 200, answer.text

                gone = httpx.delete(f"{one.base_url}/api/v1/tenants/{name}", headers=admin)
                assert gone.status_code == 200, gone.text
                assert _refused_within(two.base_url, token, 2.5) < 2.5

                listed = httpx.get(f"{one.base_url}/api/v1/tokens", headers=admin).json()
                (row,) = [t for t in listed if t["name"] == "test viewer"]
                revoked = httpx.delete(f"{one.base_url}/api/v1/tokens/{row['id']}", headers=admin)
                assert revoked.status_code == 200, revoked.text
                assert _refused_within(two.base_url, viewer, 2.5) < 2.5

                # a member taken out of the tenant: its signed-in token, cached there too
                person = unique("pat")
                made = httpx.post(
                    f"{one.base_url}/api/v1/users",
                    json={"name": person, "role": "viewer", "password": "a good long one"},
                    headers=admin,
                )
                assert made.status_code == 201, made.text
                signed = httpx.post(
                    f"{one.base_url}/api/v1/auth/login",
                    json={"user": person, "password": "a good long one"},
                )
                session = signed.json()["token"]
                answer = httpx.get(f"{two.base_url}/api/v1/apps", headers=bearer(session))
                assert answer.status_code == 200, answer.text
                removed = httpx.delete(f"{one.base_url}/api/v1/users/{person}", headers=admin)
                assert removed.status_code == 200, removed.text
                assert _refused_within(two.base_url, session, 2.5) < 2.5


async def test_a_tenant_being_deleted_takes_no_new_deployment_nor_a_second_delete(
    own: RunningServer, http: httpx.AsyncClient
) -> None:
    admin = bearer(own.admin_token)
    name = unique("team")
    created = await http.post("/api/v1/tenants", json={"name": name}, headers=admin)
    assert created.status_code == 201, created.text
    token = created.json()["admin_token"]
    row = own.run(own.ctx.records.find_tenant(name))
    assert row is not None
    tenant_id = row.id
    digest = await upload_random(http, token)
    assert (await deploy(http, token, "first", digest, instances=0)).status_code == 201

    lock = sqlite3.connect(own.data_dir / "records.db", timeout=30, isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")  # the delete's purge waits for this write lock
    try:
        deleting = asyncio.create_task(
            http.delete(f"/api/v1/tenants/{name}?force=true", headers=admin)
        )
        await asyncio.sleep(1.0)  # the delete has stopped its apps and waits in the purge
        assert not deleting.done()
        late = asyncio.create_task(deploy(http, token, unique("late"), digest, instances=1))
        again = asyncio.create_task(
            http.delete(f"/api/v1/tenants/{name}?force=true", headers=admin)
        )
        await asyncio.sleep(1.0)
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    done, refused, second = await asyncio.gather(deleting, late, again)

    assert done.status_code == 200, done.text
    assert refused.status_code == 409, refused.text
    assert refused.json()["code"] == "conflict"
    assert "being deleted" in refused.json()["message"]
    assert second.status_code == 409, second.text
    assert "being deleted" in second.json()["message"]
    blueprints, _ = own.run(own.ctx.store.range("blueprints/"))
    assert not [kv.key for kv in blueprints if tenant_id.encode() in kv.value]
    assert own.run(own.ctx.records.find_tenant(name)) is None
