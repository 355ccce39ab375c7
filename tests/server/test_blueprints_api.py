"""``/api/v1/blueprint-files``: blueprint files applied to several deployed apps in one go,
against a real server (its state store holds the apps' ``blueprints/{app}``)."""

from __future__ import annotations

from typing import Any

import httpx

from aether.model.cluster import Blueprint
from aether.model.names import cluster_name
from tests.support.api import assert_envelope, audit_events, bearer, deploy, unique, upload_random
from tests.support.server import RunningServer

TOML = "application/toml"


async def _deployed(http: httpx.AsyncClient, token: str, *apps: str, instances: int = 1) -> None:
    digest = await upload_random(http, token)
    for app in apps:
        made = await deploy(http, token, app, digest, instances=instances)
        assert made.status_code == 201, made.text


def _blueprint(server: RunningServer, tenant: str, app: str) -> Blueprint:
    kv = server.run(server.ctx.store.get(f"blueprints/{cluster_name(app, tenant)}"))
    assert kv is not None
    return Blueprint.model_validate_json(kv.value)


def _file(name: str | None, apps: dict[str, dict[str, int]]) -> str:
    lines = [f'name = "{name}"'] if name else []
    for app, fields in apps.items():
        lines.append(f"[apps.{app}]")
        lines += [f"{k} = {v}" for k, v in fields.items()]
    return "\n".join(lines) + "\n"


async def _apply(
    http: httpx.AsyncClient, token: str, name: str, text: str, content_type: str = TOML
) -> httpx.Response:
    return await http.put(
        f"/api/v1/blueprint-files/{name}",
        content=text.encode(),
        headers={**bearer(token), "content-type": content_type},
    )


