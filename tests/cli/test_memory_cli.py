"""``aether memory``: an agent's memories, driven as a user does (the real command in a
subprocess) against a real server and the scripted model server's embeddings."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.api import bearer, make_agent, unique
from tests.support.cli import run_aether
from tests.support.model_server import ModelServer, model_server
from tests.support.server import RunningServer, running_server


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(tmp_path_factory.mktemp("aether-memory-cli")) as running:
        yield running


@pytest.fixture
def llm() -> Iterator[ModelServer]:
    with model_server() as server:
        yield server


def aether(
    srv: RunningServer, home: Path, *args: str, token: str
) -> subprocess.CompletedProcess[str]:
    return run_aether(home, *args, server=srv.base_url, token=token)


def test_add_search_ls_rm(srv: RunningServer, tmp_path: Path) -> None:
    tenant = unique("team")
    operator = srv.token("operator", tenant)
    agent = make_agent(srv.base_url, srv.token("admin", tenant))
    added = aether(
        srv, tmp_path, "memory", "add", agent, "the staging database lives on node n7",
        "--format", "json", token=operator,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    item = json.loads(added.stdout)
    assert item["agent_id"] == agent and item["thread_id"] is None
    threaded = aether(
        srv, tmp_path, "memory", "add", agent, "this thread: the staging database is slow",
        "--thread", "th1", token=operator,
    )  # fmt: skip
    assert threaded.returncode == 0 and "thread th1" in threaded.stdout, threaded.stderr
    viewer = srv.token("viewer", tenant)
    found = aether(srv, tmp_path, "memory", "search", agent, "staging database", token=viewer)
    assert found.returncode == 0, found.stderr
    assert "node n7" in found.stdout and "is slow" not in found.stdout  # no thread: shared only
    both = aether(
        srv, tmp_path, "memory", "search", agent, "staging database", "--thread", "th1",
        "--format", "json", token=viewer,
    )  # fmt: skip
    assert len(json.loads(both.stdout)["hits"]) == 2
    listed = aether(srv, tmp_path, "memory", "ls", agent, "--format", "json", token=viewer)
    assert [m["id"] for m in json.loads(listed.stdout)["items"]] == [item["id"]]
    removed = aether(srv, tmp_path, "memory", "rm", item["id"], token=operator)
    assert removed.returncode == 0 and f"memory {item['id']} deleted" in removed.stdout
    again = aether(srv, tmp_path, "memory", "rm", item["id"], token=operator)
    assert again.returncode != 0 and "not found" in again.stderr


def test_vector_search_with_an_embedding_model(
    srv: RunningServer, llm: ModelServer, tmp_path: Path
) -> None:
    tenant = unique("team")
    admin = srv.token("admin", tenant)
    model = unique("embed")
    made = httpx.post(
        f"{srv.base_url}/api/v1/models",
        json={"name": model, "base_url": llm.url, "model_id": "test-model"},
        headers=bearer(admin),
    )
    assert made.status_code == 201, made.text
    agent = make_agent(srv.base_url, admin)
    for text in ("a quiet lake in the mountains", "quarterly revenue report"):
        assert aether(srv, tmp_path, "memory", "add", agent, text, token=admin).returncode == 0
    found = aether(
        srv, tmp_path, "memory", "search", agent, "mountain lake", "--mode", "vector",
        "--embedding-model", model, "--format", "json", token=admin,
    )  # fmt: skip
    assert found.returncode == 0, found.stderr
    hits = json.loads(found.stdout)["hits"]
    assert hits[0]["text"] == "a quiet lake in the mountains" and hits[0]["vector_score"] > 0
    refused = aether(
        srv, tmp_path, "memory", "search", agent, "lake", "--mode", "vector", token=admin
    )
    assert refused.returncode == 42, (refused.returncode, refused.stderr)  # a 400
    assert "embedding model" in refused.stderr
