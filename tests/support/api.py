"""Helpers shared by the server API tests (plain functions, no fixtures)."""

from __future__ import annotations

import hashlib
import os
import uuid
from typing import Any

import httpx

from aether.trust import ca

__all__ = [
    "DIGEST_HEADER",
    "MAX_ARTIFACT_BYTES",
    "assert_envelope",
    "audit_events",
    "bearer",
    "deploy",
    "join_body",
    "join_node",
    "make_agent",
    "sha256_of",
    "spec_for",
    "unique",
    "upload",
    "upload_random",
]

# small enough to test 413 cheaply, far above anything the other tests upload
MAX_ARTIFACT_BYTES = 256 * 1024

DIGEST_HEADER = "X-Aether-Artifact-Digest"


def sha256_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def unique(prefix: str) -> str:
    """A fresh app (or node, or tenant) name: the tests share one server."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_envelope(response: httpx.Response, status: int, code: str) -> dict[str, str]:
    """The one error shape: exactly code, message, trace_id; X-Trace-Id repeats trace_id."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"code", "message", "trace_id"}, body
    assert body["code"] == code, body
    assert isinstance(body["message"], str) and body["message"].strip(), body
    assert isinstance(body["trace_id"], str) and body["trace_id"], body
    assert response.headers["x-trace-id"] == body["trace_id"]
    result: dict[str, str] = body
    return result


def join_body(node: str) -> dict[str, str]:
    """What a node sends to join: its id and a CSR for a key of its own."""
    return {"id": node, "csr": ca.new_request(ca.new_key(), node)}


def join_node(base_url: str, join_token: str, node: str) -> str:
    """Exchange the join token for node ``node``'s own credential (``POST /nodes/join``)."""
    response = httpx.post(
        f"{base_url}/api/v1/nodes/join",
        json=join_body(node),
        headers=bearer(join_token),
        timeout=10,
    )
    assert response.status_code == 201, response.text
    credential: str = response.json()["credential"]
    return credential


def spec_for(app: str, **extra: Any) -> dict[str, Any]:
    return {"name": app, "start": "python3 -m http.server", **extra}


async def upload(http: httpx.AsyncClient, token: str, data: bytes) -> httpx.Response:
    return await http.post(
        "/api/v1/artifacts",
        content=data,
        headers={**bearer(token), DIGEST_HEADER: sha256_of(data)},
    )


async def upload_random(http: httpx.AsyncClient, token: str, size: int = 512) -> str:
    """Upload fresh random bytes (the registry does not need a tarball); their digest."""
    data = os.urandom(size)
    response = await upload(http, token, data)
    assert response.status_code == 201, response.text
    digest: str = response.json()["digest"]
    assert digest == sha256_of(data)
    return digest


async def deploy(
    http: httpx.AsyncClient,
    token: str,
    app: str,
    digest: str,
    *,
    instances: int | None = None,
    key: str | None = None,
    spec: dict[str, Any] | None = None,
) -> httpx.Response:
    headers = bearer(token)
    if key is not None:
        headers["Idempotency-Key"] = key
    body: dict[str, Any] = {"digest": digest, "spec": spec or spec_for(app)}
    if instances is not None:
        body["instances"] = instances
    return await http.post(f"/api/v1/apps/{app}/deployments", json=body, headers=headers)


async def audit_events(http: httpx.AsyncClient, token: str, **params: Any) -> list[dict[str, Any]]:
    """``GET /api/v1/audit`` as ``token``: the events of the first page."""
    response = await http.get("/api/v1/audit", params=params, headers=bearer(token))
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["events"]
    return found


def make_agent(base_url: str, token: str) -> str:
    """A new agent of ``token``'s tenant (on a model of its own that is never called)."""
    model = unique("model")
    with httpx.Client(base_url=base_url, timeout=30) as http:
        made = http.post(
            "/api/v1/models",
            json={"name": model, "base_url": "http://127.0.0.1:9/v1", "model_id": "unused"},
            headers=bearer(token),
        )
        assert made.status_code == 201, made.text
        agent = http.post(
            "/api/v1/agents",
            json={
                "name": unique("agent"),
                "model": f"model://{model}",
                "policy_ids": ["default-safe"],
                "tool_ids": ["search"],
            },
            headers=bearer(token),
        )
        assert agent.status_code == 201, agent.text
        agent_id: str = agent.json()["id"]
        return agent_id
