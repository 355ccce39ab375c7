"""The `aether` command as a user runs it: exit codes, JSON output, the session."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from aether.ports import free_port
from tests.support.cluster import Cluster

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hello-python"


def aether(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("AETHER_") and not k.startswith("XDG_")
    }
    base.update(
        {"XDG_CACHE_HOME": str(tmp_path / "cache"), "XDG_CONFIG_HOME": str(tmp_path / "config")}
    )
    base.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "aether", *args],
        env=base,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_no_command_and_bad_flags_are_usage_errors(tmp_path: Path) -> None:
    assert aether(tmp_path).returncode == 2
    result = aether(tmp_path, "deploy", "--no-such-flag")
    assert result.returncode == 2
    assert "unrecognized arguments" in result.stderr
    assert (
        aether(tmp_path, "scale", "hello", "--server", "http://x", "--token", "t").returncode == 2
    )


def test_no_server_configured_is_a_config_error(tmp_path: Path) -> None:
    result = aether(tmp_path, "status")
    assert result.returncode == 10
    assert "aether up" in result.stderr
    result = aether(tmp_path, "status", "--format", "json")
    assert result.returncode == 10
    assert json.loads(result.stdout)["error"]["code"] == "error"
    assert "aether login" in json.loads(result.stdout)["error"]["message"]


def test_unreachable_server_is_a_network_error_with_one_json_object(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = aether(tmp_path, "status", "--server", url, "--token", "t", "--format", "json")
    assert result.returncode == 40
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1
    error = json.loads(lines[0])["error"]
    assert error["code"] == "unreachable"
    assert url in error["message"]


def test_deploy_without_aether_toml_is_a_config_error(tmp_path: Path) -> None:
    app = tmp_path / "app"
    app.mkdir()
    result = aether(tmp_path, "deploy", str(app), "--server", "http://x", "--token", "t")
    assert result.returncode == 10
    assert "aether.toml" in result.stderr
    (app / "aether.toml").write_text('name = "Bad Name"\nstart = "true"\n')
    result = aether(tmp_path, "deploy", str(app), "--server", "http://x", "--token", "t")
    assert result.returncode == 10
    assert "invalid app name" in result.stderr
    result = aether(tmp_path, "deploy", str(tmp_path / "missing"))
    assert result.returncode == 2


@pytest.mark.e2e
def test_login_session_and_commands_against_a_real_server(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path / "cluster")
    try:
        cluster.start_server()
        cluster.start_node("n1")
        bad = aether(
            tmp_path, "login", "--server", cluster.api, "--token", "wrong", "--format", "json"
        )
        assert bad.returncode == 42
        assert json.loads(bad.stdout)["error"]["code"] == "unauthorized"
        assert not (tmp_path / "cache" / "aether" / "session.json").exists()

        ok = aether(tmp_path, "login", "--server", cluster.api, "--token", cluster.admin_token)
        assert ok.returncode == 0, ok.stderr
        session = tmp_path / "cache" / "aether" / "session.json"
        assert stat.S_IMODE(session.stat().st_mode) == 0o600
        assert json.loads(session.read_text()) == {
            "server": cluster.api,
            "token": cluster.admin_token,
        }
        assert (
            f'server = "{cluster.api}"'
            in (tmp_path / "config" / "aether" / "config.toml").read_text()
        )

        # later commands need no flags
        deployed = aether(tmp_path, "deploy", str(EXAMPLE), "--instances", "1", "--format", "json")
        assert deployed.returncode == 0, deployed.stderr
        data = json.loads(deployed.stdout)
        assert {"app", "version", "digest", "size_bytes", "deployment_id", "url"} <= set(data)
        assert data["uploaded_bytes"] > 0 and data["reused_files"] == 0  # incremental: all new

        status = json.loads(aether(tmp_path, "status", "--format", "json").stdout)
        assert status["api_url"] == cluster.api
        assert status["leader"]
        assert status["nodes"][0]["id"] == "n1"
        assert status["nodes"][0]["state"] == "ready"
        assert status["nodes"][0]["router_url"] == cluster.router("n1")
        assert status["apps"] == [
            {
                "name": "hello-python",
                "version": 1,
                "deployment_id": data["deployment_id"],
                "instances_desired": 1,
                "instances_active": 1,
                "created_at": status["apps"][0]["created_at"],
                "rpo_seconds": None,  # stateless: no recovery point
                "checkpoint_age_seconds": None,
                "route": "/apps/hello-python/",  # the default tenant's form
                "failure": None,  # every instance ACTIVE: nothing to say
            }
        ]
        text = aether(tmp_path, "status").stdout
        assert "hello-python" in text and "n1" in text

        missing = aether(tmp_path, "scale", "nope=2", "--format", "json")
        assert missing.returncode == 41
        assert json.loads(missing.stdout)["error"]["code"] == "not_found"

        from tests.support.waiting import wait_for

        def shipped_logs() -> str | None:
            out = aether(tmp_path, "logs", "hello-python").stdout
            return out if "listening on" in out else None

        logs = wait_for(
            shipped_logs,
            10,
            "the instance's output in aether logs",
        )
        assert "[v1/0@n1]" in logs
    finally:
        cluster.stop()
