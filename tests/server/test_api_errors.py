"""Every error code the server produces: its status and the envelope shape."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.api import (
    DIGEST_HEADER,
    MAX_ARTIFACT_BYTES,
    assert_envelope,
    bearer,
    deploy,
    sha256_of,
    spec_for,
    unique,
    upload,
    upload_random,
)
from tests.support.server import RunningServer

UNKNOWN_DIGEST = "sha256:" + "0" * 64

# -- bad_request 400 ----------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/v1/apps/{app}/deployments", b'{"digest": "sha256:'),
        ("/api/v1/apps/{app}/deployments", b"not json at all"),
        ("/api/v1/apps/{app}/scale", b"{instances: 2}"),
        ("/api/v1/apps/{app}/rollback", b"[1,"),
    ],
)
async def test_invalid_json_body_is_bad_request(
    server: RunningServer, http: httpx.AsyncClient, path: str, body: bytes
) -> None:
    response = await http.post(
        path.format(app=unique("badjson")),
        content=body,
        headers={**bearer(server.admin_token), "Content-Type": "application/json"},
    )
    err = assert_envelope(response, 400, "bad_request")
    assert "invalid request" in err["message"]


async def test_body_of_the_wrong_shape_is_bad_request(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    app = unique("shape")
    response = await http.post(
        f"/api/v1/apps/{app}/deployments",
        json={"digest": UNKNOWN_DIGEST, "spec": {"name": app}},  # spec.start is required
        headers=bearer(server.admin_token),
    )
    err = assert_envelope(response, 400, "bad_request")
    assert "start" in err["message"]


@pytest.mark.parametrize(
    "bad",
    [
        "sha256:abc",
        "SHA256:" + "a" * 64,  # the prefix is lower case
        "md5:" + "0" * 32,
        "0" * 63,  # bare hex, one digit short
        "sha256:" + "g" * 64,
        "garbage",
    ],
)
async def test_bad_digest_format_is_invalid_digest_everywhere(
    server: RunningServer, http: httpx.AsyncClient, bad: str
) -> None:
    """A malformed digest is a 400 ``invalid_digest``: in the header, a path and a body."""
    auth = bearer(server.admin_token)
    got = await http.get(f"/api/v1/artifacts/{bad}", headers=auth)
    assert_envelope(got, 400, "invalid_digest")

    head = await http.head(f"/api/v1/artifacts/{bad}", headers=auth)
    assert head.status_code == 400
    assert head.headers["x-trace-id"]

    snapshot = await http.get(f"/api/v1/snapshots/{bad}", headers=auth)
    assert_envelope(snapshot, 400, "invalid_digest")

    up = await http.post(
        "/api/v1/artifacts", content=b"payload", headers={**auth, DIGEST_HEADER: bad}
    )
    err = assert_envelope(up, 400, "invalid_digest")
    assert "64 hex digits" in err["message"]

    app = unique("baddigest")
    dep = await deploy(http, server.admin_token, app, bad)
    assert_envelope(dep, 400, "invalid_digest")
    # nothing was recorded for the refused deployment
    assert_envelope(await http.get(f"/api/v1/apps/{app}", headers=auth), 404, "not_found")


async def test_upload_without_digest_header_is_missing_digest(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    response = await http.post(
        "/api/v1/artifacts", content=b"some bytes", headers=bearer(server.admin_token)
    )
    err = assert_envelope(response, 400, "missing_digest")
    assert DIGEST_HEADER in err["message"]


async def test_bare_and_upper_case_hex_digests_are_accepted_and_answered_canonically(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    """The seed's header is the hex sha256: bare hex works for upload, HEAD, GET and deploy."""
    auth = bearer(server.admin_token)
    data = os.urandom(2048)
    canonical = sha256_of(data)
    bare = canonical.removeprefix("sha256:")
    up = await http.post("/api/v1/artifacts", content=data, headers={**auth, DIGEST_HEADER: bare})
    assert up.status_code == 201, up.text
    assert up.json()["digest"] == canonical

    for spelling in (bare, bare.upper(), "sha256:" + bare.upper(), canonical):
        head = await http.head(f"/api/v1/artifacts/{spelling}", headers=auth)
        assert head.status_code == 200, (spelling, head.status_code)
        assert head.headers["content-length"] == str(len(data))
        assert head.headers[DIGEST_HEADER] == canonical
        got = await http.get(f"/api/v1/artifacts/{spelling}", headers=auth)
        assert got.status_code == 200 and got.content == data

    again = await http.post(
        "/api/v1/artifacts", content=data, headers={**auth, DIGEST_HEADER: bare.upper()}
    )
    assert again.status_code == 201 and again.json() == {**up.json(), "duplicate": True}

    dep = await deploy(http, server.admin_token, unique("barehex"), bare)
    assert dep.status_code == 201, dep.text
    assert dep.json()["digest"] == canonical


