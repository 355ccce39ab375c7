"""``aether shell``: completion (a pure function of the parser and the names), scripts
run through the real command against a real server, and the prompt in a terminal."""

from __future__ import annotations

import argparse
import os
import pty
import select
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from aether.cli.commands.shell import complete
from aether.cli.main import build_parser
from aether.cli.shell_words import Names, candidates
from tests.support.cli import cli_env, run_aether
from tests.support.server import RunningServer, running_server

PARSER = build_parser()
NAMES = Names(lambda: ["web", "worker", "shop"], lambda: {"cart": ["add", "total"]})


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(tmp_path_factory.mktemp("aether-shell")) as running:
        yield running


def test_the_first_word_completes_to_commands_and_shell_words() -> None:
    assert candidates(PARSER, [], "sc", NAMES) == ["scale"]
    assert {"status", "shell", "help", "exit", "quit"} <= set(candidates(PARSER, [], "", NAMES))
    assert candidates(PARSER, [], "nope", NAMES) == []


def test_subcommands_options_and_apps_complete() -> None:
    assert candidates(PARSER, ["apps"], "", NAMES) == ["rm", "set"]
    assert candidates(PARSER, ["deploy"], "--fu", NAMES) == ["--full-upload"]
    assert candidates(PARSER, ["apps", "set"], "--re", NAMES) == [
        "--require-provenance",
        "--require-signature",
        "--retain",
    ]
    assert candidates(PARSER, ["scale"], "w", NAMES) == ["web", "worker"]
    assert candidates(PARSER, ["apps", "rm"], "", NAMES) == ["shop", "web", "worker"]
    assert candidates(PARSER, ["scale", "web"], "", NAMES) == []  # it takes one app
    assert candidates(PARSER, ["no-such"], "", NAMES) == []


def test_slices_and_their_entry_points_complete() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    sl = sub.add_parser("slice").add_subparsers()
    for name in ("ls", "get", "call"):
        sl.add_parser(name)
    assert candidates(parser, ["slice"], "", NAMES) == ["call", "get", "ls"]
    assert candidates(parser, ["slice", "call"], "", NAMES) == ["cart"]
    assert candidates(parser, ["slice", "call", "cart"], "t", NAMES) == ["total"]
    assert candidates(parser, ["slice", "get", "cart"], "", NAMES) == []


def test_the_line_is_split_as_a_shell_would() -> None:
    assert complete(PARSER, "scale w", "w", NAMES) == ["web", "worker"]
    assert complete(PARSER, 'events "open', "open", NAMES) == []  # an open quote


def _script(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "commands.txt"
    path.write_text(text)
    return path


def test_a_script_runs_each_line_and_stops_at_the_first_failure(
    srv: RunningServer, tmp_path: Path
) -> None:
    script = _script(
        tmp_path,
        "# the cluster, then a task that is not there, then who I am\n"
        "status --format json\n\n"
        "task get no-such-task\n"
        "whoami --format json\n",
    )
    server = ("--server", srv.base_url, "--token", srv.admin_token)
    result = run_aether(tmp_path, "shell", "-f", str(script), *server)
    assert result.returncode == 41, result.stderr  # `task get`'s not found
    assert '"leader"' in result.stdout and '"role"' not in result.stdout
    assert f"{script}:4: `task get no-such-task` exited 41" in result.stderr
    going = run_aether(tmp_path, "shell", "-f", str(script), "--keep-going", *server)
    assert going.returncode == 41 and '"role"' in going.stdout
    # the same script on stdin; `exit` ends it early and successfully
    stdin = run_aether(tmp_path, "shell", *server, stdin="status --format json\nexit\nnope\n")
    assert stdin.returncode == 0, stdin.stderr
    bad = run_aether(tmp_path, "shell", "-f", str(tmp_path / "missing.txt"))
    assert bad.returncode == 30 and "cannot read" in bad.stderr


def _read_until(fd: int, marker: bytes, timeout: float = 30) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while marker not in seen:
        left = deadline - time.monotonic()
        assert left > 0, seen.decode(errors="replace")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
    return seen


def test_the_prompt_completes_a_command_and_keeps_its_history(
    srv: RunningServer, tmp_path: Path
) -> None:
    env = cli_env(tmp_path, {"XDG_STATE_HOME": str(tmp_path / "state"), "TERM": "dumb"})
    pid, fd = pty.fork()
    if pid == 0:  # the child: the shell in a terminal
        argv = [sys.executable, "-m", "aether", "shell", "--server", srv.base_url]
        os.execve(sys.executable, [*argv, "--token", srv.admin_token], env)
    try:
        _read_until(fd, b"aether> ")
        os.write(fd, b"stat\t --format json\n")  # tab: `stat` completes to `status`
        out = _read_until(fd, b"aether> ")
        assert b'"leader"' in out, out
        os.write(fd, b"exit\n")
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        os.close(fd)
    history = tmp_path / "state" / "aether" / "shell_history"
    assert "status --format json" in history.read_text()
    assert history.stat().st_mode & 0o777 == 0o600
