"""The authorization matrix: every route of the OpenAPI document, every kind of caller.

``ROUTES`` classifies each ``/api/v1`` operation once: the least role that may call
it, and whether its path names a tenant-owned object. The table must list exactly
the operations of the server's own ``/openapi.json``, so a new route fails here until
someone decides who may call it.

Each cell calls one route as one caller, with path parameters naming objects of
tenant A (a tenant other than ``default``, so its admin is not the cluster admin):

* below the route's role: 401 ``unauthorized`` without a token, 403 ``forbidden``
  with one;
* at or above it: neither (the call may still be refused on content: a 4xx
  other than 401/403, never a 5xx).

A node credential passes node routes only about its own node (``other-node``: another
node's credential, which is refused everywhere).

And for each route naming a tenant-owned object, tenant B's admin asking for tenant
A's object gets 404 ``not_found`` — never 403 — with the very answer an object that
does not exist gets; the same for tenant A's objects named in a body or a query; and
no list or cluster view shows tenant B any of tenant A's objects.

A route that creates the app it names (``mine``) has no "tenant A's object": an app
name is each tenant's own, so another tenant naming tenant A's app acts on its own app
of that name, and answers exactly as for a name nobody has (never a 409, never a hint).

Nodes are the cluster's: draining, signalling about and drilling a node are for the
cluster's operators (``cluster-operator``: an operator of the default tenant; and
the cluster admin), and a node's own credential signals about itself.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from aether.artifacts.provenance import (
    BuildFacts,
    SourceFacts,
    make_statement,
    sign_statement,
)
from aether.artifacts.signing import generate_key
from aether.model.api import RegisterIn
from aether.model.cluster import NodeCapabilities, endpoint_key
from aether.model.names import cluster_name
from tests.support.api import DIGEST_HEADER, bearer, join_body, spec_for, unique
from tests.support.fake_nodes import FakeNodes
from tests.support.model_server import model_server, say
from tests.support.server import RunningServer, running_server
from tests.support.waiting import eventually

# -- the table -------------------------------------------------------------------------

# Who passes each role. ``cluster`` is an admin of the default tenant; ``node`` a node's
# own credential; ``join`` a join token.
_PASSES: dict[str, frozenset[str]] = {
    "viewer": frozenset({"viewer", "operator", "admin", "cluster", "cluster-operator"}),
    "operator": frozenset({"operator", "admin", "cluster", "cluster-operator"}),
    "admin": frozenset({"admin", "cluster"}),
    "cluster": frozenset({"cluster"}),
    "node": frozenset({"node"}),
    "join": frozenset({"join"}),
    # ArtifactReader: a tenant's roles read its own; a node what is assigned to it
    "viewer|node": frozenset(
        {"viewer", "operator", "admin", "cluster", "cluster-operator", "node"}
    ),
    # a tenant's operators, and a node (a snapshot assigned to it)
    "operator|node": frozenset({"operator", "admin", "cluster", "cluster-operator", "node"}),
    # ClusterOperator: the default tenant's operators and admins (nodes are the cluster's)
    "cluster-operator": frozenset({"cluster", "cluster-operator"}),
    # SignalWriter: the cluster's operators, and a node about itself
    "cluster-operator|node": frozenset({"cluster", "cluster-operator", "node"}),
    # signing in: anyone, with or without a token (the route itself checks what is sent)
    "public": frozenset(
        {
            "anonymous",
            "viewer",
            "operator",
            "admin",
            "cluster",
            "cluster-operator",
            "node",
            "other-node",
            "join",
        }
    ),
}
# ``other-node``: another node's own credential, which no route accepts about this node
# (the path parameters and bodies name the node with tenant A's instance);
# ``cluster-operator``: an operator of the default tenant
CALLERS = (
    "anonymous",
    "viewer",
    "operator",
    "admin",
    "cluster",
    "cluster-operator",
    "node",
    "other-node",
    "join",
)


@dataclass(frozen=True)
class Rule:
    role: str  # a key of _PASSES
    owned: bool = False  # its path names a tenant-owned object: another tenant gets 404
    mine: bool = False  # it creates the app it names: B naming A's app acts on B's own
    stream: bool = False  # never ends: only the status line is read
    fresh: bool = False  # destroys its object (or the calling token): each cell gets its own


ROUTES: dict[str, Rule] = {
    # apps and deployments
    "GET /api/v1/apps": Rule("viewer"),
    "GET /api/v1/apps/{app}": Rule("viewer", owned=True),
    "DELETE /api/v1/apps/{app}": Rule("operator", owned=True, fresh=True),
    "GET /api/v1/apps/{app}/deployments": Rule("viewer", owned=True),
    # an app name is the tenant's own: deploying, registering a key or writing settings
    # under a name another tenant uses makes (or changes) the caller's own app
    "POST /api/v1/apps/{app}/deployments": Rule("operator", owned=True, mine=True),
    "GET /api/v1/apps/{app}/logs": Rule("viewer", owned=True),
    "POST /api/v1/apps/{app}/promote": Rule("operator", owned=True),
    "POST /api/v1/apps/{app}/rollback": Rule("operator", owned=True),
    "POST /api/v1/apps/{app}/scale": Rule("operator", owned=True),
    "GET /api/v1/deployments/{deployment_id}": Rule("viewer", owned=True),
    "GET /api/v1/deployments/{deployment_id}/events": Rule("viewer", owned=True),
    # signing keys and app settings
    "GET /api/v1/apps/{app}/public-keys": Rule("viewer", owned=True),
    "POST /api/v1/apps/{app}/public-keys": Rule("operator", owned=True, mine=True),
    "DELETE /api/v1/apps/{app}/public-keys/{key_id}": Rule("operator", owned=True, fresh=True),
    "GET /api/v1/apps/{app}/settings": Rule("viewer", owned=True),
    "PUT /api/v1/apps/{app}/settings": Rule("operator", owned=True, mine=True),
    # artifacts and blobs
    "POST /api/v1/artifacts": Rule("operator"),
    "POST /api/v1/artifacts/assemble": Rule("operator"),
    "GET /api/v1/artifacts/{digest}": Rule("viewer|node", owned=True),
    "HEAD /api/v1/artifacts/{digest}": Rule("viewer|node", owned=True),
    "GET /api/v1/artifacts/{digest}/manifest": Rule("viewer", owned=True),
    "GET /api/v1/artifacts/{digest}/sbom": Rule("viewer", owned=True),
    "GET /api/v1/artifacts/{digest}/signature": Rule("viewer", owned=True),
    "PUT /api/v1/artifacts/{digest}/signature": Rule("operator", owned=True),
    "GET /api/v1/artifacts/{digest}/provenance": Rule("viewer", owned=True),
    "PUT /api/v1/artifacts/{digest}/provenance": Rule("operator", owned=True),
    "GET /api/v1/artifacts/{digest}/verification": Rule("viewer", owned=True),
    "POST /api/v1/blobs/missing": Rule("operator"),
    "PUT /api/v1/blobs/{digest}": Rule("operator"),  # content-addressed: no owner to hide
    # the cluster's views (each scoped to the caller's tenant)
    "GET /api/v1/status": Rule("viewer"),
    "GET /api/v1/settings": Rule("viewer"),
    "GET /api/v1/schemas": Rule("viewer"),
    "GET /api/v1/blueprints": Rule("viewer"),
    "GET /api/v1/blueprints/{app}": Rule("viewer", owned=True),
    "GET /api/v1/instances": Rule("viewer"),
    "GET /api/v1/endpoints": Rule("viewer"),
    "GET /api/v1/decisions": Rule("viewer"),
    # alerts: a tenant's apps' to it; the cluster's (nodes) to the cluster's operators
    "GET /api/v1/alerts": Rule("viewer"),
    "GET /api/v1/alerts/silences": Rule("viewer"),
    "POST /api/v1/alerts/silences": Rule("operator"),
    "DELETE /api/v1/alerts/silences/{silence_id}": Rule("operator", owned=True, fresh=True),
    "GET /api/v1/events": Rule("viewer", stream=True),
    "POST /api/v1/gc": Rule("cluster"),
    "GET /api/v1/admin/backup/state": Rule("cluster"),
    "POST /api/v1/diag/bundle": Rule("cluster"),
    # nodes: what a node calls, with its own credential
    "POST /api/v1/nodes/join": Rule("join"),
    "POST /api/v1/nodes/register": Rule("node"),
    "POST /api/v1/nodes/{node}/heartbeat": Rule("node"),
    "POST /api/v1/nodes/{node}/diag/{request_id}": Rule("node"),
    "GET /api/v1/nodes/{node}/assignments": Rule("node", stream=True),
    "PUT /api/v1/nodes/{node}/instances/{app_version}/{n}": Rule("node"),
    "DELETE /api/v1/nodes/{node}/instances/{app_version}/{n}": Rule("node"),
    "PUT /api/v1/nodes/{node}/routes": Rule("node"),
    "GET /api/v1/nodes/{node}/withdrawals": Rule("node"),
    "POST /api/v1/nodes/{node}/logs": Rule("node"),
    "POST /api/v1/nodes/{node}/metrics": Rule("node"),
    "POST /api/v1/snapshots": Rule("node"),
    "POST /api/v1/tasks/claim": Rule("node"),
    "POST /api/v1/tasks/exchange": Rule("node"),
    "POST /api/v1/tasks/{task_id}/heartbeat": Rule("node"),
    "POST /api/v1/tasks/{task_id}/complete": Rule("node"),
    "POST /api/v1/tasks/{task_id}/fail": Rule("node"),
    # nodes: what people do to them (nodes are the cluster's, not a tenant's)
    "GET /api/v1/nodes": Rule("viewer"),
    # a drain moves every tenant's instances: the cluster's operators only
    "POST /api/v1/nodes/{node}/drain": Rule("cluster-operator"),
    "POST /api/v1/nodes/{node}/undrain": Rule("cluster-operator"),
    "POST /api/v1/nodes/{node}/revoke": Rule("cluster", fresh=True),
    "POST /api/v1/nodes/{node}/allow": Rule("cluster"),
    # the cluster CA: public certificates; a node renews its own; admins rotate
    "GET /api/v1/cluster/trust": Rule("public"),
    "POST /api/v1/nodes/{node}/certificate": Rule("node"),
    "GET /api/v1/ca": Rule("cluster"),
    "POST /api/v1/ca/rotate": Rule("cluster"),
    # as drains: the risk a signal raises may move every tenant's instances
    "POST /api/v1/signals": Rule("cluster-operator|node"),
    "POST /api/v1/market/signal": Rule("cluster-operator|node"),
    "GET /api/v1/signals": Rule("viewer"),
    "GET /api/v1/risk": Rule("viewer"),
    "GET /api/v1/risk/{node}": Rule("viewer"),
    "GET /api/v1/drill": Rule("viewer"),
    "POST /api/v1/drill/start": Rule("cluster-operator"),
    "POST /api/v1/drill/stop": Rule("cluster-operator"),
    # telemetry
    "GET /api/v1/metrics": Rule("viewer"),
    "GET /api/v1/metrics/apps/{app}": Rule("viewer", owned=True),
    "GET /api/v1/metrics/slices/{app}": Rule("viewer", owned=True),
    "GET /api/v1/metrics/nodes/{node}": Rule("viewer"),
    "GET /api/v1/metrics/rollups": Rule("viewer"),
    "GET /api/v1/metrics/stream": Rule("viewer", stream=True),
    # migrations, snapshots, rebalancing
    "POST /api/v1/instances/migrate": Rule("operator"),
    "GET /api/v1/migrations": Rule("viewer"),
    "GET /api/v1/migrations/{migration_id}": Rule("viewer", owned=True),
    "GET /api/v1/snapshots": Rule("viewer"),
    # ArtifactReader, and the route refuses a viewer: operators fetch their tenant's
    "GET /api/v1/snapshots/{digest}": Rule("operator|node", owned=True),
    "POST /api/v1/apps/{app}/snapshots/{digest}/restore": Rule("operator", owned=True),
    "POST /api/v1/rebalance": Rule("operator"),
    # tasks and sandboxes
    "GET /api/v1/tasks": Rule("viewer"),
    "POST /api/v1/tasks": Rule("operator"),
    "POST /api/v1/tasks:batch": Rule("operator"),
    "GET /api/v1/tasks/stats": Rule("viewer"),
    "GET /api/v1/tasks/{task_id}": Rule("viewer", owned=True),
    "GET /api/v1/tasks/{task_id}/history": Rule("viewer", owned=True),
    "POST /api/v1/tasks/{task_id}/cancel": Rule("operator", owned=True, fresh=True),
    "GET /api/v1/sandboxes": Rule("viewer"),
    "GET /api/v1/sandboxes/{sandbox_id}": Rule("viewer", owned=True),
    "GET /api/v1/sandboxes/{sandbox_id}/executions": Rule("viewer", owned=True),
    "GET /api/v1/executions/{execution_id}": Rule("viewer", owned=True),
    # the audit log: a tenant's admin reads its tenant's events; verifying the whole
    # chain is the cluster admin's
    "GET /api/v1/audit": Rule("admin"),
    "GET /api/v1/audit/verify": Rule("cluster"),
    # policy plugins are the cluster's: only the cluster admin (tenant admins get 403)
    "GET /api/v1/plugins": Rule("cluster"),
    "POST /api/v1/plugins": Rule("cluster"),
    "GET /api/v1/plugins/{name}": Rule("cluster"),
    "DELETE /api/v1/plugins/{name}": Rule("cluster"),
    # limits and quotas: a tenant's admin reads its own; only the cluster admin changes
    # them (tenant A's admin gets 403 on its own, tenant B's admin 404 on A's)
    "GET /api/v1/limits": Rule("admin"),
    "GET /api/v1/tenants/{tenant}/limits": Rule("admin", owned=True),
    "PUT /api/v1/tenants/{tenant}/limits": Rule("cluster", owned=True),
    # tenants and tokens
    "GET /api/v1/tenants": Rule("cluster"),
    "POST /api/v1/tenants": Rule("cluster"),
    "GET /api/v1/tenants/{tenant}": Rule("admin", owned=True),
    # cluster-only whatever the name: the 403 is the same for every tenant, no hint
    "PATCH /api/v1/tenants/{tenant}": Rule("cluster"),
    "DELETE /api/v1/tenants/{tenant}": Rule("cluster", fresh=True),
    "GET /api/v1/tokens": Rule("admin"),
    "POST /api/v1/tokens": Rule("admin"),
    "DELETE /api/v1/tokens/{token_id}": Rule("admin", owned=True, fresh=True),
    "POST /api/v1/tokens/rotate": Rule("viewer", fresh=True),  # revokes the calling token
    # accounts: a tenant's admin manages its members; anyone sees itself (another
    # member is a 404 to a non-admin, as to another tenant)
    "GET /api/v1/users": Rule("admin"),
    "POST /api/v1/users": Rule("admin"),
    "GET /api/v1/users/{user}": Rule("viewer", owned=True),
    "PATCH /api/v1/users/{user}": Rule("admin", owned=True),
    "DELETE /api/v1/users/{user}": Rule("admin", owned=True, fresh=True),
    "PUT /api/v1/users/{user}/password": Rule("viewer", owned=True),
    "POST /api/v1/users/{user}/totp": Rule("viewer", owned=True),
    "DELETE /api/v1/users/{user}/totp": Rule("admin", owned=True),
    "GET /api/v1/whoami": Rule("viewer"),
    # models for AI agents: viewers read the tenant's catalog, admins change it, operators
    # test a model (one call to the scripted model server)
    "GET /api/v1/models": Rule("viewer"),
    "POST /api/v1/models": Rule("admin"),
    "GET /api/v1/models/{name}": Rule("viewer", owned=True),
    "DELETE /api/v1/models/{name}": Rule("admin", owned=True, fresh=True),
    "POST /api/v1/models/{name}/test": Rule("operator", owned=True),
    # tenant secrets: viewers list the names, admins set and remove; tenant A's secret
    # is named like its model ({name}); B setting that name sets B's own
    "GET /api/v1/secrets": Rule("viewer"),
    "PUT /api/v1/secrets/{name}": Rule("admin", owned=True, mine=True),
    "DELETE /api/v1/secrets/{name}": Rule("admin", owned=True, fresh=True),
    "POST /api/v1/secrets:rotate-key": Rule("cluster"),  # every value still opens after
    # the values an instance or task uses: only the node it runs on (else 404)
    "GET /api/v1/nodes/{node}/instances/{app_version}/{n}/secrets": Rule("node"),
    "GET /api/v1/tasks/{task_id}/secrets": Rule("node"),
    "PUT /api/v1/tenants/{tenant}/members/{user}": Rule("cluster"),
    # signing in (no token yet)
    "GET /api/v1/auth/providers": Rule("public"),
    "POST /api/v1/auth/login": Rule("public"),
    "GET /api/v1/auth/oidc/start": Rule("public"),
    "GET /api/v1/auth/oidc/callback": Rule("public"),
    "POST /api/v1/auth/oidc/exchange": Rule("public"),
    # agent tools and policies: the built-ins are every tenant's, the rest its own
    "GET /api/v1/tools": Rule("viewer"),
    "POST /api/v1/tools": Rule("admin"),
    "GET /api/v1/tools/search": Rule("viewer"),
    "POST /api/v1/tools/sync": Rule("admin"),
    "POST /api/v1/tools/mcp/discover": Rule("admin"),  # off on this server: 404 to an admin
    "GET /api/v1/tools/{tool_id}": Rule("viewer", owned=True),
    "DELETE /api/v1/tools/{tool_id}": Rule("admin", owned=True, fresh=True),
    "GET /api/v1/policies": Rule("viewer"),
    "POST /api/v1/policies": Rule("admin"),
    "GET /api/v1/policies/{policy_id}": Rule("viewer", owned=True),
    "PATCH /api/v1/policies/{policy_id}": Rule("admin", owned=True),
    "DELETE /api/v1/policies/{policy_id}": Rule("admin", owned=True, fresh=True),
    "POST /api/v1/policies/{policy_id}/evaluate": Rule("operator", owned=True),
    "POST /api/v1/policies/{policy_id}/simulate": Rule("operator", owned=True),
    "GET /api/v1/policy-enforcements": Rule("admin"),
    # AI agents and their catalog
    "GET /api/v1/agent-catalog": Rule("viewer"),
    "POST /api/v1/agent-catalog": Rule("admin"),
    "GET /api/v1/agent-catalog/{recipe_id}": Rule("viewer", owned=True),
    "DELETE /api/v1/agent-catalog/{recipe_id}": Rule("admin", owned=True, fresh=True),
    "GET /api/v1/agents": Rule("viewer"),
    "POST /api/v1/agents": Rule("operator"),
    "POST /api/v1/agents/import": Rule("operator"),
    "GET /api/v1/agents/{agent_id}": Rule("viewer", owned=True),
    "PATCH /api/v1/agents/{agent_id}": Rule("operator", owned=True),
    "GET /api/v1/agents/{agent_id}/versions": Rule("viewer", owned=True),
    "POST /api/v1/agents/{agent_id}/disable": Rule("operator", owned=True),
    "POST /api/v1/agents/{agent_id}/enable": Rule("operator", owned=True),
    "POST /api/v1/agents/{agent_id}/deploy": Rule("operator", owned=True),
    "DELETE /api/v1/agents/{agent_id}/deploy": Rule("operator", owned=True),
    "GET /api/v1/agents/{agent_id}/export": Rule("viewer", owned=True),
    # agents' runs: viewers read, operators start, cancel and approve; the node driving a
    # run (any node: nodes are the cluster's) asks what is next and reports tool results
    "POST /api/v1/agents/{agent}/runs": Rule("operator", owned=True),
    "GET /api/v1/agents/{agent}/runs": Rule("viewer", owned=True),
    "GET /api/v1/agents/{agent}/metrics": Rule("viewer", owned=True),
    "GET /api/v1/runs": Rule("viewer"),
    "GET /api/v1/runs/{run_id}": Rule("viewer", owned=True),
    "GET /api/v1/runs/{run_id}/events": Rule("viewer", owned=True, stream=True),
    "GET /api/v1/runs/{run_id}/files": Rule("viewer", owned=True),
    "GET /api/v1/runs/{run_id}/files/{step}/{name}": Rule("viewer", owned=True),
    "POST /api/v1/runs/{run_id}/cancel": Rule("operator", owned=True),
    "POST /api/v1/runs/{run_id}/approvals": Rule("operator", owned=True),
    "GET /api/v1/threads/{thread_id}/runs": Rule("viewer", owned=True),
    "POST /api/v1/agent-runtime/runs/{run_id}/next": Rule("node"),
    "POST /api/v1/agent-runtime/runs/{run_id}/steps/{seq}/result": Rule("node"),
    # agents' memory: viewers list and search, operators write and delete
    "GET /api/v1/memory": Rule("viewer"),
    "POST /api/v1/memory": Rule("operator"),
    "GET /api/v1/memory/search": Rule("viewer"),
    "DELETE /api/v1/memory/{memory_id}": Rule("operator", owned=True, fresh=True),
    # slices: viewers list and read, operators call; tenant A's slice is B's 404 (even
    # with a body the call refuses: the slice and entry point are looked for first)
    "GET /api/v1/slices": Rule("viewer"),
    "GET /api/v1/slices/{slice}": Rule("viewer", owned=True),
    "POST /api/v1/slices/{slice}/{entry}:call": Rule("operator", owned=True),
    # blueprint files: viewers list and read, operators apply and forget; B applying a
    # file under A's blueprint name makes its own (and names A's app: not deployed in B)
    "GET /api/v1/blueprint-files": Rule("viewer"),
    "GET /api/v1/blueprint-files/{blueprint}": Rule("viewer", owned=True),
    "PUT /api/v1/blueprint-files/{blueprint}": Rule("operator", owned=True, mine=True),
    "DELETE /api/v1/blueprint-files/{blueprint}": Rule("operator", owned=True, fresh=True),
}


def _split(route: str) -> tuple[str, str]:
    method, path = route.split(" ", 1)
    return method, path


# -- the world: tenant A's objects -----------------------------------------------------


@dataclass
class World:
    server: RunningServer
    tenant: str  # tenant A
    other: str  # tenant B's admin token
    node: str  # a node with tenant A's instance
    spare: str  # a live node with nothing on it
    params: dict[str, str]
    model_url: str  # the scripted model server tenant A's models call
    callers: dict[str, str | None] = field(default_factory=dict)

    def token(self, caller: str) -> str | None:
        return self.callers[caller]


def _pubkey() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def _provenance(digest: str, app: str) -> dict[str, Any]:
    """A well-formed provenance envelope for ``digest``, signed by a key nobody registered."""
    now = datetime.now(UTC)
    facts = BuildFacts(
        app=app,
        runtime="python",
        command=("aether", "deploy"),
        builder_version="test",
        started_on=now,
        finished_on=now,
    )
    statement = make_statement(digest, SourceFacts(tree_digest=digest), facts)
    return sign_statement(statement, generate_key())


def _snapshot_headers(world: World, data: bytes) -> dict[str, str]:
    return {
        DIGEST_HEADER: "sha256:" + hashlib.sha256(data).hexdigest(),
        "X-Aether-Instance": world.params["instance"],
        "X-Aether-Snapshot-Kind": "cooperative",
    }


def _request(world: World, method: str, path: str) -> dict[str, Any]:
    """A minimal valid body (and headers) for the route, where it takes one."""
    p = world.params
    data = os.urandom(64)
    raw = {DIGEST_HEADER: "sha256:" + hashlib.sha256(data).hexdigest()}
    bodies: dict[str, dict[str, Any]] = {
        "POST /api/v1/apps/{app}/deployments": {
            "json": {"digest": p["digest"], "spec": spec_for(p["app"]), "instances": 1}
        },
        "POST /api/v1/apps/{app}/rollback": {"json": {}},
        "POST /api/v1/apps/{app}/scale": {"json": {"instances": 1}},
        "POST /api/v1/apps/{app}/public-keys": {"json": {"public_key": _pubkey()}},
        "PUT /api/v1/apps/{app}/settings": {"json": {"retain_deployments": 5}},
        "POST /api/v1/apps/{app}/snapshots/{digest}/restore": {"json": {}},
        "PUT /api/v1/artifacts/{digest}/signature": {
            "headers": {
                "X-Aether-Signature": base64.b64encode(os.urandom(64)).decode(),
                "X-Aether-App": p["app"],
            }
        },
        "PUT /api/v1/artifacts/{digest}/provenance": {
            "json": _provenance(p["digest"], p["app"]),
            "headers": {"X-Aether-App": p["app"]},
        },
        "POST /api/v1/artifacts": {"content": data, "headers": raw},
        "POST /api/v1/artifacts/assemble": {"json": {"digest": raw[DIGEST_HEADER], "plan": []}},
        "PUT /api/v1/blobs/{digest}": {"content": data},
        "POST /api/v1/blobs/missing": {"json": {"digests": [raw[DIGEST_HEADER]]}},
        "POST /api/v1/nodes/join": {"json": join_body(unique("joined"))},  # never the node's id
        "POST /api/v1/nodes/register": {
            "json": RegisterIn(
                id=world.node,
                capabilities=NodeCapabilities(cpus=4.0, memory_mb=4096, drivers=["process"]),
                router_url="http://127.0.0.1:1",
            ).model_dump(mode="json")
        },
        "POST /api/v1/nodes/{node}/heartbeat": {"json": {"lease_id": 1}},
        # no bundle is waiting (a 404); the bundle itself without nodes to wait for
        "POST /api/v1/nodes/{node}/diag/{request_id}": {"json": {"files": {"log.txt": "x"}}},
        "POST /api/v1/diag/bundle": {"params": {"nodes": "none", "since": 60}},
        "POST /api/v1/nodes/{node}/certificate": {"json": {"csr": join_body(world.node)["csr"]}},
        "POST /api/v1/ca/rotate": {"json": {"overlap_seconds": 3600}},
        "PUT /api/v1/nodes/{node}/instances/{app_version}/{n}": {"json": {"state": "LOADING"}},
        "PUT /api/v1/nodes/{node}/routes": {"json": {"revision": 0}},
        "GET /api/v1/nodes/{node}/withdrawals": {
            "params": {"revision": 0, "url": "http://127.0.0.1:9"}
        },
        "POST /api/v1/nodes/{node}/logs": {"json": {"entries": []}},
        "POST /api/v1/nodes/{node}/metrics": {"json": {}},
        "POST /api/v1/snapshots": {
            "content": data,
            "headers": _snapshot_headers(world, data),
        },
        "POST /api/v1/tasks/claim": {
            "json": {"node": world.node, "queues": [unique("q")], "wait": 0}
        },
        "POST /api/v1/tasks/exchange": {
            "json": {"node": world.node, "queues": [unique("q")], "want": 1, "wait": 0}
        },
        "POST /api/v1/tasks/{task_id}/heartbeat": {"json": {"node": world.node, "attempt": 1}},
        "GET /api/v1/tasks/{task_id}/secrets": {"params": {"node": world.node, "attempt": 1}},
        "POST /api/v1/tasks/{task_id}/complete": {
            "json": {"node": world.node, "attempt": 1, "result": {}}
        },
        "POST /api/v1/tasks/{task_id}/fail": {
            "json": {"node": world.node, "attempt": 1, "error": "x", "retryable": True}
        },
        # about the node itself (a node signals only about itself), and harmless
        "POST /api/v1/signals": {"json": {"node": world.node, "kind": "clear"}},
        "POST /api/v1/market/signal": {"json": {"node": world.node, "rebalance": False}},
        "POST /api/v1/drill/start": {"json": {"node": world.spare}},
        "POST /api/v1/drill/stop": {"json": {"node": world.spare}},
        "POST /api/v1/instances/migrate": {"json": {"instance": p["instance"]}},
        "POST /api/v1/rebalance": {"json": {}},
        "POST /api/v1/tasks": {
            "json": {"type": "vm:create", "payload": {"name": "m"}, "queue": unique("q")}
        },
        "POST /api/v1/tasks:batch": {
            "json": {
                "tasks": [{"type": "vm:create", "payload": {"name": "m"}, "queue": unique("q")}]
            }
        },
        "POST /api/v1/tenants": {"json": {"name": unique("t"), "admin_token": False}},
        "PATCH /api/v1/tenants/{tenant}": {"json": {"description": "matrix"}},
        "PUT /api/v1/tenants/{tenant}/limits": {"json": {}},
        "POST /api/v1/tokens": {"json": {"role": "viewer", "name": "matrix"}},
        "POST /api/v1/users": {"json": {"name": unique("m"), "role": "viewer", "kind": "service"}},
        "PATCH /api/v1/users/{user}": {"json": {"display_name": "matrix"}},
        "PUT /api/v1/tenants/{tenant}/members/{user}": {"json": {"role": "viewer"}},
        "PUT /api/v1/users/{user}/password": {"json": {"password": "matrix password 1"}},
        "POST /api/v1/auth/login": {"json": {"user": p["user"], "password": "not it at all"}},
        "POST /api/v1/auth/oidc/exchange": {"json": {"code": "c" * 32, "verifier": "v" * 43}},
        "POST /api/v1/models": {"json": _model_body(unique("m"), world.model_url)},
        "PUT /api/v1/secrets/{name}": {"json": {"value": "matrix-secret-value"}},
        # not a module: a 400 once the caller passes
        "POST /api/v1/plugins": {
            "json": {"name": "matrix", "kind": "guard", "wasm": "bm90IHdhc20="}
        },
        # a 400 once the slice is found (its instance is not reachable: never called)
        "POST /api/v1/slices/{slice}/{entry}:call": {"json": {"args": "not an array"}},
        "PUT /api/v1/blueprint-files/{blueprint}": {"json": {"apps": {p["app"]: {"instances": 1}}}},
        "POST /api/v1/tools": {"json": _tool(unique("tool"))},
        "GET /api/v1/tools/search": {"params": {"q": "weather"}},
        "POST /api/v1/tools/sync": {"json": {"yaml": "[]"}},
        # both servers named: a 400 once past the role check (nothing is started)
        "POST /api/v1/tools/mcp/discover": {"json": {"url": "http://a.example", "command": ["x"]}},
        "POST /api/v1/policies": {"json": {"id": unique("policy"), "tools": ["search"]}},
        "POST /api/v1/alerts/silences": {
            "json": {"matchers": {"alertname": "CrashLooping"}, "duration": 60}
        },
        "PATCH /api/v1/policies/{policy_id}": {"json": {"max_steps": 10}},
        "GET /api/v1/memory": {"params": {"agent_id": p["agent_id"]}},
        "POST /api/v1/memory": {"json": {"agent_id": p["agent_id"], "text": "matrix"}},
        "GET /api/v1/memory/search": {"params": {"agent_id": p["agent_id"], "q": "secret"}},
        "POST /api/v1/policies/{policy_id}/evaluate": {
            "json": {"tool_id": p["tool_id"], "arguments": {"city": "Oslo"}}
        },
        "POST /api/v1/policies/{policy_id}/simulate": {"json": {"policy": {"tools": ["*"]}}},
        "POST /api/v1/agent-catalog": {"json": _recipe(unique("recipe"))},
        "POST /api/v1/agents": {"json": {"name": unique("agent"), "model": f"model://{p['name']}"}},
        "POST /api/v1/agents/import": {
            "json": {"aether_agent": 1, "name": unique("agent"), "model": f"model://{p['name']}"}
        },
        "PATCH /api/v1/agents/{agent_id}": {"json": {"config": {"max_tokens": 64}}},
        "POST /api/v1/agents/{agent}/runs": {"json": {"input": "matrix", "background": True}},
        "POST /api/v1/runs/{run_id}/approvals": {"json": {"decision": "approve"}},
        "POST /api/v1/agent-runtime/runs/{run_id}/next": {
            "json": {"node": world.node, "task_id": "not-its-task"}
        },
        "POST /api/v1/agent-runtime/runs/{run_id}/steps/{seq}/result": {
            "json": {"node": world.node, "ok": True, "output": "x"}
        },
    }
    return bodies.get(f"{method} {path}", {})


def _model_body(name: str, url: str) -> dict[str, Any]:
    return {"name": name, "base_url": url, "model_id": "test-model", "api_key": "sk-matrix"}


def _tool(tool_id: str) -> dict[str, Any]:
    """An http tool of tenant A's (a weather lookup)."""
    return {
        "id": tool_id,
        "kind": "http",
        "description": "the weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        "config": {"url": "https://weather.example.com/{city}"},
    }


