"""``aether audit`` and ``aether audit verify`` against a real server: list, filter,
export, follow; verify passes, and fails (exit 43, naming the row) once a row is
altered directly in the records database (the issue's acceptance check)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from aether.cli.commands.audit import parse_since
from aether.cli.output import EXIT
from tests.support.api import bearer
from tests.support.server import RunningServer, running_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(tmp_path_factory.mktemp("audit-cli")) as running:
        yield running


def env_for(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AETHER_", "XDG_"))}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    return env


def aether(server: RunningServer, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    common = ["--server", server.base_url, "--token", server.admin_token]
    return subprocess.run(
        [sys.executable, "-m", "aether", "audit", *args, *common],
        env=env_for(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )


def make_token(server: RunningServer, name: str) -> str:
    made = httpx.post(
        f"{server.base_url}/api/v1/tokens",
        json={"role": "viewer", "name": name},
        headers=bearer(server.admin_token),
        timeout=10,
    )
    assert made.status_code == 201, made.text
    return str(made.json()["id"])


def test_lists_filters_and_exports(server: RunningServer, tmp_path: Path) -> None:
    for n in range(3):
        make_token(server, f"cli{n}")
    listed = aether(server, tmp_path, "--action", "POST /tokens", "--format", "json")
    assert listed.returncode == 0, listed.stderr
    events = json.loads(listed.stdout)["events"]
    assert len(events) >= 3 and {e["action"] for e in events} == {"POST /tokens"}
    text = aether(server, tmp_path, "--outcome", "ok", "--since", "1h")
    assert text.returncode == 0, text.stderr
    assert "POST /tokens" in text.stdout and "token:" in text.stdout
    exported = aether(server, tmp_path, "--format", "jsonl")
    assert exported.returncode == 0, exported.stderr
    ids = [json.loads(line)["id"] for line in exported.stdout.splitlines()]
    assert len(ids) >= 3 and ids == sorted(ids)
    bad = aether(server, tmp_path, "--since", "yesterday-ish")
    assert bad.returncode == EXIT["usage"] and "--since" in bad.stderr


def test_follow_prints_new_events(server: RunningServer, tmp_path: Path) -> None:
    common = ["--server", server.base_url, "--token", server.admin_token]
    follower = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "aether",
            "audit",
            "--follow",
            "--limit",
            "1",
            "--format",
            "jsonl",
            *common,
        ],
        env=env_for(tmp_path),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert follower.stdout is not None
        follower.stdout.readline()  # the newest event so far
        time.sleep(0.5)
        made = make_token(server, "followed")
        line = follower.stdout.readline()
        while json.loads(line)["action"] != "POST /tokens":
            line = follower.stdout.readline()
        assert json.loads(line)["outcome"] == "ok" and made
    finally:
        follower.kill()
        follower.wait(10)


def test_verify_passes_then_fails_after_a_row_is_altered(
    server: RunningServer, tmp_path: Path
) -> None:
    make_token(server, "before-tampering")
    intact = aether(server, tmp_path, "verify")
    assert intact.returncode == 0, intact.stderr
    assert intact.stdout.startswith("audit chain intact")

    with sqlite3.connect(server.data_dir / "records.db") as db:
        (victim,) = db.execute("SELECT min(id) + 1 FROM audit_events").fetchone()
        db.execute("UPDATE audit_events SET outcome = 'failed' WHERE id = ?", (victim,))
    broken = aether(server, tmp_path, "verify")
    assert broken.returncode == EXIT["tampered"] == 43
    assert f"BROKEN at row {victim}" in broken.stdout and "altered" in broken.stdout
    as_json = aether(server, tmp_path, "verify", "--format", "json")
    assert as_json.returncode == 43
    assert json.loads(as_json.stdout)["first_bad"] == victim


def test_since_takes_durations_iso_times_and_epochs() -> None:
    assert parse_since("2h", now=10_000.0) == 10_000.0 - 7200
    assert parse_since("1700000000") == 1_700_000_000.0
    assert parse_since("2026-01-01T00:00:00+00:00") == 1_767_225_600.0
