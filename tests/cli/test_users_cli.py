"""``aether users``, ``aether login --user/--sso`` and ``aether whoami``, run as a user
runs them: real processes against a real server (and a real OIDC provider)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.api import unique
from tests.support.cli import cli_env, run_aether
from tests.support.oidc import (
    OidcProvider,
    oidc_provider,
    server_with_sso,
    sign_in_at_provider,
)
from tests.support.server import RunningServer

PASSWORD = "a password long enough"


@pytest.fixture(scope="module")
def provider() -> Iterator[OidcProvider]:
    with oidc_provider({"kim-sub": "kim@example.com"}) as running:
        yield running


@pytest.fixture(scope="module")
def srv(
    tmp_path_factory: pytest.TempPathFactory, provider: OidcProvider
) -> Iterator[RunningServer]:
    with server_with_sso(tmp_path_factory.mktemp("aether-users-cli"), provider) as running:
        yield running


def aether(home: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return run_aether(home, *args, stdin=stdin)


def test_an_admin_adds_a_person_who_logs_in_with_a_password(
    srv: RunningServer, tmp_path: Path
) -> None:
    admin = srv.new_tenant()
    name = unique("lee")
    as_admin = ("--server", srv.base_url, "--token", admin)
    made = aether(
        tmp_path,
        "users",
        "create",
        name,
        "--role",
        "operator",
        "--password-stdin",
        *as_admin,
        stdin=PASSWORD + "\n",
    )
    assert made.returncode == 0, made.stderr
    assert f"person {name} added as operator" in made.stdout
    me = tmp_path / "lee"
    wrong = aether(
        me,
        "login",
        "--server",
        srv.base_url,
        "--user",
        name,
        "--password-stdin",
        stdin="not the password\n",
    )
    assert wrong.returncode == 42 and "invalid user name or password" in wrong.stderr
    login = aether(
        me,
        "login",
        "--server",
        srv.base_url,
        "--user",
        name,
        "--password-stdin",
        stdin=PASSWORD + "\n",
    )
    assert login.returncode == 0, login.stderr
    assert f"as {name} (operator of tenant" in login.stdout
    session = me / "cache" / "aether" / "session.json"
    assert oct(session.stat().st_mode & 0o777) == "0o600"
    who = aether(me, "whoami", "--format", "json")
    assert who.returncode == 0, who.stderr
    assert (json.loads(who.stdout)["user"], json.loads(who.stdout)["role"]) == (name, "operator")
    # an operator may not manage members: refused, with the exit code for that
    listed = aether(me, "users", "ls")
    assert listed.returncode == 42, listed.stdout
    # the admin's view of the tenant shows the member
    members = aether(tmp_path, "users", "ls", "--format", "json", *as_admin)
    assert any(u["name"] == name for u in json.loads(members.stdout)["users"])


def test_a_service_account_gets_an_expiring_token(srv: RunningServer, tmp_path: Path) -> None:
    admin = srv.new_tenant()
    as_admin = ("--server", srv.base_url, "--token", admin)
    bot = unique("bot")
    made = aether(tmp_path, "users", "create", bot, "--role", "viewer", "--service", *as_admin)
    assert made.returncode == 0, made.stderr
    issued = aether(
        tmp_path,
        "tokens",
        "create",
        "--user",
        bot,
        "--expires",
        "1h",
        "--name",
        "ci",
        "--format",
        "json",
        *as_admin,
    )
    assert issued.returncode == 0, issued.stderr
    token = json.loads(issued.stdout)
    assert token["role"] == "viewer" and token["expires_at"]
    who = aether(tmp_path, "whoami", "--server", srv.base_url, "--token", token["token"])
    assert who.returncode == 0 and f"{bot}: viewer of tenant" in who.stdout
    bad = aether(tmp_path, "tokens", "create", "--user", bot, "--expires", "soon", *as_admin)
    assert bad.returncode == 2 and "--expires" in bad.stderr


def test_login_with_single_sign_on_through_the_browser_flow(
    srv: RunningServer, tmp_path: Path
) -> None:
    admin = srv.new_tenant()
    kim = unique("kim")
    made = aether(
        tmp_path,
        "users",
        "create",
        kim,
        "--role",
        "viewer",
        "--email",
        "kim@example.com",
        "--no-password",
        "--server",
        srv.base_url,
        "--token",
        admin,
    )
    assert made.returncode == 0, made.stderr
    login = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "aether",
            "login",
            "--server",
            srv.base_url,
            "--sso",
            "--no-browser",
        ],
        env=cli_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert login.stderr is not None
        line = login.stderr.readline()
        assert line.startswith("sign in in your browser: "), line
        url = line.split(": ", 1)[1].strip()
        with httpx.Client(timeout=10.0) as browser:
            back = sign_in_at_provider(browser, url, "kim-sub")
            assert back.status_code == 303, back.text
            done = browser.get(back.headers["location"])  # the CLI's loopback page
            assert "Signed in" in done.text
        out, err = login.communicate(timeout=30)
    finally:
        login.kill()
    assert login.returncode == 0, err
    assert f"as {kim} (viewer of tenant" in out
    who = aether(tmp_path, "whoami")
    assert who.returncode == 0 and who.stdout.startswith(f"{kim}: viewer of tenant"), who.stderr
