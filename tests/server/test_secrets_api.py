"""``/api/v1/secrets``: a tenant's named secrets against a real server: values go in,
never out (not in answers, the records database, logs or the audit trail), and
``tenant_secrets`` unseals the named ones of the caller's tenant only."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import httpx
import pytest
from cryptography.fernet import Fernet
from sqlalchemy import func, select, update

from aether.server.services.secrets import tenant_secrets
from aether.store.records.schema import SecretRow
from tests.support.api import bearer, unique
from tests.support.server import RunningServer, running_server

VALUE = "ghp_0123456789abcdefSECRETVALUE"


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(tmp_path_factory.mktemp("aether-secrets")) as running:
        yield running


@pytest.fixture
def http(srv: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=srv.base_url, timeout=30) as client:
        yield client


def _put(http: httpx.Client, token: str, name: str, value: str) -> httpx.Response:
    return http.put(f"/api/v1/secrets/{name}", json={"value": value}, headers=bearer(token))


def test_set_replace_list_and_remove_never_show_the_value(
    srv: RunningServer, http: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    tenant = unique("team")
    admin, viewer = srv.token("admin", tenant), srv.token("viewer", tenant)
    made = _put(http, admin, "GITHUB_TOKEN", VALUE)
    assert made.status_code == 201, made.text
    assert set(made.json()) == {"name", "created_at", "updated_at", "used_by"}
    replaced = _put(http, admin, "GITHUB_TOKEN", VALUE + "-2")
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["created_at"] == made.json()["created_at"]
    assert replaced.json()["updated_at"] >= made.json()["updated_at"]
    assert _put(http, admin, "b.other-1", "x").status_code == 201
    listed = http.get("/api/v1/secrets", headers=bearer(viewer))
    assert listed.status_code == 200, listed.text
    assert [s["name"] for s in listed.json()] == ["GITHUB_TOKEN", "b.other-1"]
    gone = http.delete("/api/v1/secrets/GITHUB_TOKEN", headers=bearer(admin))
    assert gone.status_code == 200 and gone.json() == {"name": "GITHUB_TOKEN", "deleted": True}
    again = http.delete("/api/v1/secrets/GITHUB_TOKEN", headers=bearer(admin))
    assert again.status_code == 404 and again.json()["code"] == "not_found"
    assert [s["name"] for s in http.get("/api/v1/secrets", headers=bearer(admin)).json()] == [
        "b.other-1"
    ]
    audit = http.get(
        "/api/v1/audit", params={"target": "secrets/GITHUB_TOKEN"}, headers=bearer(admin)
    )
    assert audit.status_code == 200, audit.text
    events = audit.json()["events"]
    assert [(e["action"], e["status"]) for e in events] == [
        ("DELETE /secrets/{name}", 404),
        ("DELETE /secrets/{name}", 200),
        ("PUT /secrets/{name}", 200),
        ("PUT /secrets/{name}", 201),
    ]
    everything = made.text + replaced.text + listed.text + gone.text + audit.text + caplog.text
    assert VALUE not in everything


def test_the_value_is_sealed_in_the_records_database(
    srv: RunningServer, http: httpx.Client
) -> None:
    name = unique("plain")
    assert _put(http, srv.token("admin", unique("team")), name, VALUE + name).status_code == 201
    data = b"".join(path.read_bytes() for path in sorted(srv.data_dir.glob("records.db*")))
    assert name.encode() in data and (VALUE + name).encode() not in data
    sealed = srv.run(_sealed(srv, name))
    assert sealed.startswith(f"v2:{srv.ctx.secrets.key_id}:")


async def _sealed(srv: RunningServer, name: str) -> str:
    async with srv.ctx.records.sessions() as session:
        found = await session.scalar(select(SecretRow.value).where(SecretRow.name == name))
        assert found is not None
        return str(found)


def test_tenant_secrets_unseals_the_named_ones_of_one_tenant(
    srv: RunningServer, http: httpx.Client
) -> None:
    mine, theirs = unique("team"), unique("team")
    assert _put(http, srv.token("admin", mine), "api-token", "mine-1").status_code == 201
    assert _put(http, srv.token("admin", mine), "unused", "mine-2").status_code == 201
    assert _put(http, srv.token("admin", theirs), "api-token", "theirs").status_code == 201
    assert _put(http, srv.token("admin", theirs), "only-theirs", "t2").status_code == 201
    tenant_id = srv.run(srv.ctx.records.tenant_id_of(mine))
    assert tenant_id is not None
    got = srv.run(tenant_secrets(srv.ctx, tenant_id, ["api-token", "only-theirs", "missing"]))
    assert got == {"api-token": "mine-1"}
    assert srv.run(tenant_secrets(srv.ctx, tenant_id, [])) == {}


def test_roles_and_another_tenant(srv: RunningServer, http: httpx.Client) -> None:
    tenant = unique("team")
    admin = srv.token("admin", tenant)
    assert _put(http, admin, "deploy-key", VALUE).status_code == 201
    for role in ("viewer", "operator"):
        token = srv.token(role, tenant)
        refused = _put(http, token, "deploy-key", "x")
        assert refused.status_code == 403 and refused.json()["code"] == "forbidden"
        removed = http.delete("/api/v1/secrets/deploy-key", headers=bearer(token))
        assert removed.status_code == 403
        assert http.get("/api/v1/secrets", headers=bearer(token)).status_code == 200
    assert http.get("/api/v1/secrets").status_code == 401
    other = srv.new_tenant()
    assert http.get("/api/v1/secrets", headers=bearer(other)).json() == []
    not_theirs = http.delete("/api/v1/secrets/deploy-key", headers=bearer(other))
    assert not_theirs.status_code == 404 and not_theirs.json()["code"] == "not_found"
    names = [s["name"] for s in http.get("/api/v1/secrets", headers=bearer(admin)).json()]
    assert names == ["deploy-key"]  # still there


@pytest.mark.parametrize(
    ("name", "body"),
    [
        ("ok-name", {"value": ""}),
        ("ok-name", {}),
        ("ok-name", {"value": "x" * (64 * 1024 + 1)}),
        ("-bad", {"value": "x"}),
        ("a" * 64, {"value": "x"}),
        ("has space", {"value": "x"}),
    ],
)
def test_bad_input_is_a_400_envelope(
    srv: RunningServer, http: httpx.Client, name: str, body: dict[str, str]
) -> None:
    answer = http.put(
        f"/api/v1/secrets/{name}", json=body, headers=bearer(srv.token("admin", "bad-input"))
    )
    assert answer.status_code == 400, answer.text
    assert answer.json()["code"] == "bad_request" and answer.json()["trace_id"]


def test_deleting_a_tenant_deletes_its_secrets(srv: RunningServer, http: httpx.Client) -> None:
    tenant = unique("team")
    made = http.post("/api/v1/tenants", json={"name": tenant}, headers=bearer(srv.admin_token))
    assert made.status_code == 201, made.text
    assert _put(http, made.json()["admin_token"], "k", VALUE).status_code == 201
    tenant_id = srv.run(srv.ctx.records.tenant_id_of(tenant))
    assert srv.run(_count(srv, tenant_id)) == 1
    gone = http.delete(f"/api/v1/tenants/{tenant}", headers=bearer(srv.admin_token))
    assert gone.status_code == 200, gone.text
    assert srv.run(_count(srv, tenant_id)) == 0


async def _count(srv: RunningServer, tenant_id: str | None) -> int:
    async with srv.ctx.records.sessions() as session:
        count = await session.scalar(
            select(func.count()).select_from(SecretRow).where(SecretRow.tenant_id == tenant_id)
        )
        return int(count or 0)


def test_rotating_the_key_rewraps_every_value_and_all_still_open(
    srv: RunningServer, http: httpx.Client
) -> None:
    team = unique("team")
    admin = srv.token("admin", team)
    # a value sealed before envelopes (v1, Fernet with the key line) is re-sealed too
    legacy = unique("legacy")
    assert _put(http, admin, legacy, "placeholder").status_code == 201
    srv.run(_set_sealed(srv, legacy, _fernet_v1(srv, "legacy-value")))
    names = [unique("rot") for _ in range(3)]
    for name in names:
        assert _put(http, admin, name, VALUE + name).status_code == 201
    before = srv.ctx.secrets.key_id
    refused = http.post("/api/v1/secrets:rotate-key", headers=bearer(admin))
    assert refused.status_code == 403, refused.text  # a tenant's admin is not the cluster's
    done = http.post("/api/v1/secrets:rotate-key", headers=bearer(srv.token("admin")))
    assert done.status_code == 200, done.text
    out = done.json()
    assert out["key_id"] != before and before in out["previous"] and out["remaining"] == {}
    assert out["rewrapped"] >= 4 and VALUE not in done.text
    for name in [legacy, *names]:
        assert srv.run(_sealed(srv, name)).startswith(f"v2:{out['key_id']}:")
    tenant_id = srv.run(srv.ctx.records.tenant_id_of(team))
    assert tenant_id is not None
    values = srv.run(tenant_secrets(srv.ctx, tenant_id, [legacy, *names]))
    assert values == {legacy: "legacy-value", **{n: VALUE + n for n in names}}
    assert len((srv.data_dir / "secrets.key").read_bytes().split()) == 1
    assert (srv.data_dir / "secrets.key.old").exists()


def _fernet_v1(srv: RunningServer, value: str) -> str:
    line = (srv.data_dir / "secrets.key").read_bytes().split()[0]
    return f"v1:{srv.ctx.secrets.key_id}:{Fernet(line).encrypt(value.encode()).decode()}"


async def _set_sealed(srv: RunningServer, name: str, sealed: str) -> None:
    async with srv.ctx.records.sessions() as session:
        await session.execute(update(SecretRow).where(SecretRow.name == name).values(value=sealed))
        await session.commit()
