"""``aether alerts`` as a user runs it, against a real in-process server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.server import RunningServer, running_server


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(tmp_path_factory.mktemp("aether-alerts-cli")) as running:
        yield running


def aether(srv: RunningServer, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("AETHER_") and not k.startswith("XDG_")
    }
    env.update({"XDG_CACHE_HOME": str(home / "cache"), "XDG_CONFIG_HOME": str(home / "config")})
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "aether",
            *args,
            "--server",
            srv.base_url,
            "--token",
            srv.admin_token,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_silence_list_and_unsilence(srv: RunningServer, tmp_path: Path) -> None:
    made = aether(
        srv,
        tmp_path,
        "alerts",
        "silence",
        "NodeLost",
        "--match",
        "node=n1",
        "--for",
        "2h",
        "--comment",
        "maintenance",
        "--format",
        "json",
    )
    assert made.returncode == 0, made.stderr
    silence = json.loads(made.stdout)
    assert silence["matchers"] == {"alertname": "NodeLost", "node": "n1"}
    assert 7199 <= silence["ends_at"] - silence["starts_at"] <= 7201
    listed = aether(srv, tmp_path, "alerts", "silences")
    assert silence["id"] in listed.stdout and "maintenance" in listed.stdout
    assert "active" in listed.stdout
    ls = aether(srv, tmp_path, "alerts", "ls", "--state", "firing")
    assert ls.returncode == 0 and "no alerts" in ls.stdout, ls.stdout
    gone = aether(srv, tmp_path, "alerts", "unsilence", silence["id"])
    assert gone.returncode == 0, gone.stderr
    again = aether(srv, tmp_path, "alerts", "unsilence", silence["id"])
    assert again.returncode != 0 and "no silence" in again.stderr


def test_usage_errors(srv: RunningServer, tmp_path: Path) -> None:
    nothing = aether(srv, tmp_path, "alerts", "silence")
    assert nothing.returncode != 0 and "RULE or --match" in nothing.stderr
    bad = aether(srv, tmp_path, "alerts", "silence", "X", "--for", "soon")
    assert bad.returncode != 0 and "--for" in bad.stderr
