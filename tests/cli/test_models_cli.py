"""``aether models``: a tenant's model endpoints, driven as a user does (the real command
in a subprocess) against a real server and the scripted model server."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.api import unique
from tests.support.cli import run_aether
from tests.support.model_server import ModelServer, model_server, say
from tests.support.server import RunningServer, running_server

KEY = "sk-cli-secret-4242"


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(tmp_path_factory.mktemp("aether-models-cli")) as running:
        yield running


@pytest.fixture
def llm() -> Iterator[ModelServer]:
    with model_server(api_key=KEY) as server:
        yield server


def aether(
    srv: RunningServer,
    home: Path,
    *args: str,
    token: str,
    stdin: str | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    return run_aether(home, *args, server=srv.base_url, token=token, stdin=stdin, env=env)


def test_add_ls_get_test_rm(srv: RunningServer, llm: ModelServer, tmp_path: Path) -> None:
    tenant = unique("team")
    admin = srv.token("admin", tenant)
    name = unique("gpt")
    added = aether(
        srv, tmp_path, "models", "add", name, "--base-url", llm.url, "--model-id", "test-model",
        "--context-window", "128000", "--price-in", "0.15", "--price-out", "0.6",
        "--api-key-stdin", token=admin, stdin=KEY + "\n",
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert f"model {name} added as model://{name}, with its API key" in added.stdout

    listed = aether(srv, tmp_path, "models", "ls", token=srv.token("viewer", tenant))
    assert listed.returncode == 0, listed.stderr
    assert name in listed.stdout and "128000" in listed.stdout and "0.15" in listed.stdout
    assert "CONTEXT" in listed.stdout and KEY not in listed.stdout

    got = aether(srv, tmp_path, "models", "get", name, "--format", "json", token=admin)
    model = json.loads(got.stdout)
    assert model["api_key_set"] is True and model["ref"] == f"model://{name}"
    assert KEY not in got.stdout

    llm.script(say("OK"))
    tested = aether(srv, tmp_path, "models", "test", name, token=srv.token("operator", tenant))
    assert tested.returncode == 0, tested.stderr
    assert f"model://{name} answered in" in tested.stdout and tested.stdout.strip().endswith("OK")
    assert llm.requests_to("/v1/chat/completions")[0].authorization == f"Bearer {KEY}"

    removed = aether(srv, tmp_path, "models", "rm", name, "--format", "json", token=admin)
    assert removed.returncode == 0 and json.loads(removed.stdout)["deleted"] is True
    missing = aether(srv, tmp_path, "models", "get", name, token=admin)
    assert missing.returncode == 41 and f"model {name!r} not found" in missing.stderr


def test_the_key_from_the_environment_and_a_wrong_one(
    srv: RunningServer, llm: ModelServer, tmp_path: Path
) -> None:
    tenant = unique("team")
    admin = srv.token("admin", tenant)
    name = unique("gpt")
    wrong = "sk-not-the-right-one"
    added = aether(
        srv, tmp_path, "models", "add", name, "--base-url", llm.url, "--model-id", "test-model",
        "--format", "json", token=admin, env={"AETHER_MODEL_API_KEY": wrong},
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout)["api_key_set"] is True
    tested = aether(srv, tmp_path, "models", "test", name, token=admin)
    assert tested.returncode == 40  # the provider failed: a 502
    assert f"model {name!r}" in tested.stderr and "refused the API key" in tested.stderr
    assert wrong not in tested.stderr + tested.stdout
    as_json = aether(srv, tmp_path, "models", "test", name, "--format", "json", token=admin)
    assert json.loads(as_json.stdout)["error"]["code"] == "model_unauthorized"


def test_bad_input_and_the_key_is_never_an_argument(srv: RunningServer, tmp_path: Path) -> None:
    admin = srv.token("admin", unique("team"))
    bad = aether(
        srv, tmp_path, "models", "add", "Bad Name", "--base-url", "ftp://x/v1",
        "--model-id", "m", token=admin,
    )  # fmt: skip
    assert bad.returncode == 42 and "invalid request" in bad.stderr and "base_url" in bad.stderr
    as_argument = aether(
        srv, tmp_path, "models", "add", "m", "--base-url", "http://x/v1", "--model-id", "m",
        "--api-key", KEY, token=admin,
    )  # fmt: skip
    assert as_argument.returncode == 2 and "unrecognized arguments: --api-key" in as_argument.stderr
    assert KEY not in as_argument.stderr  # the refusal never echoes it
    empty = aether(
        srv, tmp_path, "models", "add", "m", "--base-url", "http://x/v1", "--model-id", "m",
        "--api-key-stdin", token=admin, stdin="\n",
    )  # fmt: skip
    assert empty.returncode == 2 and "stdin gave no key" in empty.stderr
    viewer = srv.token("viewer", unique("team"))
    refused = aether(
        srv, tmp_path, "models", "add", "m", "--base-url", "http://x/v1", "--model-id", "m",
        token=viewer,
    )  # fmt: skip
    assert refused.returncode == 42