def _recipe(recipe_id: str) -> dict[str, Any]:
    """A recipe of tenant A's: a search agent, its model left open."""
    return {"id": recipe_id, "name": "searcher", "tool_ids": ["search"], "open": ["model"]}


def _fresh(world: World, route: str, http: httpx.Client) -> dict[str, str]:
    """A new object for a destructive route (path parameters to override)."""
    admin = bearer(world.server.token("admin", world.tenant))
    if route == "DELETE /api/v1/models/{name}":
        name = unique("gone")
        made = http.post("/api/v1/models", json=_model_body(name, world.model_url), headers=admin)
        assert made.status_code == 201, made.text
        return {"name": name}
    if route == "DELETE /api/v1/secrets/{name}":
        name = unique("gone")
        made = http.put(f"/api/v1/secrets/{name}", json={"value": "gone"}, headers=admin)
        assert made.status_code == 201, made.text
        return {"name": name}
    if route == "DELETE /api/v1/blueprint-files/{blueprint}":
        name = unique("gone")
        made = http.put(
            f"/api/v1/blueprint-files/{name}",
            json={"apps": {world.params["app"]: {"instances": 1}}},
            headers=admin,
        )
        assert made.status_code == 200, made.text
        return {"blueprint": name}
    if route == "DELETE /api/v1/apps/{app}":
        app = unique("gone")
        put = http.put(f"/api/v1/apps/{app}/settings", json={}, headers=admin)
        assert put.status_code == 200, put.text
        return {"app": app}
    if route == "DELETE /api/v1/apps/{app}/public-keys/{key_id}":
        added = http.post(
            f"/api/v1/apps/{world.params['app']}/public-keys",
            json={"public_key": _pubkey()},
            headers=admin,
        )
        assert added.status_code == 201, added.text
        return {"key_id": added.json()["id"]}
    if route == "POST /api/v1/tasks/{task_id}/cancel":
        task = http.post(
            "/api/v1/tasks",
            json={"type": "vm:create", "payload": {"name": "c"}, "queue": unique("q")},
            headers=admin,
        )
        assert task.status_code == 201, task.text
        return {"task_id": task.json()["id"]}
    if route == "DELETE /api/v1/tokens/{token_id}":
        made = http.post("/api/v1/tokens", json={"role": "viewer", "name": "gone"}, headers=admin)
        assert made.status_code == 201, made.text
        return {"token_id": made.json()["id"]}
    if route == "DELETE /api/v1/users/{user}":
        name = unique("gone")
        made = http.post(
            "/api/v1/users", json={"name": name, "role": "viewer", "kind": "service"}, headers=admin
        )
        assert made.status_code == 201, made.text
        return {"user": name}
    if route == "DELETE /api/v1/tools/{tool_id}":
        tool = unique("gone")
        made = http.post("/api/v1/tools", json=_tool(tool), headers=admin)
        assert made.status_code == 201, made.text
        return {"tool_id": tool}
    if route == "DELETE /api/v1/policies/{policy_id}":
        policy = unique("gone")
        made = http.post("/api/v1/policies", json={"id": policy}, headers=admin)
        assert made.status_code == 201, made.text
        return {"policy_id": policy}
    if route == "DELETE /api/v1/agent-catalog/{recipe_id}":
        recipe = unique("gone")
        made = http.post("/api/v1/agent-catalog", json=_recipe(recipe), headers=admin)
        assert made.status_code == 201, made.text
        return {"recipe_id": recipe}
    if route == "DELETE /api/v1/memory/{memory_id}":
        made = http.post(
            "/api/v1/memory",
            json={"agent_id": world.params["agent_id"], "text": "gone"},
            headers=admin,
        )
        assert made.status_code == 201, made.text
        return {"memory_id": made.json()["id"]}
    if route == "DELETE /api/v1/alerts/silences/{silence_id}":
        made = http.post(
            "/api/v1/alerts/silences",
            json={"matchers": {"app": world.params["app"]}, "duration": 60},
            headers=admin,
        )
        assert made.status_code == 201, made.text
        return {"silence_id": made.json()["id"]}
    if route == "POST /api/v1/nodes/{node}/revoke":
        node = unique("revoked")
        world.server.node_token(node)
        return {"node": node}
    if route == "DELETE /api/v1/tenants/{tenant}":
        name = unique("gone")
        world.server.mint("viewer", name)
        return {"tenant": name}
    assert route == "POST /api/v1/tokens/rotate", route
    return {}


