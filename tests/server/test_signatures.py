"""Signed artifacts against a real server: keys, ``verified``, ``require_signature``."""

from __future__ import annotations

import os
from typing import Any

import httpx
import pytest

from aether.artifacts.signing import (
    Ed25519PrivateKey,
    fingerprint,
    generate_key,
    public_key_b64,
    sign_digest,
)
from aether.client import ApiClient
from aether.errors import SignatureInvalidError, SignatureRequiredError
from aether.store.records import DEFAULT_TENANT
from aether.store.records.schema import Artifact
from tests.support.api import (
    DIGEST_HEADER,
    assert_envelope,
    bearer,
    deploy,
    sha256_of,
    unique,
)
from tests.support.server import RunningServer

SIG = "X-Aether-Signature"
APP = "X-Aether-App"


async def register(
    http: httpx.AsyncClient, token: str, app: str, key: Ed25519PrivateKey, name: str = "laptop"
) -> httpx.Response:
    return await http.post(
        f"/api/v1/apps/{app}/public-keys",
        json={"public_key": public_key_b64(key), "name": name},
        headers=bearer(token),
    )


async def upload_signed(
    http: httpx.AsyncClient,
    token: str,
    *,
    app: str | None,
    key: Ed25519PrivateKey | None,
    data: bytes | None = None,
) -> dict[str, Any]:
    """Upload fresh bytes, signed by ``key`` for ``app``; the upload's answer."""
    data = data if data is not None else os.urandom(256)
    digest = sha256_of(data)
    headers = {**bearer(token), DIGEST_HEADER: digest}
    if key is not None:
        headers[SIG] = sign_digest(key, digest)
    if app is not None:
        headers[APP] = app
    response = await http.post("/api/v1/artifacts", content=data, headers=headers)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    assert body["digest"] == digest
    return body


async def require_signature(
    http: httpx.AsyncClient, token: str, app: str, value: bool = True
) -> None:
    response = await http.put(
        f"/api/v1/apps/{app}/settings", json={"require_signature": value}, headers=bearer(token)
    )
    assert response.status_code == 200, response.text
    assert response.json()["require_signature"] is value


def artifact_row(server: RunningServer, digest: str, tenant: str = DEFAULT_TENANT) -> Artifact:
    async def get() -> Artifact:
        row = await server.ctx.records.ensure_tenant(tenant)
        found = await server.ctx.records.get_artifact(row.id, digest)
        assert found is not None
        return found

    return server.run(get())


# -- keys ----------------------------------------------------------------------


