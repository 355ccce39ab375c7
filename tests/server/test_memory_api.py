"""``/api/v1/memory``: agents' memories on a real server, searched by full text (BM25),
by vectors from the real scripted model server's ``/v1/embeddings``, and both fused."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.api import bearer, make_agent, unique
from tests.support.model_server import ModelServer, model_server
from tests.support.server import RunningServer, running_server


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(tmp_path_factory.mktemp("aether-memory")) as running:
        yield running


@pytest.fixture(scope="module")
def llm() -> Iterator[ModelServer]:
    with model_server() as server:
        yield server


@pytest.fixture
def http(srv: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=srv.base_url, timeout=30) as client:
        yield client


def _write(http: httpx.Client, token: str, agent: str, text: str, **more: Any) -> dict[str, Any]:
    made = http.post(
        "/api/v1/memory", json={"agent_id": agent, "text": text, **more}, headers=bearer(token)
    )
    assert made.status_code == 201, made.text
    body: dict[str, Any] = made.json()
    return body


def _search(http: httpx.Client, token: str, agent: str, q: str, **params: Any) -> httpx.Response:
    return http.get(
        "/api/v1/memory/search", params={"agent_id": agent, "q": q, **params}, headers=bearer(token)
    )


def _texts(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [hit["text"] for hit in response.json()]


def _add_model(http: httpx.Client, token: str, url: str) -> str:
    name = unique("embed")
    body = {"name": name, "base_url": url, "model_id": "test-model"}
    made = http.post("/api/v1/models", json=body, headers=bearer(token))
    assert made.status_code == 201, made.text
    return name


def test_text_search_ranks_the_more_relevant_memory_first(
    srv: RunningServer, http: httpx.Client
) -> None:
    token = srv.new_tenant()
    agent = make_agent(srv.base_url, token)
    _write(http, token, agent, "the weather in Oslo is cold and grey")
    _write(http, token, agent, "a disk was replaced on node n2 last week")
    _write(http, token, agent, "node n1 stopped: its disk is full, the disk quota was full")
    answer = _search(http, token, agent, "disk full")
    assert _texts(answer) == [
        "node n1 stopped: its disk is full, the disk quota was full",
        "a disk was replaced on node n2 last week",
    ]
    first, second = answer.json()
    assert first["score"] > second["score"] and first["text_score"] == first["score"]
    assert first["vector_score"] is None
    assert _texts(_search(http, token, agent, "disks")) != []  # stemmed: disks ~ disk
    assert _texts(_search(http, token, agent, "kubernetes")) == []


def test_a_thread_sees_its_own_and_the_shared_memories_only(
    srv: RunningServer, http: httpx.Client
) -> None:
    token = srv.new_tenant()
    agent = make_agent(srv.base_url, token)
    _write(http, token, agent, "shared fact: the release train leaves on Friday")
    _write(http, token, agent, "thread one fact: the release needs a changelog", thread_id="t1")
    _write(http, token, agent, "thread two fact: the release is blocked", thread_id="t2")
    seen = set(_texts(_search(http, token, agent, "release", thread_id="t1")))
    assert seen == {
        "shared fact: the release train leaves on Friday",
        "thread one fact: the release needs a changelog",
    }
    assert _texts(_search(http, token, agent, "release")) == [
        "shared fact: the release train leaves on Friday"
    ]
    listed = http.get(
        "/api/v1/memory", params={"agent_id": agent, "thread_id": "t2"}, headers=bearer(token)
    )
    assert listed.status_code == 200, listed.text
    assert [i["thread_id"] for i in listed.json()["items"]] == ["t2", None]  # newest first
    # another agent of the tenant sees none of them
    other = make_agent(srv.base_url, token)
    assert _texts(_search(http, token, other, "release", thread_id="t1")) == []


def test_list_pages_newest_first(srv: RunningServer, http: httpx.Client) -> None:
    token = srv.new_tenant()
    agent = make_agent(srv.base_url, token)
    for n in range(5):
        _write(http, token, agent, f"note number {n}")
    seen: list[str] = []
    params: dict[str, Any] = {"agent_id": agent, "limit": 2}
    while True:
        page = http.get("/api/v1/memory", params=params, headers=bearer(token)).json()
        seen += [item["text"] for item in page["items"]]
        if page["cursor"] is None:
            break
        params["before"] = page["cursor"]
    assert seen == [f"note number {n}" for n in (4, 3, 2, 1, 0)]


def test_another_tenant_never_finds_a_tenant_s_memory(
    srv: RunningServer, http: httpx.Client
) -> None:
    mine, theirs = srv.new_tenant(), srv.new_tenant()
    agent = make_agent(srv.base_url, mine)
    item = _write(http, mine, agent, "the launch code is in the blue folder")
    # the agent is not theirs: the answer of an agent that does not exist, for every route
    ghost = "agt_" + "0" * 24
    for route in ("search", "list", "write"):
        answers = []
        for named in (agent, ghost):
            if route == "search":
                answers.append(_search(http, theirs, named, "launch code"))
            elif route == "list":
                answers.append(
                    http.get("/api/v1/memory", params={"agent_id": named}, headers=bearer(theirs))
                )
            else:
                answers.append(
                    http.post(
                        "/api/v1/memory",
                        json={"agent_id": named, "text": "mine now"},
                        headers=bearer(theirs),
                    )
                )
        real, unknown = answers
        assert real.status_code == unknown.status_code == 404, (route, real.text)
        assert real.json()["message"] == unknown.json()["message"].replace(ghost, agent)
    gone = http.delete(f"/api/v1/memory/{item['id']}", headers=bearer(theirs))
    unknown = http.delete("/api/v1/memory/mem_0000", headers=bearer(theirs))
    assert gone.status_code == unknown.status_code == 404
    assert gone.json()["code"] == "not_found"
    assert gone.json()["message"] == unknown.json()["message"].replace("mem_0000", item["id"])
    assert _texts(_search(http, mine, agent, "launch code")) == [item["text"]]
    deleted = http.delete(f"/api/v1/memory/{item['id']}", headers=bearer(mine))
    assert deleted.status_code == 200, deleted.text
    assert _texts(_search(http, mine, agent, "launch code")) == []


def test_vector_search_uses_the_tenant_s_embedding_model(
    srv: RunningServer, http: httpx.Client, llm: ModelServer
) -> None:
    token = srv.new_tenant()
    agent = make_agent(srv.base_url, token)
    model = _add_model(http, token, llm.url)
    before = len(llm.requests_to("/v1/embeddings"))
    _write(http, token, agent, "red desert sand dunes at noon")
    embedded = _write(http, token, agent, "waves of the blue ocean at dawn", embedding_model=model)
    assert embedded["embedded"] is True
    answer = _search(http, token, agent, "blue ocean waves", mode="vector", embedding_model=model)
    texts = _texts(answer)
    assert texts[0] == "waves of the blue ocean at dawn"  # the unembedded one was embedded too
    assert set(texts) == {"waves of the blue ocean at dawn", "red desert sand dunes at noon"}
    top = answer.json()[0]
    assert top["vector_score"] == top["score"] > answer.json()[1]["score"]
    assert top["text_score"] is None
    assert len(llm.requests_to("/v1/embeddings")) > before  # through the real endpoint


def test_vector_search_without_a_model_is_refused_and_hybrid_falls_back_to_text(
    srv: RunningServer, http: httpx.Client
) -> None:
    token = srv.new_tenant()
    agent = make_agent(srv.base_url, token)
    _write(http, token, agent, "the cache is warm")
    refused = _search(http, token, agent, "cache", mode="vector")
    assert refused.status_code == 400, refused.text
    assert refused.json()["code"] == "bad_request"
    assert "embedding model" in refused.json()["message"]
    hybrid = _search(http, token, agent, "cache", mode="hybrid")
    assert _texts(hybrid) == ["the cache is warm"]
    assert hybrid.json()[0]["vector_score"] is None
    unknown = _search(http, token, agent, "cache", mode="vector", embedding_model="nope")
    assert unknown.status_code == 404 and unknown.json()["code"] == "not_found"


def test_hybrid_fuses_text_and_vector_rankings(
    srv: RunningServer, http: httpx.Client, llm: ModelServer
) -> None:
    token = srv.new_tenant()
    agent = make_agent(srv.base_url, token)
    model = _add_model(http, token, llm.url)
    _write(http, token, agent, "postgres backup runs nightly at two")
    _write(http, token, agent, "the nightly backup of postgres failed twice")
    _write(http, token, agent, "lunch menu: soup and bread")
    answer = _search(
        http, token, agent, "postgres backup failed", mode="hybrid", embedding_model=model
    )
    hits = answer.json()
    assert hits[0]["text"] == "the nightly backup of postgres failed twice"
    assert hits[0]["text_score"] is not None and hits[0]["vector_score"] is not None
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    assert hits[0]["score"] == pytest.approx(2 / 61)  # first in both rankings: 1/61 + 1/61


def test_bad_input_gets_the_error_envelope(srv: RunningServer, http: httpx.Client) -> None:
    token = srv.new_tenant()
    agent = make_agent(srv.base_url, token)
    empty = http.post("/api/v1/memory", json={"agent_id": agent, "text": ""}, headers=bearer(token))
    assert empty.status_code == 400 and empty.json()["code"] == "bad_request"
    bad_id = http.post(
        "/api/v1/memory", json={"agent_id": "agt x/..", "text": "t"}, headers=bearer(token)
    )
    assert bad_id.status_code == 400
    mode = _search(http, token, agent, "q", mode="fuzzy")
    assert mode.status_code == 400 and set(mode.json()) == {"code", "message", "trace_id"}
    viewer = http.post(
        "/api/v1/memory",
        json={"agent_id": "agt_x", "text": "t"},
        headers=bearer(srv.token("viewer", unique("tv"))),
    )
    assert viewer.status_code == 403


def test_the_server_s_default_embedding_model_is_each_tenant_s_own(
    tmp_path: Path, llm: ModelServer
) -> None:
    with (
        running_server(tmp_path, memory_embedding_model="embed") as srv,
        httpx.Client(base_url=srv.base_url, timeout=30) as http,
    ):
        with_model, without = srv.new_tenant(), srv.new_tenant()
        made = http.post(
            "/api/v1/models",
            json={"name": "embed", "base_url": llm.url, "model_id": "test-model"},
            headers=bearer(with_model),
        )
        assert made.status_code == 201, made.text
        agents = {token: make_agent(srv.base_url, token) for token in (with_model, without)}
        for token, agent in agents.items():
            written = _write(http, token, agent, "snow on the mountain pass")
            assert written["embedded"] is (token == with_model)  # embedded when written
        found = _search(http, with_model, agents[with_model], "mountain snow", mode="vector")
        assert _texts(found) == ["snow on the mountain pass"]
        refused = _search(http, without, agents[without], "mountain snow", mode="vector")
        assert refused.status_code == 400
        hybrid = _search(http, without, agents[without], "mountain snow", mode="hybrid")
        assert _texts(hybrid) == ["snow on the mountain pass"]
        assert hybrid.json()[0]["vector_score"] is None
