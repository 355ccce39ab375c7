"""The OpenAPI document tells the truth: schemathesis checks the real answers against it.

Every documented operation is called with generated inputs and an admin token
(node routes with a node's own credential); each answer's status, content type
and body must be what the document says, and none may be a 5xx. Excluded, with
the reason:

* streams (``/metrics/stream``, ``/events``, ``/nodes/{node}/assignments``, logs with
  ``follow``):
  they do not end, so a body cannot be checked;
* ``/admin/backup/state`` and ``/gc``: they copy or collect the whole store;
* ``/diag/bundle``: it reads the whole cluster and waits up to ``wait`` seconds for
  nodes' parts (tests/e2e/test_diag_bundle.py checks it);
* ``/tokens/rotate`` and ``DELETE /tokens/…``: they would revoke the token the check runs with;
* ``/nodes/{node}/revoke``: it would cut off the node the other checks use.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support.api import bearer, deploy, unique, upload_random
from tests.support.server import RunningServer, running_server

_EXCLUDED = (
    r"^/api/v1/nodes/[^/]+/assignments$",
    r"^/api/v1/metrics/stream$",
    r"^/api/v1/events$",
    r"^/api/v1/admin/backup/state$",
    r"^/api/v1/gc$",
    r"^/api/v1/diag/bundle$",
    r"^/api/v1/tokens/",
    r"^/api/v1/nodes/[^/]+/revoke$",
)
# what a node calls, with its own credential
_NODE_ROUTE = re.compile(
    r"^/api/v1/(nodes/(register|[^/]+/(heartbeat|instances|logs|metrics|diag))"
    r"|tasks/(claim|[^/]+/(heartbeat|complete|fail)))$"
)


def _node_route(method: str, path: str) -> bool:
    return bool(_NODE_ROUTE.match(path)) or (method.upper(), path) == ("POST", "/api/v1/snapshots")


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server of its own: generated calls drain nodes and start drills."""
    with running_server(tmp_path_factory.mktemp("aether-openapi")) as running:
        yield running


def test_every_answer_conforms_to_the_document(fuzzed: RunningServer) -> None:
    server = fuzzed
    schema: Any = schemathesis.openapi.from_dict(
        httpx.get(f"{server.base_url}/openapi.json", timeout=60).json()
    )
    schema.config.update(base_url=server.base_url)
    for pattern in _EXCLUDED:
        schema = schema.exclude(path_regex=pattern)
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ]
    failures: list[str] = []
    operations = 0
    node_token = server.node_token(unique("fuzz-node"))

    for operation in schema.get_all_operations():
        op = operation.ok()
        operations += 1

        @settings(
            max_examples=8,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=op.as_strategy())
        def run(case: Any) -> None:
            if case.path.endswith("/logs"):
                case.query = {**(case.query or {}), "follow": "false"}
            token = node_token if _node_route(case.method, case.path) else server.admin_token
            response = case.call(headers={"Authorization": f"Bearer {token}"}, timeout=10)
            case.validate_response(response, checks=checks)

        try:
            run()
        except (Exception, BaseExceptionGroup) as exc:  # one report for all operations
            found = [exc, *(exc.exceptions if isinstance(exc, BaseExceptionGroup) else ())]
            said = " | ".join(f"{type(e).__name__}: {str(e)[:600]}" for e in found)
            failures.append(f"{op.method.upper()} {op.path}: {said}")
    assert operations > 40, f"only {operations} operations were checked"
    assert not failures, "\n\n".join(failures)


pytestmark = pytest.mark.timeout(300)


async def test_timestamps_in_answers_carry_their_timezone(server: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        app = unique("tz")
        digest = await upload_random(http, server.admin_token)
        created = await deploy(http, server.admin_token, app, digest, instances=0)
        assert created.status_code == 201, created.text
        assert created.json()["created_at"].endswith("+00:00"), created.json()
        task = await http.post(
            "/api/v1/tasks",
            json={"type": "vm:create", "payload": {"name": unique("tz")}},
            headers=bearer(server.admin_token),
        )
        assert task.status_code == 201, task.text
        got = await http.get(
            f"/api/v1/tasks/{task.json()['id']}", headers=bearer(server.admin_token)
        )
        assert got.json()["created_at"].endswith("+00:00"), got.json()
