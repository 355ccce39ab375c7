"""The egress guard on the server's calls a tenant chose: a model's base URL (its test
call and memory embeddings) at a loopback, metadata or private address is refused with
403 ``egress_denied`` by a server with the default ``AETHER_EGRESS_ALLOW`` (none)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from aether.server.settings import ServerSettings
from tests.support.api import bearer, make_agent, unique
from tests.support.model_server import ModelServer, model_server, say
from tests.support.server import RunningServer, running_server


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(tmp_path_factory.mktemp("aether-egress"), egress_allow="") as running:
        yield running


@pytest.fixture
def llm() -> Iterator[ModelServer]:
    with model_server() as server:
        yield server


def _add(http: httpx.Client, token: str, url: str) -> str:
    name = unique("gpt")
    body = {"name": name, "base_url": url, "model_id": "test-model"}
    made = http.post("/api/v1/models", json=body, headers=bearer(token))
    assert made.status_code == 201, made.text
    return name


@pytest.mark.parametrize(
    "url",
    [
        "LLM",  # the scripted model server itself, on 127.0.0.1
        "http://169.254.169.254/v1",  # the cloud metadata address
        "http://10.1.2.3:8000/v1",
        "http://[::1]:9/v1",
        "http://localhost:9/v1",
    ],
)
def test_a_default_server_refuses_a_model_at_a_non_public_address(
    guarded: RunningServer, llm: ModelServer, url: str
) -> None:
    url = llm.url if url == "LLM" else url
    llm.script(say("OK"))
    token = guarded.new_tenant()
    with httpx.Client(base_url=guarded.base_url, timeout=30) as http:
        name = _add(http, token, url)
        tested = http.post(f"/api/v1/models/{name}/test", headers=bearer(token))
    assert tested.status_code == 403, tested.text
    body = tested.json()
    assert body["code"] == "egress_denied" and body["trace_id"]
    assert "AETHER_EGRESS_ALLOW" in body["message"]
    assert llm.requests == []  # nothing reached the model


def test_memory_embeddings_are_guarded_too(guarded: RunningServer, llm: ModelServer) -> None:
    token = guarded.new_tenant()
    agent = make_agent(guarded.base_url, token)
    with httpx.Client(base_url=guarded.base_url, timeout=30) as http:
        name = _add(http, token, llm.url)
        found = http.get(
            "/api/v1/memory/search",
            params={"agent_id": agent, "q": "snow", "mode": "vector", "embedding_model": name},
            headers=bearer(token),
        )
    assert found.status_code == 403, found.text
    assert found.json()["code"] == "egress_denied"
    assert llm.requests == []


def test_the_cluster_may_allow_a_private_range(tmp_path: Path, llm: ModelServer) -> None:
    llm.script(say("OK"))
    with (
        running_server(tmp_path, egress_allow="10.0.0.0/8, 127.0.0.0/8") as srv,
        httpx.Client(base_url=srv.base_url, timeout=30) as http,
    ):
        token = srv.new_tenant()
        name = _add(http, token, llm.url)
        tested = http.post(f"/api/v1/models/{name}/test", headers=bearer(token))
        assert tested.status_code == 200, tested.text
        assert tested.json()["reply"] == "OK"
        metadata = _add(http, token, "http://169.254.169.254/v1")
        refused = http.post(f"/api/v1/models/{metadata}/test", headers=bearer(token))
        assert refused.status_code == 403 and refused.json()["code"] == "egress_denied"


def test_the_setting_is_comma_separated_cidrs_checked_at_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AETHER_EGRESS_ALLOW", "127.0.0.0/8, 10.1.0.0/16,")
    assert ServerSettings().egress_allow == ["127.0.0.0/8", "10.1.0.0/16"]
    monkeypatch.delenv("AETHER_EGRESS_ALLOW")
    assert ServerSettings().egress_allow == []
    assert ServerSettings(egress_allow=["10.0.0.0/8"]).egress_allow == ["10.0.0.0/8"]
    with pytest.raises(ValidationError, match=r"AETHER_EGRESS_ALLOW: '10\.1\.0/33'"):
        monkeypatch.setenv("AETHER_EGRESS_ALLOW", "127.0.0.0/8,10.1.0/33")
        ServerSettings()
