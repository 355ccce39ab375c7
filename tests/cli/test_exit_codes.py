"""Exit codes and error codes of the `aether` command against a real server.

40: unreachable or a server failure; 41: the server answered 404; 42: the server
understood the request and refused it (400, 401, 403, 409, 413). The printed code
and message are the server's envelope's, also where the answer (to a HEAD) has no body.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from aether.client import ApiClient
from aether.errors import ForbiddenError, UnauthorizedError
from aether.ports import free_port
from tests.support.api import unique
from tests.support.http import serving
from tests.support.server import RunningServer, running_server


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(tmp_path_factory.mktemp("aether-exit-codes")) as running:
        yield running


def aether(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("AETHER_") and not k.startswith("XDG_")
    }
    env.update({"XDG_CACHE_HOME": str(home / "cache"), "XDG_CONFIG_HOME": str(home / "config")})
    return subprocess.run(
        [sys.executable, "-m", "aether", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def error_of(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, (result.stdout, result.stderr)
    error: dict[str, Any] = json.loads(lines[0])["error"]
    return error


def tiny_app(root: Path) -> Path:
    """An app that builds with nothing to install."""
    app = root / "tiny"
    app.mkdir()
    (app / "aether.toml").write_text(f'name = "{unique("tiny")}"\nstart = "python3 app.py"\n')
    (app / "app.py").write_text("print('hi')\n")
    return app


def test_deploy_with_a_wrong_token_is_refused_like_status(
    srv: RunningServer, tmp_path: Path
) -> None:
    """The deploy's first call is a HEAD (no body): it still says `unauthorized`, exit 42."""
    server = ("--server", srv.base_url, "--token", "wrong-token")
    status = aether(tmp_path, "status", *server, "--format", "json")
    assert status.returncode == 42, status.stderr
    expected = error_of(status)
    assert expected["code"] == "unauthorized"

    app = tiny_app(tmp_path)
    deploy = aether(tmp_path, "deploy", str(app), *server, "--format", "json")
    assert deploy.returncode == 42, (deploy.stdout, deploy.stderr)
    assert error_of(deploy) == expected  # {"code": "unauthorized", "message": ...}

    text = aether(tmp_path, "deploy", str(app), *server)
    assert text.returncode == 42
    assert text.stderr.strip().endswith(f"aether: {expected['message']}")
    assert "HTTP 401" not in text.stderr and "internal" not in text.stderr


def test_missing_objects_exit_41(srv: RunningServer, tmp_path: Path) -> None:
    server = ("--server", srv.base_url, "--token", srv.admin_token)
    logs = aether(tmp_path, "logs", unique("no-such-app"), *server)
    assert logs.returncode == 41, (logs.stdout, logs.stderr)
    assert "not found" in logs.stderr
    scale = aether(tmp_path, "scale", f"{unique('nope')}=2", *server, "--format", "json")
    assert scale.returncode == 41, (scale.stdout, scale.stderr)
    assert error_of(scale)["code"] == "not_found"


def test_refusals_exit_42(srv: RunningServer, tmp_path: Path) -> None:
    viewer = srv.token("viewer")
    scale = aether(
        tmp_path,
        "scale",
        f"{unique('app')}=2",
        "--server",
        srv.base_url,
        "--token",
        viewer,
        "--format",
        "json",
    )
    assert scale.returncode == 42, (scale.stdout, scale.stderr)
    assert error_of(scale)["code"] == "forbidden"


def test_unreachable_server_exits_40(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    app = tiny_app(tmp_path)
    for args in (("status",), ("deploy", str(app))):
        result = aether(tmp_path, *args, "--server", url, "--token", "t", "--format", "json")
        assert result.returncode == 40, (args, result.stdout, result.stderr)
        assert error_of(result)["code"] == "unreachable"


async def test_a_head_error_carries_the_servers_code_and_message(srv: RunningServer) -> None:
    digest = "sha256:" + "0" * 64
    async with ApiClient(srv.base_url, srv.admin_token) as client:
        assert await client.has_artifact(digest) is False
    async with ApiClient(srv.base_url, "wrong-token") as client:
        with pytest.raises(UnauthorizedError) as denied:
            await client.has_artifact(digest)
        with pytest.raises(UnauthorizedError) as status:
            await client.status()
    assert denied.value.code == "unauthorized"
    assert denied.value.message == status.value.message
    async with ApiClient(srv.base_url, srv.admin_token, namespace="other") as client:
        with pytest.raises(ForbiddenError) as forbidden:
            await client.has_artifact(digest)
    assert forbidden.value.code == "forbidden"
    assert "other" in forbidden.value.message


class _BareHandler(BaseHTTPRequestHandler):
    """A proxy in front of the API: 401 or 502 without the envelope."""

    def _answer(self, body: bytes) -> None:
        status = 401 if self.path.startswith("/api/v1/status") else 502
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:
        self._answer(b"bad gateway" if not self.path.startswith("/api/v1/status") else b"")

    def do_HEAD(self) -> None:
        self._answer(b"")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def bare_proxy() -> Iterator[str]:
    with serving(_BareHandler) as url:
        yield url


def test_an_answer_without_an_envelope_gets_its_status_code(
    bare_proxy: str, tmp_path: Path
) -> None:
    server = ("--server", bare_proxy, "--token", "t", "--format", "json")
    denied = aether(tmp_path, "status", *server)
    assert denied.returncode == 42, (denied.stdout, denied.stderr)
    error = error_of(denied)
    assert error["code"] == "unauthorized"
    assert error["message"].startswith("HTTP 401 Unauthorized for GET /api/v1/status")
    failed = aether(tmp_path, "deploy", str(tiny_app(tmp_path)), *server)
    assert failed.returncode == 40, (failed.stdout, failed.stderr)
    error = error_of(failed)
    assert error["code"] == "internal"
    assert "HTTP 502" in error["message"] and "bad gateway" in error["message"]
