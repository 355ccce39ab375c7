"""``aether slice ls|get|call``, driven as a user does (the real command in a
subprocess) against a real server whose slice is a stand-in instance speaking the
slice wire protocol."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from aether.model.cluster import endpoint_key
from aether.model.names import cluster_name
from tests.support.api import unique
from tests.support.cli import run_aether
from tests.support.server import RunningServer, running_server
from tests.support.slice_standin import ENTRIES, SliceStandIn, endpoint_value, slice_standin


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(tmp_path_factory.mktemp("aether-slices-cli")) as running:
        yield running


@pytest.fixture(scope="module")
def standin() -> Iterator[SliceStandIn]:
    with slice_standin("cli") as running:
        yield running


def aether(
    srv: RunningServer, home: Path, *args: str, token: str
) -> subprocess.CompletedProcess[str]:
    return run_aether(home, *args, server=srv.base_url, token=token)


def _slice(srv: RunningServer, standin: SliceStandIn, tenant: str) -> str:
    name = unique("catalog")
    cluster = cluster_name(name, tenant)
    for entry in ENTRIES:
        key = endpoint_key(cluster, entry, "node-1", 0)
        srv.run(srv.ctx.store.put(key, endpoint_value(cluster, entry, "node-1", 0, standin.url)))
    return name


def test_ls_get_and_call(srv: RunningServer, standin: SliceStandIn, tmp_path: Path) -> None:
    tenant = unique("team")
    name = _slice(srv, standin, tenant)
    viewer, operator = srv.token("viewer", tenant), srv.token("operator", tenant)

    listed = aether(srv, tmp_path, "slice", "ls", token=viewer)
    assert listed.returncode == 0, listed.stderr
    assert "NAME" in listed.stdout and name in listed.stdout and "add,boom" in listed.stdout
    as_json = aether(srv, tmp_path, "slice", "ls", "--format", "json", token=viewer)
    assert json.loads(as_json.stdout) == {
        "slices": [{"name": name, "entries": sorted(ENTRIES), "instances_active": 1}]
    }

    got = aether(srv, tmp_path, "slice", "get", name, token=viewer)
    assert got.returncode == 0, got.stderr
    assert "add(a: integer, b: integer) -> integer  [idempotent]" in got.stdout
    assert f"node-1:0  v1  {standin.url}" in got.stdout
    got_json = aether(srv, tmp_path, "slice", "get", name, "--format", "json", token=viewer)
    assert json.loads(got_json.stdout)["instances"][0]["url"] == standin.url

    by_kwargs = aether(
        srv, tmp_path, "slice", "call", name, "add", "--json", '{"a": 40, "b": 2}', token=operator
    )
    assert by_kwargs.returncode == 0, by_kwargs.stderr
    assert by_kwargs.stdout.strip() == "42"
    by_args = aether(
        srv, tmp_path, "slice", "call", name, "echo", "--json", '[1, "x"]',
        "--format", "json", token=operator,
    )  # fmt: skip
    assert by_args.returncode == 0, by_args.stderr
    assert json.loads(by_args.stdout) == {"result": {"who": "cli", "args": [1, "x"], "kwargs": {}}}
    bare = aether(srv, tmp_path, "slice", "call", name, "echo", token=operator)
    assert bare.returncode == 0 and json.loads(bare.stdout)["args"] == []


def test_exit_codes(srv: RunningServer, standin: SliceStandIn, tmp_path: Path) -> None:
    tenant = unique("team")
    name = _slice(srv, standin, tenant)
    operator = srv.token("operator", tenant)

    missing = aether(srv, tmp_path, "slice", "get", "nobody", token=operator)
    assert missing.returncode == 41 and "slice 'nobody' not found" in missing.stderr
    theirs = aether(srv, tmp_path, "slice", "get", name, token=srv.new_tenant())
    assert theirs.returncode == 41
    no_entry = aether(srv, tmp_path, "slice", "call", name, "nothing", token=operator)
    assert no_entry.returncode == 41

    viewer = aether(srv, tmp_path, "slice", "call", name, "add", token=srv.token("viewer", tenant))
    assert viewer.returncode == 42 and "operator" in viewer.stderr
    wrong = aether(
        srv, tmp_path, "slice", "call", name, "add", "--json", '{"a": "x", "b": 1}', token=operator
    )
    assert wrong.returncode == 42 and "a: Input should be a valid integer" in wrong.stderr
    wrong_json = aether(
        srv, tmp_path, "slice", "call", name, "add", "--json", '{"a": "x", "b": 1}',
        "--format", "json", token=operator,
    )  # fmt: skip
    assert wrong_json.returncode == 42
    assert json.loads(wrong_json.stdout)["error"]["code"] == "bad_request"

    for bad in ("5", "not json", '"text"'):
        refused = aether(srv, tmp_path, "slice", "call", name, "add", "--json", bad, token=operator)
        assert refused.returncode == 2 and "--json" in refused.stderr, refused.stderr

    boom = aether(srv, tmp_path, "slice", "call", name, "boom", token=operator)
    assert boom.returncode == 40 and "ZeroDivisionError" in boom.stderr  # a 502
    late = aether(
        srv, tmp_path, "slice", "call", name, "slow", "--json", '{"seconds": 5}',
        "--timeout", "0.3", token=operator,
    )  # fmt: skip
    assert late.returncode == 40 and "deadline" in late.stderr  # a 504
    unreachable = run_aether(
        tmp_path, "slice", "ls", server="http://127.0.0.1:9", token=operator, timeout=60
    )
    assert unreachable.returncode == 40
