"""What the ``aether`` command imports: ``--help`` and the read commands (``list``,
``status``, ``nodes``, ``task get``) stay clear of the heavy libraries, which cost
several times the request itself at start-up. Asserted on ``sys.modules`` in a fresh
interpreter, never on a clock, so it cannot flake on a busy machine."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from aether.cli.reads import PROXY_VARIABLES
from aether.client import ApiClient
from tests.support.cli import cli_env
from tests.support.server import RunningServer, running_server

HEAVY = ("httpx", "httpcore", "anyio", "pydantic", "fastapi", "sqlalchemy", "asyncio", "rich")

#: Runs ``aether ARGS`` in this interpreter, then prints the heavy modules it imported.
PROBE = f"""
import json, sys
from aether.cli.main import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r})
sys.stderr.write("\\nPROBE " + json.dumps({{"heavy": heavy, "exit": code}}) + "\\n")
"""


def heavy_modules(home: Path, *args: str) -> tuple[list[str], object]:
    env = {k: v for k, v in cli_env(home).items() if k not in PROXY_VARIABLES}
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    probe = json.loads(result.stderr.rsplit("\nPROBE ", 1)[1])
    return probe["heavy"], probe["exit"]


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(tmp_path_factory.mktemp("aether-import-budget")) as running:
        yield running


def test_importing_the_command_loads_nothing_heavy(tmp_path: Path) -> None:
    code = (
        "import json, sys, aether.cli.main; "
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert json.loads(out) == []


@pytest.mark.parametrize("args", [("--help",), ("task", "--help"), ()])
def test_help_loads_nothing_heavy(tmp_path: Path, args: tuple[str, ...]) -> None:
    heavy, code = heavy_modules(tmp_path, *args)
    assert heavy == []
    assert code in (0, 2)


def test_the_read_commands_load_nothing_heavy(srv: RunningServer, tmp_path: Path) -> None:
    async def submit() -> str:
        async with ApiClient(srv.base_url, srv.admin_token) as client:
            body = {"type": "vm:create", "payload": {"name": "later"}, "delay": 86400}
            return (await client.submit_task(body)).id

    task = srv.run(submit())
    server = ("--server", srv.base_url, "--token", srv.admin_token)
    for args in (("list",), ("status",), ("nodes",), ("apps",), ("task", "get", task)):
        for fmt in ("text", "json"):
            heavy, code = heavy_modules(tmp_path, *args, *server, "--format", fmt)
            assert (heavy, code) == ([], 0), args
    # and an error answer costs no more: the exception tree is aether.errors'
    heavy, code = heavy_modules(tmp_path, "task", "get", "no-such-task", *server)
    assert (heavy, code) == ([], 41)


def test_an_https_server_still_goes_through_the_typed_client(tmp_path: Path) -> None:
    """Its TLS set-up is ApiClient's (nothing listens: the error is the same either way)."""
    heavy, code = heavy_modules(tmp_path, "list", "--server", "https://127.0.0.1:9", "--token", "t")
    assert "httpx" in heavy
    assert code == 40