async def test_bare_hex_claim_of_other_bytes_is_digest_mismatch(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    data = os.urandom(1024)
    claimed = sha256_of(os.urandom(1024)).removeprefix("sha256:")
    response = await http.post(
        "/api/v1/artifacts",
        content=data,
        headers={**bearer(server.admin_token), DIGEST_HEADER: claimed},
    )
    err = assert_envelope(response, 400, "digest_mismatch")
    assert sha256_of(data) in err["message"]


@pytest.mark.parametrize("name", ["Upper", "under_score", "-leading", "trailing-", "a" * 64])
async def test_invalid_app_name_is_bad_request(
    server: RunningServer, http: httpx.AsyncClient, name: str
) -> None:
    digest = await upload_random(http, server.admin_token)
    # the spec's own name is valid; the path's name is not
    response = await deploy(http, server.admin_token, name, digest, spec=spec_for("fine"))
    err = assert_envelope(response, 400, "bad_request")
    assert "invalid app name" in err["message"]

    listed = await http.get(f"/api/v1/apps/{name}/deployments", headers=bearer(server.admin_token))
    assert_envelope(listed, 400, "bad_request")


async def test_deploying_an_artifact_never_uploaded_is_bad_request(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    app = unique("ghost")
    missing = sha256_of(os.urandom(32))
    response = await deploy(http, server.admin_token, app, missing)
    err = assert_envelope(response, 400, "bad_request")
    assert "upload it first" in err["message"]
    # and it left nothing behind: no app, no blueprint
    auth = bearer(server.admin_token)
    assert_envelope(await http.get(f"/api/v1/apps/{app}", headers=auth), 404, "not_found")
    assert_envelope(await http.get(f"/api/v1/blueprints/{app}", headers=auth), 404, "not_found")


async def test_deploying_another_tenants_artifact_is_bad_request(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    """The blob exists in the shared registry, but this tenant never uploaded it."""
    digest = await upload_random(http, server.admin_token)
    other = server.new_tenant()
    response = await deploy(http, other, unique("borrow"), digest)
    assert_envelope(response, 400, "bad_request")


async def test_negative_or_huge_counts_are_bad_request(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    app = unique("neg")
    digest = await upload_random(http, server.admin_token)
    assert (await deploy(http, server.admin_token, app, digest, instances=1)).status_code == 201
    auth = bearer(server.admin_token)
    for instances in (-1, 1001):
        scaled = await http.post(
            f"/api/v1/apps/{app}/scale", json={"instances": instances}, headers=auth
        )
        err = assert_envelope(scaled, 400, "bad_request")
        assert "instances" in err["message"]
    assert_envelope(
        await deploy(http, server.admin_token, app, digest, instances=-1), 400, "bad_request"
    )
    rolled = await http.post(f"/api/v1/apps/{app}/rollback", json={"version": 0}, headers=auth)
    assert_envelope(rolled, 400, "bad_request")
    # the refused requests changed nothing
    bp = (await http.get(f"/api/v1/blueprints/{app}", headers=auth)).json()
    assert bp["instances"] == 1
    deps = (await http.get(f"/api/v1/apps/{app}/deployments", headers=auth)).json()
    assert [d["version"] for d in deps] == [1]


async def test_overlong_idempotency_key_is_bad_request(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    digest = await upload_random(http, server.admin_token)
    response = await deploy(http, server.admin_token, unique("idem"), digest, key="k" * 256)
    err = assert_envelope(response, 400, "bad_request")
    assert "Idempotency-Key" in err["message"]


# -- digest_mismatch 400 --------------------------------------------------------


async def test_upload_with_wrong_digest_is_refused_and_invisible(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    data, other = os.urandom(4096), os.urandom(4096)
    claimed = sha256_of(other)
    response = await http.post(
        "/api/v1/artifacts",
        content=data,
        headers={**bearer(server.admin_token), DIGEST_HEADER: claimed},
    )
    err = assert_envelope(response, 400, "digest_mismatch")
    assert sha256_of(data) in err["message"]

    # visible to nobody: not to the uploader, and not to a node (which sees every blob)
    for token in (server.admin_token, server.node_token(unique("reader"))):
        head = await http.head(f"/api/v1/artifacts/{claimed}", headers=bearer(token))
        assert head.status_code == 404
        for digest in (claimed, sha256_of(data)):
            got = await http.get(f"/api/v1/artifacts/{digest}", headers=bearer(token))
            assert_envelope(got, 404, "not_found")
    assert not await server.ctx.registry.exists(claimed)
    assert list((server.data_dir / "artifacts" / "tmp").iterdir()) == []
    # and it cannot be deployed
    assert_envelope(
        await deploy(http, server.admin_token, unique("mismatch"), claimed), 400, "bad_request"
    )


async def test_wrong_bytes_under_an_existing_digest_do_not_grant_access(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    """Claiming another tenant's digest with other bytes is a mismatch, not a duplicate."""
    digest = await upload_random(http, server.admin_token)
    intruder = server.new_tenant()
    response = await http.post(
        "/api/v1/artifacts",
        content=b"not the real bytes",
        headers={**bearer(intruder), DIGEST_HEADER: digest},
    )
    assert_envelope(response, 400, "digest_mismatch")
    head = await http.head(f"/api/v1/artifacts/{digest}", headers=bearer(intruder))
    assert head.status_code == 404
    # the owner's blob is intact
    head = await http.head(f"/api/v1/artifacts/{digest}", headers=bearer(server.admin_token))
    assert head.status_code == 200


# -- payload_too_large 413 ------------------------------------------------------


async def test_upload_over_the_registry_limit_is_413_and_invisible(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    data = os.urandom(MAX_ARTIFACT_BYTES + 1)
    response = await upload(http, server.admin_token, data)
    assert_envelope(response, 413, "payload_too_large")
    head = await http.head(
        f"/api/v1/artifacts/{sha256_of(data)}", headers=bearer(server.node_token(unique("big")))
    )
    assert head.status_code == 404


# -- unauthorized 401 -----------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer ae_a_not-a-real-token"},
        {"Authorization": "Bearer"},
        {"Authorization": "Token ae_a_whatever"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "ae_a_tokenwithoutscheme"},
        {"Authorization": ""},
    ],
    ids=["none", "bad-token", "empty-bearer", "other-scheme", "basic", "no-scheme", "empty"],
)
async def test_missing_bad_or_malformed_token_is_unauthorized(
    server: RunningServer, http: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    for method, path in (
        ("GET", "/api/v1/apps"),
        ("GET", "/api/v1/status"),
        ("POST", "/api/v1/artifacts"),
        ("GET", f"/api/v1/artifacts/{UNKNOWN_DIGEST}"),
    ):
        response = await http.request(method, path, headers=headers)
        assert_envelope(response, 401, "unauthorized")


async def test_a_token_is_matched_exactly(server: RunningServer, http: httpx.AsyncClient) -> None:
    token = server.admin_token
    for wrong in (token + "x", token[:-1], token.upper()):
        response = await http.get("/api/v1/apps", headers=bearer(wrong))
        assert_envelope(response, 401, "unauthorized")
    # the scheme is case-insensitive and extra spaces before the token are tolerated
    ok = await http.get("/api/v1/apps", headers={"Authorization": f"bearer  {token}"})
    assert ok.status_code == 200


# -- forbidden 403 ----------------------------------------------------------------


async def test_viewer_may_read_but_not_change(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    app = unique("viewonly")
    digest = await upload_random(http, server.admin_token)
    assert (await deploy(http, server.admin_token, app, digest)).status_code == 201
    viewer = server.token("viewer")
    auth = bearer(viewer)

    assert (await http.get("/api/v1/apps", headers=auth)).status_code == 200
    assert (await http.get(f"/api/v1/apps/{app}/deployments", headers=auth)).status_code == 200
    assert (await http.head(f"/api/v1/artifacts/{digest}", headers=auth)).status_code == 200

    err = assert_envelope(await deploy(http, viewer, app, digest), 403, "forbidden")
    assert "viewer" in err["message"]
    assert_envelope(
        await http.post(f"/api/v1/apps/{app}/scale", json={"instances": 3}, headers=auth),
        403,
        "forbidden",
    )
    assert_envelope(
        await http.post(f"/api/v1/apps/{app}/rollback", json={}, headers=auth), 403, "forbidden"
    )
    data = os.urandom(64)
    assert_envelope(await upload(http, viewer, data), 403, "forbidden")
    assert_envelope(
        await http.post("/api/v1/nodes/some-node/drain", headers=auth), 403, "forbidden"
    )
    # nothing changed: one version, one instance, and the upload never landed
    admin = bearer(server.admin_token)
    deps = (await http.get(f"/api/v1/apps/{app}/deployments", headers=admin)).json()
    assert [d["version"] for d in deps] == [1]
    assert (await http.get(f"/api/v1/blueprints/{app}", headers=admin)).json()["instances"] == 1
    head = await http.head(f"/api/v1/artifacts/{sha256_of(data)}", headers=admin)
    assert head.status_code == 404


async def test_join_token_may_only_join(server: RunningServer, http: httpx.AsyncClient) -> None:
    auth = bearer(server.join_token)
    for method, path in (
        ("GET", "/api/v1/apps"),
        ("GET", "/api/v1/status"),
        ("GET", "/api/v1/nodes"),
        ("POST", "/api/v1/artifacts"),
    ):
        response = await http.request(method, path, headers=auth)
        err = assert_envelope(response, 403, "forbidden")
        assert "'join'" in err["message"]
    app = unique("nodedeploy")
    digest = await upload_random(http, server.admin_token)
    assert_envelope(await deploy(http, server.join_token, app, digest), 403, "forbidden")


async def test_operator_may_not_call_node_routes(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    operator = bearer(server.token("operator"))
    body = {
        "id": unique("opnode"),
        "capabilities": {"cpus": 1, "memory_mb": 512, "drivers": ["process"]},
        "router_url": "http://127.0.0.1:1",
    }
    err = assert_envelope(
        await http.post("/api/v1/nodes/register", json=body, headers=operator), 403, "forbidden"
    )
    assert "operator" in err["message"]
    assert_envelope(
        await http.post(
            f"/api/v1/nodes/{body['id']}/heartbeat", json={"lease_id": 1}, headers=operator
        ),
        403,
        "forbidden",
    )
    # the refused registration did not happen
    nodes = (await http.get("/api/v1/nodes", headers=operator)).json()
    assert body["id"] not in {n["id"] for n in nodes}


# -- not_found 404 ---------------------------------------------------------------


async def test_unknown_things_are_not_found(server: RunningServer, http: httpx.AsyncClient) -> None:
    auth = bearer(server.admin_token)
    app = unique("nobody")
    for method, path, body in (
        ("GET", f"/api/v1/apps/{app}", None),
        ("GET", f"/api/v1/apps/{app}/deployments", None),
        ("GET", f"/api/v1/apps/{app}/logs", None),
        ("POST", f"/api/v1/apps/{app}/scale", {"instances": 2}),
        ("POST", f"/api/v1/apps/{app}/rollback", {}),
        ("GET", f"/api/v1/blueprints/{app}", None),
        ("GET", f"/api/v1/deployments/{uuid.uuid4().hex}", None),
        ("GET", f"/api/v1/artifacts/{UNKNOWN_DIGEST}", None),
    ):
        response = await http.request(method, path, json=body, headers=auth)
        assert_envelope(response, 404, "not_found")
    head = await http.head(f"/api/v1/artifacts/{UNKNOWN_DIGEST}", headers=auth)
    assert head.status_code == 404
    assert head.headers["x-trace-id"]


@pytest.mark.parametrize("path", ["/api/v1/nope", "/api/v2/apps", "/nope", "/api/v1/apps/a/b/c"])
async def test_unknown_route_is_not_found(http: httpx.AsyncClient, path: str) -> None:
    assert_envelope(await http.get(path), 404, "not_found")


async def test_rollback_to_a_version_that_does_not_exist_is_not_found(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    app = unique("noversion")
    digest = await upload_random(http, server.admin_token)
    assert (await deploy(http, server.admin_token, app, digest)).status_code == 201
    response = await http.post(
        f"/api/v1/apps/{app}/rollback", json={"version": 99}, headers=bearer(server.admin_token)
    )
    err = assert_envelope(response, 404, "not_found")
    assert "99" in err["message"]


async def test_heartbeat_of_an_unregistered_node_is_not_found(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    ghost = unique("ghost")
    response = await http.post(
        f"/api/v1/nodes/{ghost}/heartbeat",
        json={"lease_id": 12345},
        headers=bearer(server.node_token(ghost)),
    )
    err = assert_envelope(response, 404, "not_found")
    assert "register again" in err["message"]


# -- conflict 409 ----------------------------------------------------------------


async def test_idempotency_key_reused_with_another_body_conflicts(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    app = unique("idemconf")
    digest = await upload_random(http, server.admin_token)
    key = uuid.uuid4().hex
    first = await deploy(http, server.admin_token, app, digest, key=key, instances=1)
    assert first.status_code == 201
    second = await deploy(http, server.admin_token, app, digest, key=key, instances=2)
    err = assert_envelope(second, 409, "conflict")
    assert "Idempotency-Key" in err["message"]
    deps = (
        await http.get(f"/api/v1/apps/{app}/deployments", headers=bearer(server.admin_token))
    ).json()
    assert [(d["version"], d["instances"]) for d in deps] == [(1, 1)]


async def test_rollback_with_nothing_to_roll_back_to_conflicts(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    app = unique("single")
    digest = await upload_random(http, server.admin_token)
    assert (await deploy(http, server.admin_token, app, digest)).status_code == 201
    response = await http.post(
        f"/api/v1/apps/{app}/rollback", json={}, headers=bearer(server.admin_token)
    )
    err = assert_envelope(response, 409, "conflict")
    assert "roll back" in err["message"]


# -- method_not_allowed 405 and trace ids ----------------------------------------


async def test_wrong_method_is_method_not_allowed(http: httpx.AsyncClient) -> None:
    assert_envelope(await http.delete("/healthz"), 405, "method_not_allowed")


async def test_a_caller_supplied_request_id_becomes_the_trace_id(
    http: httpx.AsyncClient,
) -> None:
    trace = f"test-{uuid.uuid4().hex}"
    response = await http.get("/api/v1/apps", headers={"X-Request-Id": trace})
    assert assert_envelope(response, 401, "unauthorized")["trace_id"] == trace
    ok = await http.get("/healthz", headers={"X-Request-Id": trace})
    assert ok.headers["x-trace-id"] == trace


async def test_trace_ids_differ_between_requests(http: httpx.AsyncClient) -> None:
    traces = {
        assert_envelope(await http.get("/nope"), 404, "not_found")["trace_id"] for _ in range(5)
    }
    assert len(traces) == 5


# -- regressions for bugs these tests found ---------------------------------------


async def test_rollback_to_an_out_of_range_version_is_bad_request(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    """Was a 500 (the number overflowed SQLite's int64), then a 404; versions are bounded."""
    app = unique("overflow")
    digest = await upload_random(http, server.admin_token)
    assert (await deploy(http, server.admin_token, app, digest, instances=0)).status_code == 201
    for version in (2**63, 2**70):
        response = await http.post(
            f"/api/v1/apps/{app}/rollback",
            json={"version": version},
            headers=bearer(server.admin_token),
        )
        err = assert_envelope(response, 400, "bad_request")
        assert "version" in err["message"]


@pytest.mark.parametrize(
    ("tenant", "app"),
    [("../..", "../escaped"), ("..", "escaped"), ("t", "../../../escaped"), ("a/b", "app")],
)
async def test_node_log_entries_cannot_escape_the_log_directory(
    server: RunningServer, http: httpx.AsyncClient, tenant: str, app: str
) -> None:
    """Was a path traversal: tenant and app became path parts unchecked."""
    target = Path(os.path.normpath(server.data_dir / "logs" / tenant / f"{app}.log"))
    logger = unique("logger")
    response = await http.post(
        f"/api/v1/nodes/{logger}/logs",
        json={"entries": [{"tenant": tenant, "app": app, "label": "x", "text": "owned"}]},
        headers=bearer(server.node_token(logger)),
    )
    assert_envelope(response, 400, "bad_request")
    assert not target.exists()


@pytest.mark.parametrize(
    "url",
    [
        "http://\u0000J\u00ab\u00b8\u00b9",  # the fuzzer's: a NUL in the host (was a 500)
        "http://exa mple.com/mcp",
        "http://[::1/mcp",  # an unclosed IPv6 host
        "https:///no-host",
    ],
)
@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/v1/tools/mcp/discover", lambda url: {"url": url}),
        ("/api/v1/tools", lambda url: {"id": unique("t"), "kind": "mcp", "config": {"url": url}}),
        (
            "/api/v1/models",
            lambda url: {"name": unique("m"), "base_url": url, "model_id": "m"},
        ),
    ],
)
async def test_a_url_no_client_can_call_is_refused_when_given(
    server: RunningServer, http: httpx.AsyncClient, path: str, body: Any, url: str
) -> None:
    """Was a 500: a URL with a NUL in its host passed the checks and made the HTTP client
    raise when the server called it (an MCP server's, a model provider's)."""
    response = await http.post(path, json=body(url), headers=bearer(server.admin_token))
    assert_envelope(response, 400, "bad_request")