_ON_THE_SPARE = {
    "POST /api/v1/nodes/{node}/drain",
    "POST /api/v1/nodes/{node}/undrain",
    "POST /api/v1/nodes/{node}/allow",
}


def _ghost(value: str) -> str:
    """A value of the same shape that names nothing: its last part's hex digits shifted."""
    cut = max(value.rfind("-"), value.rfind(":"), value.rfind("/")) + 1
    shifted = "".join(
        "0123456789abcdef"[(int(c, 16) + 1) % 16] if c in "0123456789abcdef" else c
        for c in value[cut:]
    )
    return value[:cut] + shifted


def _params(world: World, route: str, http: httpx.Client) -> dict[str, str]:
    """The path parameters of the route: tenant A's objects (a new one where the
    route destroys it)."""
    params = dict(world.params)
    if route.startswith(("GET /api/v1/snapshots/", "POST /api/v1/apps/{app}/snapshots/")):
        params["digest"] = params["snapshot"]
    if route in _ON_THE_SPARE:
        params["node"] = world.spare  # not the node with tenant A's instance
    if ROUTES[route].fresh:
        params.update(_fresh(world, route, http))
    return params


def _call(
    http: httpx.Client, world: World, route: str, token: str | None, params: dict[str, str]
) -> httpx.Response:
    method, path = _split(route)
    url = path.format(**params)
    kwargs = _request(world, method, path)
    headers = {**kwargs.pop("headers", {}), **(bearer(token) if token else {})}
    if ROUTES[route].stream:
        with http.stream(method, url, headers=headers, **kwargs) as response:
            if response.status_code >= 400:
                response.read()
            return response
    return http.request(method, url, headers=headers, **kwargs)


