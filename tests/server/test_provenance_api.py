"""Provenance statements against a real server: arrival checks, ``require_provenance``,
the stored statement and ``GET /artifacts/{digest}/verification``."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

import httpx

from aether.artifacts.provenance import (
    BuildFacts,
    SourceFacts,
    make_statement,
    sbom_digest,
    sign_statement,
)
from aether.artifacts.signing import Ed25519PrivateKey, fingerprint, generate_key, sign_digest
from tests.server.test_signatures import artifact_row, register, upload_signed
from tests.support.api import assert_envelope, bearer, deploy, spec_for, unique
from tests.support.server import RunningServer

SBOM = {"bomFormat": "CycloneDX", "specVersion": "1.5", "components": [{"name": "left-pad"}]}


def envelope(
    digest: str, key: Ed25519PrivateKey, app: str, sbom: dict[str, Any] | None = SBOM
) -> dict[str, Any]:
    now = datetime.now(UTC)
    build = BuildFacts(
        app=app,
        runtime="node",
        command=("aether", "deploy", "."),
        builder_version="test",
        started_on=now,
        finished_on=now,
        sbom_digest=sbom_digest(sbom) if sbom is not None else None,
    )
    source = SourceFacts(tree_digest="sha256:" + "00" * 32, git_commit="f" * 40, git_dirty=False)
    return sign_statement(make_statement(digest, source, build), key)


async def put(
    http: httpx.AsyncClient, token: str, digest: str, body: dict[str, Any], app: str
) -> httpx.Response:
    return await http.put(
        f"/api/v1/artifacts/{digest}/provenance",
        json=body,
        headers={**bearer(token), "X-Aether-App": app},
    )


async def require(http: httpx.AsyncClient, token: str, app: str, value: bool = True) -> None:
    response = await http.put(
        f"/api/v1/apps/{app}/settings", json={"require_provenance": value}, headers=bearer(token)
    )
    assert response.status_code == 200, response.text
    assert response.json()["require_provenance"] is value


async def test_require_provenance_refuses_without_and_accepts_with_a_verified_statement(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    app, key = unique("prov"), generate_key()
    operator = server.token("operator")
    assert (await register(http, operator, app, key)).status_code == 201
    await require(http, operator, app)
    digest = (await upload_signed(http, operator, app=app, key=key))["digest"]

    # signed, but no statement: refused, the way require_signature refuses
    refused = assert_envelope(await deploy(http, operator, app, digest), 400, "provenance_required")
    assert app in refused["message"] and digest in refused["message"]

    # a statement signed by a key the app does not trust: stored, unverified, refused
    stranger = generate_key()
    answer = await put(http, operator, digest, envelope(digest, stranger, app), app)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"digest": digest, "verified": False, "signed_by": None}
    assert_envelope(await deploy(http, operator, app, digest), 400, "provenance_invalid")

    # the app's own key: verified, and the deployment goes through
    good = envelope(digest, key, app)
    answer = await put(http, operator, digest, good, app)
    assert answer.json() == {"digest": digest, "verified": True, "signed_by": fingerprint(key)}
    assert (await deploy(http, operator, app, digest)).status_code == 201, good
    # an unverified statement never replaces a verified one
    await put(http, operator, digest, envelope(digest, stranger, app), app)
    assert artifact_row(server, digest).provenance == good

    stored = await http.get(
        f"/api/v1/artifacts/{digest}/provenance", headers=bearer(server.token("viewer"))
    )
    assert stored.status_code == 200, stored.text
    body = stored.json()
    assert body["envelope"] == good and body["signed_by"] == fingerprint(key)
    assert body["statement"]["subject"][0]["digest"] == {"sha256": digest.removeprefix("sha256:")}

    # switched off: an artifact without provenance deploys again
    await require(http, operator, app, False)
    plain = (await upload_signed(http, operator, app=app, key=key))["digest"]
    assert (await deploy(http, operator, app, plain)).status_code == 201


async def test_a_statement_for_another_digest_is_refused_and_nothing_is_stored(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    app, key = unique("prov"), generate_key()
    operator = server.token("operator")
    assert (await register(http, operator, app, key)).status_code == 201
    digest = (await upload_signed(http, operator, app=app, key=key))["digest"]
    other = (await upload_signed(http, operator, app=app, key=key))["digest"]

    # a valid statement, validly signed by the app's key, about another artifact
    error = assert_envelope(
        await put(http, operator, digest, envelope(other, key, app), app),
        400,
        "provenance_mismatch",
    )
    assert other in error["message"] and digest in error["message"]
    assert artifact_row(server, digest).provenance is None

    # nor is anything else that is not a DSSE envelope of an in-toto statement
    bad = envelope(digest, key, app)
    bad["payloadType"] = "application/json"
    assert_envelope(await put(http, operator, digest, bad, app), 400, "provenance_invalid")
    assert artifact_row(server, digest).provenance is None
    # an artifact not stored (or another tenant's) is not found
    missing = "sha256:" + os.urandom(32).hex()
    assert_envelope(
        await put(http, operator, missing, envelope(missing, key, app), app), 404, "not_found"
    )
    other_tenant = server.new_tenant()
    assert_envelope(
        await put(http, other_tenant, digest, envelope(digest, key, app), app), 404, "not_found"
    )
    for path in ("provenance", "verification"):
        assert_envelope(
            await http.get(f"/api/v1/artifacts/{digest}/{path}", headers=bearer(other_tenant)),
            404,
            "not_found",
        )


def _checks(body: dict[str, Any]) -> dict[str, bool]:
    return {c["name"]: c["ok"] for c in body["checks"]}


async def test_verification_checks_digest_signature_provenance_and_sbom(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    app, key = unique("prov"), generate_key()
    operator = server.token("operator")
    assert (await register(http, operator, app, key)).status_code == 201
    digest = (await upload_signed(http, operator, app=app, key=key))["digest"]
    viewer = server.token("viewer")
    url = f"/api/v1/artifacts/{digest}/verification"

    first = (await http.get(url, headers=bearer(viewer))).json()
    assert first["ok"] is False
    assert _checks(first) == {"digest": True, "signature": True, "provenance": False, "sbom": False}

    assert (await put(http, operator, digest, envelope(digest, key, app), app)).status_code == 200
    created = await http.post(
        f"/api/v1/apps/{app}/deployments",
        json={"digest": digest, "spec": spec_for(app), "sbom": SBOM},
        headers=bearer(operator),
    )
    assert created.status_code == 201, created.text
    verdict = (await http.get(url, headers=bearer(viewer))).json()
    assert verdict["ok"] is True, verdict
    assert verdict["digest"] == digest
    assert [c["name"] for c in verdict["checks"]] == ["digest", "signature", "provenance", "sbom"]

    # an SBOM that is not the one the statement records fails the sbom check
    other = (await upload_signed(http, operator, app=app, key=key))["digest"]
    await put(http, operator, other, envelope(other, key, app, sbom={"bomFormat": "x"}), app)
    await http.post(
        f"/api/v1/apps/{app}/deployments",
        json={"digest": other, "spec": spec_for(app), "sbom": SBOM},
        headers=bearer(operator),
    )
    mixed = await http.get(f"/api/v1/artifacts/{other}/verification", headers=bearer(viewer))
    assert _checks(mixed.json()) == {
        "digest": True,
        "signature": True,
        "provenance": True,
        "sbom": False,
    }

    # the tenant's key deleted: signature and provenance no longer verify
    keys = (await http.get(f"/api/v1/apps/{app}/public-keys", headers=bearer(viewer))).json()
    await http.delete(f"/api/v1/apps/{app}/public-keys/{keys[0]['id']}", headers=bearer(operator))
    gone = (await http.get(url, headers=bearer(viewer))).json()
    assert _checks(gone) == {"digest": True, "signature": False, "provenance": False, "sbom": False}
    assert sign_digest(key, digest)  # (the signature itself is unchanged)