async def test_apply_sets_every_app_s_count_and_keeps_the_file(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    tenant = unique("team")
    operator = server.token("operator", tenant)
    catalog, cart = unique("catalog"), unique("cart")
    await _deployed(http, operator, catalog, cart)
    text = _file("shop", {catalog: {"instances": 3}, cart: {"instances": 2}})
    applied = await _apply(http, operator, "shop", text)
    assert applied.status_code == 200, applied.text
    body = applied.json()
    assert body["name"] == "shop" and body["applied_by"].startswith(("token:", "user:"))
    assert body["apps"][catalog] == {
        "instances": 3,
        "version": None,
        "version_now": 1,
        "instances_desired": 3,
        "instances_active": 0,
    }
    assert _blueprint(server, tenant, catalog).instances == 3
    assert _blueprint(server, tenant, cart).instances == 2
    # both in one transaction: the two blueprints and the record share a revision
    kvs = [
        server.run(server.ctx.store.get(f"blueprints/{cluster_name(a, tenant)}"))
        for a in (catalog, cart)
    ]
    assert len({kv.mod_revision for kv in kvs if kv is not None}) == 1

    viewer = server.token("viewer", tenant)
    listed = await http.get("/api/v1/blueprint-files", headers=bearer(viewer))
    assert listed.status_code == 200, listed.text
    assert [b["name"] for b in listed.json()] == ["shop"]
    got = await http.get("/api/v1/blueprint-files/shop", headers=bearer(viewer))
    assert got.status_code == 200 and got.json()["apps"][cart]["instances"] == 2
    events = await http.get("/api/v1/apps/" + catalog + "/deployments", headers=bearer(viewer))
    assert events.json()[0]["instances"] == 3
    audit = await audit_events(http, server.token("admin", tenant), target="blueprint-files/shop")
    applied_events = [(e["action"], e["status"]) for e in audit]
    assert applied_events == [("PUT /blueprint-files/{blueprint}", 200)]

    # the same file again (YAML this time) changes nothing, a smaller one scales down
    yaml_text = f"name: shop\napps:\n  {catalog}: {{instances: 3}}\n  {cart}: {{instances: 1}}\n"
    again = await _apply(http, operator, "shop", yaml_text, "application/yaml")
    assert again.status_code == 200, again.text
    assert _blueprint(server, tenant, cart).instances == 1
    as_json = await http.put(
        "/api/v1/blueprint-files/shop",
        json={"apps": {catalog: {"instances": 1}}},
        headers=bearer(operator),
    )
    assert as_json.status_code == 200, as_json.text
    assert _blueprint(server, tenant, catalog).instances == 1
    assert set(as_json.json()["apps"]) == {catalog}  # the record is the file last applied


async def test_an_app_not_deployed_is_a_400_and_nothing_changes(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    tenant = unique("team")
    operator = server.token("operator", tenant)
    catalog = unique("catalog")
    await _deployed(http, operator, catalog)
    text = _file("shop", {catalog: {"instances": 4}, "ghost-app": {"instances": 1}})
    refused = await _apply(http, operator, "shop", text)
    assert_envelope(refused, 400, "bad_request")
    assert "ghost-app" in refused.json()["message"] and catalog not in refused.json()["message"]
    assert _blueprint(server, tenant, catalog).instances == 1
    missing = await http.get("/api/v1/blueprint-files/shop", headers=bearer(operator))
    assert_envelope(missing, 404, "not_found")
    # another tenant's deployed app is not the caller's
    other = server.new_tenant()
    theirs = await _apply(http, other, "shop", _file(None, {catalog: {"instances": 9}}))
    assert_envelope(theirs, 400, "bad_request")
    assert _blueprint(server, tenant, catalog).instances == 1


async def test_bad_files_are_400_envelopes(server: RunningServer, http: httpx.AsyncClient) -> None:
    operator = server.token("operator", unique("team"))
    bad: list[tuple[str, str]] = [
        ("name = \n[apps", TOML),  # not TOML
        ("apps: [unclosed", "application/yaml"),  # not YAML
        ("{not json", "application/json"),
        ("[1, 2]", "application/json"),  # not a table
        ('name = "shop"\n', TOML),  # no apps
        ('name = "other"\n[apps.a]\ninstances = 1\n', TOML),  # another blueprint's name
        ("[apps.a]\ninstances = -1\n", TOML),
        ("[apps.a]\ninstances = 1\nversion = 0\n", TOML),
        ("[apps.a]\ninstances = 1\nreplicas = 2\n", TOML),  # unknown field
        ("[apps.Not_An_App]\ninstances = 1\n", TOML),
        ("[apps.a]\n", TOML),  # no count
    ]
    for text, content_type in bad:
        refused = await _apply(http, operator, "shop", text, content_type)
        assert_envelope(refused, 400, "bad_request")
    not_utf8 = await http.put(
        "/api/v1/blueprint-files/shop",
        content=b"\xff\xfe",
        headers={**bearer(operator), "content-type": TOML},
    )
    assert_envelope(not_utf8, 400, "bad_request")
    named = await _apply(http, operator, "Bad_Name", "[apps.a]\ninstances = 1\n")
    assert_envelope(named, 400, "bad_request")


async def test_a_pinned_version_rolls_back_once(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    tenant = unique("team")
    operator = server.token("operator", tenant)
    app = unique("pricing")
    await _deployed(http, operator, app)
    await _deployed(http, operator, app)  # v2
    assert _blueprint(server, tenant, app).version == 2
    text = _file("pin", {app: {"instances": 2, "version": 1}})
    applied = await _apply(http, operator, "pin", text)
    assert applied.status_code == 200, applied.text
    bp = _blueprint(server, tenant, app)
    assert (bp.version, bp.instances) == (3, 2)
    listed = await http.get(f"/api/v1/apps/{app}/deployments", headers=bearer(operator))
    deployments = listed.json()
    newest = max(deployments, key=lambda d: d["version"])
    assert newest["rollback_of"] == 1
    assert applied.json()["apps"][app]["version_now"] == 3
    again = await _apply(http, operator, "pin", text)  # runs v1's build already: no v4
    assert again.status_code == 200 and _blueprint(server, tenant, app).version == 3
    pin_nine = _file(None, {app: {"instances": 1, "version": 9}})
    unknown = await _apply(http, operator, "pin", pin_nine)
    assert_envelope(unknown, 400, "bad_request")
    assert "no version 9" in unknown.json()["message"]
    assert _blueprint(server, tenant, app).instances == 2


async def test_roles_other_tenants_and_rm(server: RunningServer, http: httpx.AsyncClient) -> None:
    tenant = unique("team")
    admin = server.token("admin", tenant)
    apps = [unique("a"), unique("b")]
    await _deployed(http, admin, *apps, instances=2)
    text = _file("pair", {a: {"instances": 3} for a in apps})
    viewer = server.token("viewer", tenant)
    assert_envelope(await _apply(http, viewer, "pair", text), 403, "forbidden")
    assert (await _apply(http, admin, "pair", text)).status_code == 200

    other = server.new_tenant()
    theirs = await http.get("/api/v1/blueprint-files/pair", headers=bearer(other))
    nobody = await http.get("/api/v1/blueprint-files/nobody", headers=bearer(other))
    assert_envelope(theirs, 404, "not_found")
    assert theirs.json()["message"] == nobody.json()["message"].replace("nobody", "pair")
    gone = await http.delete("/api/v1/blueprint-files/pair", headers=bearer(other))
    assert_envelope(gone, 404, "not_found")
    assert (await http.get("/api/v1/blueprint-files", headers=bearer(other))).json() == []
    refused = await http.delete("/api/v1/blueprint-files/pair", headers=bearer(viewer))
    assert_envelope(refused, 403, "forbidden")

    operator = server.token("operator", tenant)
    forgot = await http.delete("/api/v1/blueprint-files/pair", headers=bearer(operator))
    assert forgot.status_code == 200, forgot.text
    assert forgot.json() == {"name": "pair", "deleted": True, "scaled_to_zero": []}
    assert all(_blueprint(server, tenant, a).instances == 3 for a in apps)
    assert (await http.get("/api/v1/blueprint-files", headers=bearer(operator))).json() == []

    assert (await _apply(http, operator, "pair", text)).status_code == 200
    zeroed = await http.delete(
        "/api/v1/blueprint-files/pair", params={"scale_to_zero": "true"}, headers=bearer(operator)
    )
    assert zeroed.status_code == 200, zeroed.text
    assert zeroed.json()["scaled_to_zero"] == sorted(apps)
    assert all(_blueprint(server, tenant, a).instances == 0 for a in apps)
    again = await http.delete("/api/v1/blueprint-files/pair", headers=bearer(operator))
    assert_envelope(again, 404, "not_found")
    audit = await audit_events(http, admin, target="blueprint-files/pair")
    removed_events = [(e["action"], e["status"]) for e in audit]
    assert ("DELETE /blueprint-files/{blueprint}", 200) in removed_events


async def test_quotas_apply_as_for_scale(server: RunningServer, http: httpx.AsyncClient) -> None:
    tenant = unique("team")
    operator = server.token("operator", tenant)
    apps = [unique("a"), unique("b")]
    await _deployed(http, operator, *apps)
    limited = await http.put(
        f"/api/v1/tenants/{tenant}/limits",
        json={"instances": 4},
        headers=bearer(server.admin_token),
    )
    assert limited.status_code == 200, limited.text
    over = await _apply(http, operator, "big", _file(None, {a: {"instances": 3} for a in apps}))
    body: dict[str, Any] = over.json()
    assert over.status_code == 403 and body["code"] == "quota_exceeded", over.text
    assert all(_blueprint(server, tenant, a).instances == 1 for a in apps)
    fits = await _apply(http, operator, "big", _file(None, {a: {"instances": 2} for a in apps}))
    assert fits.status_code == 200, fits.text


async def test_deleting_the_tenant_forgets_its_blueprint_files(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    tenant = unique("team")
    admin = server.token("admin", tenant)
    app = unique("catalog")
    await _deployed(http, admin, app)
    assert (
        await _apply(http, admin, "shop", _file(None, {app: {"instances": 2}}))
    ).status_code == 200
    tenant_id = server.run(server.ctx.records.tenant_id_of(tenant))
    assert tenant_id is not None
    key = f"blueprint-files/{tenant_id}/shop"
    assert server.run(server.ctx.store.get(key)) is not None
    gone = await http.delete(
        f"/api/v1/tenants/{tenant}", params={"force": "true"}, headers=bearer(server.admin_token)
    )
    assert gone.status_code == 200, gone.text
    assert server.run(server.ctx.store.get(key)) is None