async def test_register_list_and_delete_a_public_key(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    app, key = unique("keys"), generate_key()
    operator = server.token("operator")
    created = await register(http, operator, app, key)
    assert created.status_code == 201, created.text
    body = created.json()
    assert set(body) == {"id", "name", "public_key", "fingerprint", "created_at"}
    assert body["name"] == "laptop"
    assert body["public_key"] == public_key_b64(key)
    assert body["fingerprint"] == fingerprint(key)

    # registering a key creates the app (owned by the caller's tenant) before any deploy
    listed = await http.get(f"/api/v1/apps/{app}/public-keys", headers=bearer(operator))
    assert listed.status_code == 200
    assert listed.json() == [body]
    viewer = await http.get(
        f"/api/v1/apps/{app}/public-keys", headers=bearer(server.token("viewer"))
    )
    assert viewer.json() == [body]

    # the same key twice is a conflict; a name is optional
    assert_envelope(await register(http, operator, app, key, "again"), 409, "conflict")
    other = await http.post(
        f"/api/v1/apps/{app}/public-keys",
        json={"public_key": public_key_b64(generate_key())},
        headers=bearer(operator),
    )
    assert other.status_code == 201
    assert other.json()["name"].startswith("key-")

    deleted = await http.delete(
        f"/api/v1/apps/{app}/public-keys/{body['id']}", headers=bearer(operator)
    )
    assert deleted.status_code == 204
    listed = await http.get(f"/api/v1/apps/{app}/public-keys", headers=bearer(operator))
    assert [k["id"] for k in listed.json()] == [other.json()["id"]]
    assert_envelope(
        await http.delete(f"/api/v1/apps/{app}/public-keys/{body['id']}", headers=bearer(operator)),
        404,
        "not_found",
    )


@pytest.mark.parametrize(
    "public_key", ["not-base64!", "AAAA", "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFB"]
)
async def test_a_malformed_public_key_is_a_bad_request(
    server: RunningServer, http: httpx.AsyncClient, public_key: str
) -> None:
    response = await http.post(
        f"/api/v1/apps/{unique('keys')}/public-keys",
        json={"public_key": public_key, "name": "x"},
        headers=bearer(server.token("operator")),
    )
    assert_envelope(response, 400, "bad_request")


async def test_keys_of_an_unknown_app_are_not_found(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    response = await http.get(
        f"/api/v1/apps/{unique('nope')}/public-keys", headers=bearer(server.token("viewer"))
    )
    assert_envelope(response, 404, "not_found")


async def test_a_viewer_cannot_register_or_delete_keys(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    app = unique("keys")
    created = await register(http, server.token("operator"), app, generate_key())
    viewer = server.token("viewer")
    assert_envelope(await register(http, viewer, app, generate_key()), 403, "forbidden")
    assert_envelope(
        await http.delete(
            f"/api/v1/apps/{app}/public-keys/{created.json()['id']}", headers=bearer(viewer)
        ),
        403,
        "forbidden",
    )
    assert_envelope(
        await http.put(
            f"/api/v1/apps/{app}/settings", json={"require_signature": True}, headers=bearer(viewer)
        ),
        403,
        "forbidden",
    )


async def test_another_tenant_s_keys_on_an_app_of_the_name_are_its_own(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    """An app name is each tenant's own: B's keys and settings on its app of A's app's
    name are B's, and neither tenant sees the other's."""
    # a deployed app, and an app that exists only through its keys
    deployed = unique("owned")
    digest = (await upload_signed(http, server.admin_token, app=None, key=None))["digest"]
    assert (await deploy(http, server.admin_token, deployed, digest)).status_code == 201
    keyed = unique("owned")
    assert (await register(http, server.admin_token, keyed, generate_key())).status_code == 201

    tenant_b = server.new_tenant()
    for app in (deployed, keyed):
        added = await register(http, tenant_b, app, generate_key(), name="b-key")
        assert added.status_code == 201, added.text
        settings = await http.put(
            f"/api/v1/apps/{app}/settings",
            json={"require_signature": True},
            headers=bearer(tenant_b),
        )
        assert settings.status_code == 200, settings.text
        for token, names in ((tenant_b, ["b-key"]), (server.admin_token, [])):
            listed = await http.get(f"/api/v1/apps/{app}/public-keys", headers=bearer(token))
            assert [k["name"] for k in listed.json() if k["name"] == "b-key"] == names
        own = await http.get(f"/api/v1/apps/{app}/settings", headers=bearer(server.admin_token))
        assert own.json()["require_signature"] is False  # A's settings are A's


# -- uploads ---------------------------------------------------------------------


async def test_signed_upload_with_a_registered_key_is_verified_and_stored(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    app, key = unique("signed"), generate_key()
    operator = server.token("operator")
    assert (await register(http, operator, app, key)).status_code == 201
    body = await upload_signed(http, operator, app=app, key=key)
    assert body["verified"] is True
    row = artifact_row(server, body["digest"])
    assert row.signature == sign_digest(key, body["digest"])
    assert row.signed_by == fingerprint(key)


async def test_unsigned_and_unregistered_signatures_are_not_verified(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    app, key, stranger = unique("signed"), generate_key(), generate_key()
    operator = server.token("operator")
    assert (await register(http, operator, app, key)).status_code == 201

    unsigned = await upload_signed(http, operator, app=app, key=None)
    assert unsigned["verified"] is False
    assert artifact_row(server, unsigned["digest"]).signature is None

    foreign = await upload_signed(http, operator, app=app, key=stranger)
    assert foreign["verified"] is False
    row = artifact_row(server, foreign["digest"])
    assert row.signature == sign_digest(stranger, foreign["digest"])  # stored all the same
    assert row.signed_by is None

    no_app = await upload_signed(http, operator, app=None, key=key)
    assert no_app["verified"] is False  # without X-Aether-App there are no keys to try
    unknown_app = await upload_signed(http, operator, app=unique("nokeys"), key=key)
    assert unknown_app["verified"] is False


async def test_another_tenants_keys_verify_nothing_of_this_tenant(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    app, key = unique("theirs"), generate_key()
    tenant_b = server.new_tenant()
    assert (await register(http, tenant_b, app, key)).status_code == 201
    assert (await upload_signed(http, tenant_b, app=app, key=key))["verified"] is True
    mine = await upload_signed(http, server.token("operator"), app=app, key=key)
    assert mine["verified"] is False


@pytest.mark.parametrize("signature", ["%%% not base64 %%%", "c2hvcnQ=", "QUFB" * 30, ""])
async def test_a_garbage_signature_header_is_refused_and_nothing_is_stored(
    server: RunningServer, http: httpx.AsyncClient, signature: str
) -> None:
    data = os.urandom(300)
    digest = sha256_of(data)
    token = server.token("operator")
    response = await http.post(
        "/api/v1/artifacts",
        content=data,
        headers={**bearer(token), DIGEST_HEADER: digest, SIG: signature, APP: "some-app"},
    )
    assert_envelope(response, 400, "signature_invalid")
    head = await http.head(f"/api/v1/artifacts/{digest}", headers=bearer(token))
    assert head.status_code == 404


async def test_a_later_unverified_signature_never_replaces_a_verified_one(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    app, key = unique("signed"), generate_key()
    operator = server.token("operator")
    assert (await register(http, operator, app, key)).status_code == 201
    data = os.urandom(200)
    first = await upload_signed(http, operator, app=app, key=key, data=data)
    again = await upload_signed(http, operator, app=app, key=generate_key(), data=data)
    assert (first["verified"], again["verified"], again["duplicate"]) == (True, False, True)
    assert artifact_row(server, first["digest"]).signed_by == fingerprint(key)


async def test_a_signature_can_be_attached_to_an_artifact_already_stored(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    app, key = unique("attach"), generate_key()
    operator = server.token("operator")
    assert (await register(http, operator, app, key)).status_code == 201
    digest = (await upload_signed(http, operator, app=app, key=None))["digest"]
    response = await http.put(
        f"/api/v1/artifacts/{digest}/signature",
        headers={**bearer(operator), SIG: sign_digest(key, digest), APP: app},
    )
    assert response.status_code == 200, response.text
    assert response.json()["verified"] is True
    assert artifact_row(server, digest).signed_by == fingerprint(key)

    missing = sha256_of(os.urandom(8))
    assert_envelope(
        await http.put(
            f"/api/v1/artifacts/{missing}/signature",
            headers={**bearer(operator), SIG: sign_digest(key, missing), APP: app},
        ),
        404,
        "not_found",
    )
    assert_envelope(
        await http.put(f"/api/v1/artifacts/{digest}/signature", headers=bearer(operator)),
        400,
        "bad_request",
    )
    # another tenant cannot sign this tenant's artifact
    assert_envelope(
        await http.put(
            f"/api/v1/artifacts/{digest}/signature",
            headers={**bearer(server.new_tenant()), SIG: sign_digest(key, digest), APP: app},
        ),
        404,
        "not_found",
    )


# -- settings and deploys --------------------------------------------------------


async def test_settings_are_validated_and_changed_only_where_sent(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    app = unique("settings")
    operator = server.token("operator")
    path = f"/api/v1/apps/{app}/settings"
    first = await http.put(path, json={"retain_deployments": 5}, headers=bearer(operator))
    assert first.status_code == 200, first.text
    assert first.json() == {
        "app": app,
        "require_signature": False,
        "require_provenance": False,
        "retain_deployments": 5,
    }
    second = await http.put(path, json={"require_signature": True}, headers=bearer(operator))
    assert second.json() == {
        "app": app,
        "require_signature": True,
        "require_provenance": False,
        "retain_deployments": 5,
    }
    admin = await http.put(
        path, json={"retain_deployments": None}, headers=bearer(server.token("admin"))
    )
    assert admin.json() == {
        "app": app,
        "require_signature": True,
        "require_provenance": False,
        "retain_deployments": None,
    }
    read = await http.get(path, headers=bearer(server.token("viewer")))
    assert read.json() == admin.json()
    for bad in (
        {"retain_deployments": 0},
        {"require_signature": "maybe"},
        {"require_provenance": "maybe"},
        {"other": 1},
    ):
        assert_envelope(
            await http.put(path, json=bad, headers=bearer(operator)), 400, "bad_request"
        )


async def test_require_signature_refuses_unsigned_and_foreign_and_accepts_signed(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    app, key = unique("strict"), generate_key()
    operator = server.token("operator")
    assert (await register(http, operator, app, key)).status_code == 201
    await require_signature(http, operator, app)

    unsigned = (await upload_signed(http, operator, app=app, key=None))["digest"]
    foreign = (await upload_signed(http, operator, app=app, key=generate_key()))["digest"]
    signed = (await upload_signed(http, operator, app=app, key=key))["digest"]

    assert_envelope(await deploy(http, operator, app, unsigned), 400, "signature_required")
    assert_envelope(await deploy(http, operator, app, foreign), 400, "signature_invalid")
    # a refused deploy leaves nothing behind, not even with an idempotency key
    assert_envelope(
        await deploy(http, operator, app, unsigned, key=unique("idem")), 400, "signature_required"
    )
    listed = await http.get(f"/api/v1/apps/{app}/deployments", headers=bearer(operator))
    assert listed.json() == []

    accepted = await deploy(http, operator, app, signed)
    assert accepted.status_code == 201, accepted.text
    assert accepted.json()["version"] == 1

    # turned off, the unsigned one deploys
    await require_signature(http, operator, app, False)
    assert (await deploy(http, operator, app, unsigned)).status_code == 201


async def test_deleting_the_key_makes_an_accepted_artifact_refused_at_the_next_deploy(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    app, key = unique("revoke"), generate_key()
    operator = server.token("operator")
    created = (await register(http, operator, app, key)).json()
    await require_signature(http, operator, app)
    first = (await upload_signed(http, operator, app=app, key=key))["digest"]
    second = (await upload_signed(http, operator, app=app, key=key))["digest"]
    assert (await deploy(http, operator, app, first)).status_code == 201
    assert (await deploy(http, operator, app, second)).status_code == 201

    deleted = await http.delete(
        f"/api/v1/apps/{app}/public-keys/{created['id']}", headers=bearer(operator)
    )
    assert deleted.status_code == 204
    assert_envelope(await deploy(http, operator, app, second), 400, "signature_invalid")
    rollback = await http.post(
        f"/api/v1/apps/{app}/rollback", json={"version": 1}, headers=bearer(operator)
    )
    assert_envelope(rollback, 400, "signature_invalid")

    # registering the key again (it was verified at upload; re-verified now) lets it through
    assert (await register(http, operator, app, key)).status_code == 201
    rollback = await http.post(
        f"/api/v1/apps/{app}/rollback", json={"version": 1}, headers=bearer(operator)
    )
    assert rollback.status_code == 201, rollback.text
    assert rollback.json()["rollback_of"] == 1


async def test_a_key_added_after_the_upload_verifies_at_deploy_time(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    app, key = unique("late"), generate_key()
    operator = server.token("operator")
    await require_signature(http, operator, app)
    upload = await upload_signed(http, operator, app=app, key=key)
    assert upload["verified"] is False  # no key registered yet
    assert_envelope(await deploy(http, operator, app, upload["digest"]), 400, "signature_invalid")
    assert (await register(http, operator, app, key)).status_code == 201
    assert (await deploy(http, operator, app, upload["digest"])).status_code == 201


async def test_the_client_speaks_the_signing_api_and_raises_the_signature_errors(
    server: RunningServer, tmp_path: Any
) -> None:
    app, key = unique("client"), generate_key()
    archive = tmp_path / "artifact.bin"
    archive.write_bytes(os.urandom(400))
    digest = sha256_of(archive.read_bytes())
    async with ApiClient(server.base_url, server.token("operator")) as client:
        added = await client.register_public_key(app, public_key_b64(key), name="ci")
        assert added.fingerprint == fingerprint(key)
        assert [k.id for k in await client.list_public_keys(app)] == [added.id]
        settings = await client.app_settings(app, require_signature=True, retain_deployments=3)
        assert (settings.require_signature, settings.retain_deployments) == (True, 3)
        assert await client.app_settings(app) == settings

        answer = await client.upload_artifact(archive, digest)
        assert answer["verified"] is False
        spec = {"name": app, "start": "python3 -m http.server"}
        from aether.model.app import AppSpec

        with pytest.raises(SignatureRequiredError) as required:
            await client.create_deployment(app, digest, AppSpec.model_validate(spec))
        assert required.value.code == "signature_required"
        assert required.value.status == 400

        signed = await client.sign_artifact(digest, sign_digest(generate_key(), digest), app)
        assert signed["verified"] is False
        with pytest.raises(SignatureInvalidError):
            await client.create_deployment(app, digest, AppSpec.model_validate(spec))

        answer = await client.upload_artifact(
            archive, digest, signature=sign_digest(key, digest), app=app
        )
        assert (answer["verified"], answer["duplicate"]) == (True, True)
        deployment = await client.create_deployment(app, digest, AppSpec.model_validate(spec))
        assert deployment.version == 1

        await client.delete_public_key(app, added.id)
        assert await client.list_public_keys(app) == []


# -- reading a signature back ---------------------------------------------------


async def test_a_stored_signature_is_read_back_by_a_viewer_of_its_tenant(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    app, key = unique("sigread"), generate_key()
    operator = server.token("operator")
    assert (await register(http, operator, app, key)).status_code == 201
    signed = await upload_signed(http, operator, app=app, key=key)
    unsigned = await upload_signed(http, operator, app=None, key=None)
    viewer = bearer(server.token("viewer"))

    answer = await http.get(f"/api/v1/artifacts/{signed['digest']}/signature", headers=viewer)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "digest": signed["digest"],
        "signature": sign_digest(key, signed["digest"]),
        "signed_by": fingerprint(key),
    }
    answer = await http.get(f"/api/v1/artifacts/{unsigned['digest']}/signature", headers=viewer)
    assert answer.json() == {"digest": unsigned["digest"], "signature": None, "signed_by": None}

    other = bearer(server.new_tenant())
    answer = await http.get(f"/api/v1/artifacts/{signed['digest']}/signature", headers=other)
    assert_envelope(answer, 404, "not_found")
    answer = await http.get("/api/v1/artifacts/not-a-digest/signature", headers=viewer)
    assert_envelope(answer, 400, "invalid_digest")
