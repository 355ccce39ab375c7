"""``/api/v1/slices``: a tenant's slices read from the state store's endpoints, and
``:call`` over the slice wire protocol to real stand-in instances (two TCP servers
speaking ``aether.slices.wire``), against a real server."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from aether.errors import (
    DeadlineExceededError,
    NoEndpointError,
    UpstreamFailedError,
    error_for,
)
from aether.model.cluster import endpoint_key
from aether.model.names import cluster_name
from tests.support.api import assert_envelope, bearer, unique
from tests.support.server import RunningServer
from tests.support.slice_standin import ENTRIES, SliceStandIn, endpoint_value, slice_standin


@dataclass
class Shop:
    tenant: str
    slice: str
    standins: tuple[SliceStandIn, SliceStandIn]


def _write_endpoints(
    server: RunningServer, tenant: str, app: str, url: str, node: str, n: int, entries: list[str]
) -> None:
    cluster = cluster_name(app, tenant)
    for entry in entries:
        value = endpoint_value(cluster, entry, node, n, url)
        server.run(server.ctx.store.put(endpoint_key(cluster, entry, node, n), value))


@pytest.fixture(scope="module")
def shop(server: RunningServer) -> Iterator[Shop]:
    """Tenant A's slice with two ACTIVE stand-in instances on two nodes."""
    tenant, app = unique("team"), unique("catalog")
    with slice_standin("one") as one, slice_standin("two") as two:
        for n, (standin, node) in enumerate(((one, "node-a"), (two, "node-b"))):
            _write_endpoints(server, tenant, app, standin.url, node, n, list(ENTRIES))
        yield Shop(tenant, app, (one, two))
        server.run(server.ctx.store.delete(f"endpoints/{cluster_name(app, tenant)}/", prefix=True))


