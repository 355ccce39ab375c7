"""``/api/v1/models``: a tenant's catalog of model endpoints, against a real server and
the scripted model server (a real OpenAI-compatible server on loopback)."""

from __future__ import annotations

import logging
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from aether.store.records.schema import AgentModel
from tests.support.api import bearer, unique
from tests.support.model_server import ModelServer, model_server, say
from tests.support.server import RunningServer, running_server

KEY = "sk-live-0123456789abcdef-SECRET"


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(tmp_path_factory.mktemp("aether-models")) as running:
        yield running


@pytest.fixture
def llm() -> Iterator[ModelServer]:
    with model_server(api_key=KEY) as server:
        yield server


def _body(name: str, url: str, **more: Any) -> dict[str, Any]:
    return {
        "name": name,
        "base_url": url,
        "model_id": "test-model",
        "context_window": 32768,
        "price_in_per_1k": 0.5,
        "price_out_per_1k": 1.5,
        **more,
    }


def _add(http: httpx.Client, token: str, body: dict[str, Any]) -> dict[str, Any]:
    made = http.post("/api/v1/models", json=body, headers=bearer(token))
    assert made.status_code == 201, made.text
    answer: dict[str, Any] = made.json()
    return answer


@pytest.fixture
def http(srv: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=srv.base_url, timeout=30) as client:
        yield client