# -- fixtures --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """A server of its own (its fake nodes take instances; the cells drain and revoke),
    long leases: the fake nodes do not heartbeat; a model server that always says OK."""
    with (
        running_server(tmp_path_factory.mktemp("authz"), lease_ttl=120.0) as server,
        model_server(default=say("OK")) as llm,
    ):
        yield asyncio.run(_build(server, llm.url))


@pytest.fixture(scope="module")
def http(world: World) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=world.server.base_url, timeout=10.0) as client:
        yield client


def _ok(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, (response.request.url, response.text)
    body: dict[str, Any] = response.json()
    return body


async def _build(server: RunningServer, model_url: str) -> World:
    nodes = FakeNodes(server)
    try:
        return await _objects(server, nodes, model_url)
    finally:
        await nodes.close()


async def _objects(server: RunningServer, nodes: FakeNodes, model_url: str) -> World:
    tenant = unique("tenant-a")
    admin = bearer(server.token("admin", tenant))
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
        node = await nodes.register(unique("node"))
        # an artifact, and an app of it with one ACTIVE instance on the node
        data = os.urandom(256)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        _ok(
            await http.post(
                "/api/v1/artifacts", content=data, headers={**admin, DIGEST_HEADER: digest}
            ),
            201,
        )
        app = unique("app")
        deployment = _ok(
            await http.post(
                f"/api/v1/apps/{app}/deployments",
                json={"digest": digest, "spec": spec_for(app), "instances": 1},
                headers=admin,
            ),
            201,
        )

        async def placed() -> list[dict[str, Any]]:
            listed = await http.get("/api/v1/instances", params={"app": app}, headers=admin)
            found: list[dict[str, Any]] = listed.json()
            return found

        (instance,) = await eventually(placed, "a placement")
        await nodes.bring_up(instance["key"])
        target = await nodes.register(unique("target"))
        spare = await nodes.register(unique("spare"))
        key = _ok(
            await http.post(
                f"/api/v1/apps/{app}/public-keys", json={"public_key": _pubkey()}, headers=admin
            ),
            201,
        )
        token = _ok(
            await http.post("/api/v1/tokens", json={"role": "viewer", "name": "t"}, headers=admin),
            201,
        )
        # a sandbox the node created, and one execution in it
        own = bearer(server.node_token(node))
        queue = unique("q")
        created = _ok(
            await http.post(
                "/api/v1/tasks",
                json={"type": "vm:create", "payload": {"name": "box"}, "queue": queue},
                headers=admin,
            ),
            201,
        )
        vm_id = created["payload"]["vm_id"]
        claim = {"node": node, "drivers": ["process"], "queues": [queue], "wait": 0}
        _ok(await http.post("/api/v1/tasks/claim", json=claim, headers=own), 200)
        result = {"vm_id": vm_id, "name": "box", "status": "running", "driver": "bwrap"}
        done = {"node": node, "attempt": 1, "result": {**result, "isolated": True}}
        _ok(
            await http.post(f"/api/v1/tasks/{created['id']}/complete", json=done, headers=own),
            200,
        )
        execute = {"vm_id": vm_id, "command": "echo", "args": ["hi"]}
        _ok(
            await http.post(
                "/api/v1/tasks",
                json={"type": "vm:execute", "payload": execute, "queue": queue},
                headers=admin,
            ),
            201,
        )
        got = _ok(await http.post("/api/v1/tasks/claim", json=claim, headers=own), 200)
        now = time.time()
        ran = {
            **execute,
            "exit_code": 0,
            "stdout": "hi\n",
            "stderr": "",
            "started_at": now - 0.01,
            "finished_at": now,
        }
        _ok(
            await http.post(
                f"/api/v1/tasks/{got['id']}/complete",
                json={"node": node, "attempt": 1, "result": ran},
                headers=own,
            ),
            200,
        )
        executions = await http.get(f"/api/v1/sandboxes/{vm_id}/executions", headers=admin)
        (execution,) = executions.json()
        # a snapshot of the instance, then a migration of it
        state = os.urandom(128)
        snapshot = _ok(
            await http.post(
                "/api/v1/snapshots",
                content=state,
                headers={
                    **own,
                    DIGEST_HEADER: "sha256:" + hashlib.sha256(state).hexdigest(),
                    "X-Aether-Instance": instance["key"],
                },
            ),
            201,
        )
        user = _ok(
            await http.post(
                "/api/v1/users",
                json={
                    "name": unique("member"),
                    "role": "viewer",
                    "password": "a member's password",
                },
                headers=admin,
            ),
            201,
        )
        model = _ok(
            await http.post(
                "/api/v1/models", json=_model_body(unique("model"), model_url), headers=admin
            ),
            201,
        )
        _ok(
            await http.put(
                f"/api/v1/secrets/{model['name']}", json={"value": "tenant A's"}, headers=admin
            ),
            201,
        )
        tool = _ok(await http.post("/api/v1/tools", json=_tool(unique("tool")), headers=admin), 201)
        policy = _ok(
            await http.post(
                "/api/v1/policies", json={"id": unique("policy"), "tools": ["*"]}, headers=admin
            ),
            201,
        )
        recipe = _ok(
            await http.post("/api/v1/agent-catalog", json=_recipe(unique("recipe")), headers=admin),
            201,
        )
        agent = _ok(
            await http.post(
                "/api/v1/agents",
                json={"name": unique("agent"), "model": model["ref"], "tool_ids": [tool["id"]]},
                headers=admin,
            ),
            201,
        )
        memory = _ok(
            await http.post(
                "/api/v1/memory",
                json={"agent_id": agent["id"], "text": "tenant A's secret memory"},
                headers=admin,
            ),
            201,
        )
        run = _ok(  # no node drives it: it stays queued
            await http.post(
                f"/api/v1/agents/{agent['id']}/runs",
                json={
                    "input": "tenant A's secret question",
                    "background": True,
                    "thread_id": unique("thread"),
                },
                headers=admin,
            ),
            202,
        )
        # a slice of tenant A's: one entry point of an instance on the node (its url
        # reaches nothing: the matrix never gets as far as calling it)
        slice_name = unique("slice")
        endpoint = endpoint_key(cluster_name(slice_name, tenant), "price", node, 0)
        value: dict[str, Any] = {"app": cluster_name(slice_name, tenant), "entry": "price"}
        value["node"] = node
        value |= {"n": 0, "version": 1, "url": "http://127.0.0.1:9", "schema": None}
        server.run(server.ctx.store.put(endpoint, json.dumps(value).encode()))
        blueprint = _ok(
            await http.put(
                f"/api/v1/blueprint-files/{unique('shop')}",
                json={"apps": {app: {"instances": 1}}},
                headers=admin,
            ),
            200,
        )
        migration = _ok(
            await http.post(
                "/api/v1/instances/migrate",
                json={"instance": instance["key"], "to": target},
                headers=admin,
            ),
            202,
        )
    return World(
        server=server,
        tenant=tenant,
        other=server.new_tenant(),
        node=node,
        spare=spare,
        model_url=model_url,
        params={
            "app": app,
            "digest": digest,
            "deployment_id": deployment["id"],
            "key_id": key["id"],
            "token_id": token["id"],
            "task_id": created["id"],
            "sandbox_id": vm_id,
            "execution_id": execution["id"],
            "snapshot": snapshot["digest"],
            "migration_id": migration["id"],
            "user": user["name"],
            "name": model["name"],
            "tool_id": tool["id"],
            "policy_id": policy["id"],
            "recipe_id": recipe["id"],
            "agent_id": agent["id"],
            "memory_id": memory["id"],
            "agent": agent["id"],
            "run_id": run["id"],
            "thread_id": run["thread_id"],
            "seq": "1",
            "request_id": "0123456789abcdef",
            "step": "1",
            "instance": instance["key"],
            "node": node,
            "app_version": "nothing@1",
            "n": "0",
            "tenant": tenant,
            "slice": slice_name,
            "entry": "price",
            "blueprint": blueprint["name"],
        },
        callers={
            "anonymous": None,
            "viewer": server.token("viewer", tenant),
            "operator": server.token("operator", tenant),
            "admin": server.token("admin", tenant),
            "cluster": server.admin_token,
            "cluster-operator": server.token("operator"),
            "node": server.node_token(node),
            # joined, never registered: nothing is placed on it, so it needs nothing
            "other-node": server.node_token(unique("outsider")),
            "join": server.join_token,
        },
    )


# -- the checks ------------------------------------------------------------------------


def test_the_table_lists_every_route_of_the_document(world: World, http: httpx.Client) -> None:
    """A route the table does not classify fails here (and a stale row too)."""
    document = http.get("/openapi.json").json()
    documented = {
        f"{method.upper()} {path}"
        for path, operations in document["paths"].items()
        if path.startswith("/api/v1/")
        for method in operations
        if method in ("get", "head", "post", "put", "patch", "delete")
    }
    assert sorted(documented - ROUTES.keys()) == [], "unclassified routes: add them to ROUTES"
    assert sorted(ROUTES.keys() - documented) == [], "ROUTES lists routes the server lacks"


def _cells() -> Iterator[Any]:
    for route in ROUTES:
        for caller in CALLERS:
            yield pytest.param(route, caller, id=f"{route} {caller}")


def _owned() -> Iterator[Any]:
    for route, rule in ROUTES.items():
        if rule.owned:
            yield pytest.param(route, id=f"{route} other-tenant-admin")


@pytest.mark.parametrize("route", list(_owned()))
def test_another_tenant_gets_404_for_tenant_a_s_objects(
    world: World, http: httpx.Client, route: str
) -> None:
    """The same answer as for an object that does not exist: no hint it does."""
    rule = ROUTES[route]
    params = _params(world, route, http)
    if rule.mine:
        _own_name_answers_as_a_fresh_one(world, http, route, params)
        return
    response = _call(http, world, route, world.other, params)
    assert response.status_code == 404, (response.status_code, response.text)
    if response.request.method == "HEAD":
        return
    body = response.json()
    assert body["code"] == "not_found", body
    named = set(re.findall(r"{(\w+)}", route))
    ghosts = {name: _ghost(value) if name in named else value for name, value in params.items()}
    unknown = _call(http, world, route, world.other, ghosts)
    assert unknown.status_code == 404, (unknown.status_code, unknown.text)
    message = unknown.json()["message"]
    for name in named:
        if len(ghosts[name]) > 2:  # a step number's digit could stand inside an id
            message = message.replace(ghosts[name], params[name])
    assert body["message"] == message, "the answer differs from an unknown object's"


def _own_name_answers_as_a_fresh_one(
    world: World, http: httpx.Client, route: str, params: dict[str, str]
) -> None:
    """A tenant with nothing (so B's lists stay empty) names tenant A's app, then a name
    nobody has: the same status, code and message, never a 409 or tenant A's name."""
    named = set(re.findall(r"{(\w+)}", route))
    ghosts = {name: _ghost(value) if name in named else value for name, value in params.items()}
    answers: list[tuple[int, Any]] = []
    for values in (params, ghosts):
        response = _call(http, world, route, world.server.new_tenant(), values)
        assert response.status_code < 500 and response.status_code != 409, response.text
        assert world.tenant not in response.text, response.text
        body = response.json()
        if response.status_code >= 400:
            message = body["message"]
            for name in named:
                message = message.replace(ghosts[name], params[name])
            body = {"code": body["code"], "message": message}
        else:
            body = None  # a new row of the caller's own: its ids differ
        answers.append((response.status_code, body))
    assert answers[0] == answers[1], "tenant A's app name answers unlike an unknown one"


@pytest.mark.parametrize(("route", "caller"), list(_cells()))
def test_each_role_gets_what_its_role_allows(
    world: World, http: httpx.Client, route: str, caller: str
) -> None:
    rule = ROUTES[route]
    token = world.token(caller)
    if route == "POST /api/v1/tokens/rotate" and caller in ("viewer", "operator", "admin"):
        token = world.server.mint(caller, world.tenant)  # rotating revokes the calling token
    elif route == "POST /api/v1/tokens/rotate" and caller == "cluster":
        token = world.server.mint("admin")
    elif route == "POST /api/v1/tokens/rotate" and caller == "cluster-operator":
        token = world.server.mint("operator")
    response = _call(http, world, route, token, _params(world, route, http))
    status = response.status_code
    assert status < 500, (status, response.text)
    if rule.role == "public":  # whatever it answers, never for want of a role
        json = "json" in response.headers.get("content-type", "")
        body = response.json() if json else {}
        code = body.get("code") if isinstance(body, dict) else None
        assert code not in ("unauthorized", "forbidden"), response.text
    elif caller == "anonymous":
        assert status == 401, (status, response.text)
        assert response.request.method == "HEAD" or response.json()["code"] == "unauthorized"
    elif caller not in _PASSES[rule.role]:
        assert status == 403, (status, response.text)
        assert response.request.method == "HEAD" or response.json()["code"] == "forbidden"
    else:
        assert status not in (401, 403), (status, response.text)


# Tenant A's objects named in a body or a query rather than the path: tenant B's admin
# gets the answer an object that does not exist gets (404, 400, or an empty list).
# (An artifact's bytes are not here: uploading or assembling them proves B has them.)
_NAMED_ELSEWHERE: dict[str, Callable[[dict[str, str]], dict[str, Any]]] = {
    "POST /api/v1/instances/migrate": lambda p: {"json": {"instance": p["instance"]}},
    "POST /api/v1/rebalance": lambda p: {"json": {"app": p["app"]}},
    "POST /api/v1/tasks": lambda p: {
        "json": {"type": "vm:execute", "payload": {"vm_id": p["sandbox_id"], "command": "echo"}}
    },
    "POST /api/v1/apps/{app}/deployments": lambda p: {
        "json": {"digest": p["digest"], "spec": spec_for(p["own_app"])}
    },
    "GET /api/v1/instances": lambda p: {"params": {"app": p["app"]}},
    "GET /api/v1/endpoints": lambda p: {"params": {"app": p["app"]}},
    "GET /api/v1/snapshots": lambda p: {"params": {"app": p["app"]}},
    "GET /api/v1/migrations": lambda p: {"params": {"app": p["app"]}},
    "GET /api/v1/metrics/rollups": lambda p: {"params": {"app": p["app"]}},
    "GET /api/v1/events": lambda p: {"params": {"target": p["app"]}},
    "POST /api/v1/agents": lambda p: {
        "json": {"name": unique("b-agent"), "model": f"model://{p['name']}"}
    },
    "POST /api/v1/agent-catalog": lambda p: {
        "json": {
            "id": unique("b-recipe"),
            "name": "b",
            "tool_ids": [p["tool_id"]],
            "open": ["model"],
        }
    },
    "GET /api/v1/memory/search": lambda p: {"params": {"agent_id": p["agent_id"], "q": "secret"}},
    "GET /api/v1/runs": lambda p: {"params": {"agent": p["agent"]}},
}


@pytest.mark.parametrize("route", list(_NAMED_ELSEWHERE))
def test_another_tenant_naming_tenant_a_s_objects_elsewhere_learns_nothing(
    world: World, http: httpx.Client, route: str
) -> None:
    method, path = _split(route)
    own_app = unique("b-app")
    real = {**world.params, "own_app": own_app}
    ghosts = {**{name: _ghost(value) for name, value in world.params.items()}, "own_app": own_app}
    answers: list[tuple[int, Any]] = []
    for params in (real, ghosts):
        url = path.format(app=own_app)
        kwargs = _NAMED_ELSEWHERE[route](params)
        headers = bearer(world.other)
        if ROUTES[route].stream:
            with http.stream(method, url, headers=headers, **kwargs) as response:
                answers.append((response.status_code, response.headers["content-type"]))
            continue
        response = http.request(method, url, headers=headers, **kwargs)
        assert response.status_code in (200, 400, 404), (response.status_code, response.text)
        body = response.json()
        if response.status_code != 200:
            message = body["message"]
            for name, ghost in ghosts.items():
                message = message.replace(ghost, real[name])
            body = {"code": body["code"], "message": message}
        answers.append((response.status_code, body))
    assert answers[0] == answers[1], "tenant A's object answers unlike an unknown one"
    assert answers[0][0] != 200 or answers[0][1] in ([], None) or ROUTES[route].stream, answers


_SECRETS = ("app", "digest", "deployment_id", "key_id", "token_id", "task_id", "sandbox_id")
_SECRETS_TOO = (
    "execution_id",
    "snapshot",
    "migration_id",
    "instance",
    "tenant",
    "tool_id",
    "policy_id",
    "name",
    "recipe_id",
    "agent_id",
    "memory_id",
    "run_id",
    "thread_id",
    "slice",
    "blueprint",
)


# Tenant B's own audit events record the requests B made, and the cross-tenant cells
# above have B name tenant A's objects in its paths: echoing what B typed is no leak.
_ECHOES = frozenset({"GET /api/v1/audit"})


def _views() -> Iterator[Any]:
    for route, rule in ROUTES.items():
        method, path = _split(route)
        if route in _ECHOES:
            continue
        if method == "GET" and "{" not in path and not rule.stream and rule.role != "cluster":
            yield pytest.param(route, id=f"{route} other-tenant-admin")


@pytest.mark.parametrize("route", list(_views()))
def test_no_view_shows_another_tenant_anything_of_tenant_a(
    world: World, http: httpx.Client, route: str
) -> None:
    """Lists and cluster views, as tenant B's admin: nothing names tenant A's objects."""
    _, path = _split(route)
    response = http.get(path, headers=bearer(world.other))
    assert response.status_code in (200, 400), (response.status_code, response.text)
    for name in (*_SECRETS, *_SECRETS_TOO):
        value = world.params[name].removeprefix("sha256:")
        assert value not in response.text, f"{name} {value} shows in {response.text[:2000]}"