@pytest.fixture
def api(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        yield client


def _call(api: httpx.Client, token: str, name: str, entry: str, body: object) -> httpx.Response:
    return api.post(f"/api/v1/slices/{name}/{entry}:call", json=body, headers=bearer(token))


def test_list_and_get_show_entries_schemas_and_instances(
    server: RunningServer, api: httpx.Client, shop: Shop
) -> None:
    viewer = server.token("viewer", shop.tenant)
    listed = api.get("/api/v1/slices", headers=bearer(viewer))
    assert listed.status_code == 200, listed.text
    assert listed.json() == [
        {"name": shop.slice, "entries": sorted(ENTRIES), "instances_active": 2}
    ]
    got = api.get(f"/api/v1/slices/{shop.slice}", headers=bearer(viewer))
    assert got.status_code == 200, got.text
    body = got.json()
    assert body["name"] == shop.slice
    assert [e["name"] for e in body["entries"]] == sorted(ENTRIES)
    add = next(e for e in body["entries"] if e["name"] == "add")
    assert add["schema"] == ENTRIES["add"]
    one, two = shop.standins
    assert body["instances"] == [
        {"node": "node-a", "n": 0, "version": 1, "url": one.url},
        {"node": "node-b", "n": 1, "version": 1, "url": two.url},
    ]


def test_another_tenant_sees_nothing_and_gets_the_unknown_slice_s_404(
    server: RunningServer, api: httpx.Client, shop: Shop
) -> None:
    other = server.new_tenant()
    assert api.get("/api/v1/slices", headers=bearer(other)).json() == []
    theirs = api.get(f"/api/v1/slices/{shop.slice}", headers=bearer(other))
    nobody = api.get("/api/v1/slices/nobody-has-this", headers=bearer(other))
    assert_envelope(theirs, 404, "not_found")
    assert_envelope(nobody, 404, "not_found")
    assert theirs.json()["message"] == nobody.json()["message"].replace(
        "nobody-has-this", shop.slice
    )
    called = _call(api, other, shop.slice, "add", {"kwargs": {"a": 1, "b": 2}})
    assert_envelope(called, 404, "not_found")
    assert called.json()["message"] == theirs.json()["message"]
    # a default-tenant caller does not see tenant A's slice either
    assert shop.slice not in api.get("/api/v1/slices", headers=bearer(server.admin_token)).text


def test_call_kwargs_args_and_round_robin(
    server: RunningServer, api: httpx.Client, shop: Shop
) -> None:
    operator = server.token("operator", shop.tenant)
    by_kwargs = _call(api, operator, shop.slice, "add", {"kwargs": {"a": 2, "b": 40}})
    assert by_kwargs.status_code == 200, by_kwargs.text
    assert by_kwargs.json() == {"result": 42}
    by_args = _call(api, server.token("admin", shop.tenant), shop.slice, "add", {"args": [1, 2]})
    assert by_args.status_code == 200 and by_args.json() == {"result": 3}
    who = {
        _call(api, operator, shop.slice, "echo", {"args": ["x"]}).json()["result"]["who"]
        for _ in range(4)
    }
    assert who == {"one", "two"}  # round robin over both instances
    echoed = _call(api, operator, shop.slice, "echo", {"kwargs": {"k": [1, {"v": None}]}})
    assert echoed.json()["result"]["kwargs"] == {"k": [1, {"v": None}]}
    bare = _call(api, operator, shop.slice, "echo", {})
    assert bare.status_code == 200 and bare.json()["result"]["args"] == []
    # the server makes plain calls only: no control key on the wire
    assert all("key" not in call for s in shop.standins for call in s.calls)


def test_viewer_may_read_but_not_call(server: RunningServer, api: httpx.Client, shop: Shop) -> None:
    viewer = server.token("viewer", shop.tenant)
    refused = _call(api, viewer, shop.slice, "add", {"kwargs": {"a": 1, "b": 2}})
    assert_envelope(refused, 403, "forbidden")
    assert api.post(f"/api/v1/slices/{shop.slice}/add:call", json={}).status_code == 401


def test_bad_input_is_a_400_envelope(server: RunningServer, api: httpx.Client, shop: Shop) -> None:
    operator = server.token("operator", shop.tenant)
    wrong = _call(api, operator, shop.slice, "add", {"kwargs": {"a": "one", "b": 2}})
    assert wrong.status_code == 400, wrong.text
    body = wrong.json()
    assert body["code"] == "bad_request" and "a: Input should be a valid integer" in body["message"]
    assert body["details"] == [
        {"type": "int_type", "loc": ["a"], "msg": "Input should be a valid integer", "input": "one"}
    ]
    bad: object
    for bad in ([1, 2], "text", {"args": {"a": 1}}, {"kwargs": [1]}, {"argz": []}):
        refused = _call(api, operator, shop.slice, "add", bad)
        assert_envelope(refused, 400, "bad_request")
    for timeout in (0, -1, 301, "5", True):
        refused = _call(api, operator, shop.slice, "echo", {"timeout": timeout})
        assert_envelope(refused, 400, "bad_request")
    raw = api.post(
        f"/api/v1/slices/{shop.slice}/add:call",
        content=b"{not json",
        headers={**bearer(operator), "content-type": "application/json"},
    )
    assert_envelope(raw, 400, "bad_request")
    control = _call(api, operator, shop.slice, "$describe", {})
    assert_envelope(control, 400, "bad_request")
    assert "control entry" in control.json()["message"]
    assert_envelope(_call(api, operator, "Not_A_Name", "add", {}), 400, "bad_request")


def test_missing_entry_and_upstream_failures(
    server: RunningServer, api: httpx.Client, shop: Shop
) -> None:
    operator = server.token("operator", shop.tenant)
    missing = _call(api, operator, shop.slice, "nothing", {})
    assert_envelope(missing, 404, "not_found")
    assert "no entry point 'nothing'" in missing.json()["message"]
    boom = _call(api, operator, shop.slice, "boom", {})
    assert_envelope(boom, 500, "internal")  # the entry point raised: as a router answers
    assert "ZeroDivisionError" in boom.json()["message"]
    late = _call(api, operator, shop.slice, "slow", {"kwargs": {"seconds": 5}, "timeout": 0.3})
    assert_envelope(late, 504, "deadline_exceeded")
    draining = _call(api, operator, shop.slice, "drain", {})  # not idempotent: not retried
    assert_envelope(draining, 502, "upstream_failed")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_no_reachable_instance_is_a_503_and_a_lost_one_is_skipped(
    server: RunningServer, api: httpx.Client
) -> None:
    tenant, app = unique("team"), unique("cart")
    operator = server.token("operator", tenant)
    dead = f"http://127.0.0.1:{_closed_port()}"
    _write_endpoints(server, tenant, app, dead, "node-x", 0, ["add"])
    gone = _call(api, operator, app, "add", {"kwargs": {"a": 1, "b": 1}})
    assert_envelope(gone, 503, "no_endpoint")
    with slice_standin("alive") as alive:
        _write_endpoints(server, tenant, app, alive.url, "node-y", 0, ["add"])
        for _ in range(3):  # whichever the round robin starts with, the live one answers
            ok = _call(api, operator, app, "add", {"kwargs": {"a": 1, "b": 1}})
            assert ok.status_code == 200 and ok.json() == {"result": 2}, ok.text


def test_the_default_tenant_s_slice_by_its_plain_name(
    server: RunningServer, api: httpx.Client
) -> None:
    app = unique("pricing")
    with slice_standin("plain") as standin:
        _write_endpoints(server, "default", app, standin.url, "node-d", 0, ["add"])
        called = _call(api, server.admin_token, app, "add", {"args": [20, 22]})
        assert called.status_code == 200 and called.json() == {"result": 42}, called.text
        assert server.run(server.ctx.store.get(f"endpoints/{app}/add/node-d:0")) is not None
        server.run(server.ctx.store.delete(f"endpoints/{app}/", prefix=True))


def test_calls_are_audited(server: RunningServer, api: httpx.Client, shop: Shop) -> None:
    admin = server.token("admin", shop.tenant)
    assert _call(api, admin, shop.slice, "add", {"args": [1, 1]}).status_code == 200
    assert _call(api, server.token("viewer", shop.tenant), shop.slice, "add", {}).status_code == 403
    audit = api.get("/api/v1/audit", headers=bearer(admin))
    assert audit.status_code == 200, audit.text
    actions = [
        (e["action"], e["status"])
        for e in audit.json()["events"]
        if e["action"] == "POST /slices/{slice}/{entry}:call"
    ]
    assert ("POST /slices/{slice}/{entry}:call", 200) in actions
    assert ("POST /slices/{slice}/{entry}:call", 403) in actions


def test_the_client_turns_slice_envelopes_back_into_their_classes() -> None:
    for status, code, cls in (
        (503, "no_endpoint", NoEndpointError),
        (504, "deadline_exceeded", DeadlineExceededError),
        (502, "upstream_failed", UpstreamFailedError),
    ):
        error = error_for(status, code, "m")
        assert type(error) is cls and (error.status, error.code) == (status, code)