def test_add_list_get_never_show_the_key(
    srv: RunningServer, http: httpx.Client, llm: ModelServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    tenant = unique("team")
    admin, viewer = srv.token("admin", tenant), srv.token("viewer", tenant)
    name = unique("gpt")
    made = _add(http, admin, _body(name, llm.url + "/", api_key=KEY))
    assert made["ref"] == f"model://{name}" and made["api_key_set"] is True
    assert made["base_url"] == llm.url and made["context_window"] == 32768
    assert made["price_in_per_1k"] == 0.5 and made["price_out_per_1k"] == 1.5
    assert made["provider"] == "openai" and "api_key" not in made
    answers = [
        http.get("/api/v1/models", headers=bearer(viewer)),
        http.get(f"/api/v1/models/{name}", headers=bearer(viewer)),
    ]
    assert [m["name"] for m in answers[0].json()] == [name]
    assert answers[1].json() == made
    tested = http.post(f"/api/v1/models/{name}/test", headers=bearer(srv.token("operator", tenant)))
    answers.append(tested)
    audit = http.get("/api/v1/audit", headers=bearer(admin))
    assert audit.status_code == 200 and name in audit.text
    for answer in [*answers, audit]:
        assert KEY not in answer.text
    # the server's own log output, every logger (its call to the provider is in it)
    assert "/chat/completions" in caplog.text
    assert KEY not in caplog.text


def test_the_test_call_carries_the_key_and_answers_latency_usage_and_reply(
    srv: RunningServer, http: httpx.Client, llm: ModelServer
) -> None:
    tenant = unique("team")
    name = unique("local")
    _add(http, srv.token("admin", tenant), _body(name, llm.url, api_key=KEY))
    llm.script(say("OK" + " and more" * 50))
    tested = http.post(f"/api/v1/models/{name}/test", headers=bearer(srv.token("operator", tenant)))
    assert tested.status_code == 200, tested.text
    answer = tested.json()
    assert answer["ok"] is True and answer["ref"] == f"model://{name}"
    assert answer["latency_ms"] > 0 and answer["finish_reason"] == "stop"
    assert answer["reply"] == ("OK" + " and more" * 50)[:200]
    assert answer["usage"] == {"prompt_tokens": 6, "completion_tokens": 101}
    (sent,) = llm.requests_to("/v1/chat/completions")
    assert sent.authorization == f"Bearer {KEY}"
    assert sent.body["model"] == "test-model" and sent.body["max_tokens"] == 16


def test_a_wrong_key_is_a_clear_502_naming_the_model(
    srv: RunningServer, http: httpx.Client, llm: ModelServer
) -> None:
    tenant = unique("team")
    name = unique("gpt")
    wrong = "sk-wrong-key-987654321"
    _add(http, srv.token("admin", tenant), _body(name, llm.url, api_key=wrong))
    tested = http.post(f"/api/v1/models/{name}/test", headers=bearer(srv.token("admin", tenant)))
    assert tested.status_code == 502, tested.text
    error = tested.json()
    assert error["code"] == "model_unauthorized" and error["trace_id"]
    assert f"model {name!r}" in error["message"] and "refused the API key" in error["message"]
    assert wrong not in tested.text


def test_a_model_without_a_key_sends_none(srv: RunningServer, http: httpx.Client) -> None:
    tenant = unique("team")
    with model_server(say("fine")) as open_llm:
        name = unique("ollama")
        made = _add(http, srv.token("admin", tenant), _body(name, open_llm.url))
        assert made["api_key_set"] is False
        tested = http.post(
            f"/api/v1/models/{name}/test", headers=bearer(srv.token("admin", tenant))
        )
        assert tested.status_code == 200 and tested.json()["reply"] == "fine"
        assert open_llm.requests[0].authorization is None


def test_an_unreachable_provider_is_a_502(srv: RunningServer, http: httpx.Client) -> None:
    from aether.ports import free_port

    tenant = unique("team")
    name = unique("gone")
    _add(http, srv.token("admin", tenant), _body(name, f"http://127.0.0.1:{free_port()}/v1"))
    tested = http.post(f"/api/v1/models/{name}/test", headers=bearer(srv.token("admin", tenant)))
    assert tested.status_code == 502 and tested.json()["code"] == "model_unreachable"


def test_the_key_is_not_in_the_records_database_in_plain_text(
    srv: RunningServer, http: httpx.Client, llm: ModelServer
) -> None:
    tenant = unique("team")
    name = unique("gpt")
    _add(http, srv.token("admin", tenant), _body(name, llm.url, api_key=KEY))
    files = sorted(srv.data_dir.glob("records.db*"))
    assert files, list(srv.data_dir.iterdir())
    data = b"".join(path.read_bytes() for path in files)
    assert name.encode() in data  # the row is there ...
    assert KEY.encode() not in data  # ... its key is not
    sealed = srv.run(_sealed_key(srv, name))
    assert sealed is not None and sealed.startswith(f"v2:{srv.ctx.secrets.key_id}:")
    key_file = srv.data_dir / "secrets.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


async def _sealed_key(srv: RunningServer, name: str) -> str | None:
    async with srv.ctx.records.sessions() as session:
        found: str | None = await session.scalar(
            select(AgentModel.api_key).where(AgentModel.name == name)
        )
        return found


def test_another_tenant_sees_nothing(
    srv: RunningServer, http: httpx.Client, llm: ModelServer
) -> None:
    tenant = unique("team")
    name = unique("gpt")
    _add(http, srv.token("admin", tenant), _body(name, llm.url, api_key=KEY))
    other = bearer(srv.new_tenant())
    assert http.get("/api/v1/models", headers=other).json() == []
    for method, path in (
        ("GET", f"/api/v1/models/{name}"),
        ("POST", f"/api/v1/models/{name}/test"),
        ("DELETE", f"/api/v1/models/{name}"),
    ):
        answer = http.request(method, path, headers=other)
        assert answer.status_code == 404, (method, answer.text)
        assert answer.json()["message"] == f"model {name!r} not found"
    # the same name in the other tenant is its own model
    _add(http, srv.token("admin", unique("team")), _body(name, llm.url))
    assert not llm.requests_to("/v1/chat/completions")  # nothing was called for the other


def test_bad_input_roles_and_removal(srv: RunningServer, http: httpx.Client) -> None:
    tenant = unique("team")
    admin = bearer(srv.token("admin", tenant))
    url = "http://127.0.0.1:9/v1"
    for body, says in (
        (_body("Not A Name", url), "name"),
        (_body("ok", "ftp://host/v1"), "http:// or https://"),
        (_body("ok", url, context_window=0), "context_window"),
        (_body("ok", url, price_in_per_1k=-1), "price_in_per_1k"),
        (_body("ok", url, provider="anthropic"), "provider"),
    ):
        refused = http.post("/api/v1/models", json=body, headers=admin)
        assert refused.status_code == 400, refused.text
        assert refused.json()["code"] == "bad_request" and says in refused.json()["message"]
    name = unique("m")
    _add(http, srv.token("admin", tenant), _body(name, url))
    again = http.post("/api/v1/models", json=_body(name, url), headers=admin)
    assert again.status_code == 409 and "already exists" in again.json()["message"]
    operator = bearer(srv.token("operator", tenant))
    assert http.post("/api/v1/models", json=_body("x", url), headers=operator).status_code == 403
    assert http.delete(f"/api/v1/models/{name}", headers=operator).status_code == 403
    viewer = bearer(srv.token("viewer", tenant))
    assert http.post(f"/api/v1/models/{name}/test", headers=viewer).status_code == 403
    gone = http.delete(f"/api/v1/models/{name}", headers=admin)
    assert gone.status_code == 200 and gone.json() == {
        "name": name,
        "ref": f"model://{name}",
        "deleted": True,
    }
    assert http.get(f"/api/v1/models/{name}", headers=admin).status_code == 404


def test_deleting_a_tenant_deletes_its_models(srv: RunningServer, http: httpx.Client) -> None:
    tenant = unique("team")
    made = http.post("/api/v1/tenants", json={"name": tenant}, headers=bearer(srv.admin_token))
    assert made.status_code == 201, made.text
    _add(http, made.json()["admin_token"], _body(unique("m"), "http://127.0.0.1:9/v1", api_key=KEY))
    tenant_id = srv.run(srv.ctx.records.tenant_id_of(tenant))
    assert srv.run(_count(srv, tenant_id)) == 1
    gone = http.delete(f"/api/v1/tenants/{tenant}", headers=bearer(srv.admin_token))
    assert gone.status_code == 200, gone.text
    assert srv.run(_count(srv, tenant_id)) == 0


async def _count(srv: RunningServer, tenant_id: str | None) -> int:
    async with srv.ctx.records.sessions() as session:
        count = await session.scalar(
            select(func.count()).select_from(AgentModel).where(AgentModel.tenant_id == tenant_id)
        )
        return int(count or 0)


def test_the_key_file_may_live_elsewhere(tmp_path: Path) -> None:
    outside = tmp_path / "keys" / "aether-secrets.key"
    with running_server(tmp_path / "data", secrets_key_file=str(outside)) as server:
        assert server.ctx.secrets.source == str(outside)
    assert stat.S_IMODE(outside.stat().st_mode) == 0o600
    assert not (tmp_path / "data" / "secrets.key").exists()
