"""Signing in with OpenID Connect against a real provider on loopback: the CLI's flow
(loopback redirect, one-time code, PKCE verifier) and the console's (a session)."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlencode

import httpx
import pytest

from tests.support.api import assert_envelope, bearer, unique
from tests.support.oidc import (
    OidcProvider,
    cli_pair,
    oidc_provider,
    query_of,
    server_with_sso,
    sign_in_at_provider,
)
from tests.support.server import RunningServer

IVY = "ivy@example.com"


@pytest.fixture(scope="module")
def provider() -> Iterator[OidcProvider]:
    with oidc_provider({"ivy-sub": IVY, "stranger-sub": "stranger@example.com"}) as running:
        yield running


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, provider: OidcProvider
) -> Iterator[RunningServer]:
    with server_with_sso(tmp_path_factory.mktemp("oidc"), provider) as running:
        yield running


@pytest.fixture(scope="module")
def ivy(server: RunningServer) -> str:
    """A person an admin created with Ivy's address, in a tenant of its own."""
    admin = server.new_tenant()
    name = unique("ivy")
    made = httpx.post(
        f"{server.base_url}/api/v1/users",
        json={"name": name, "role": "operator", "email": IVY},
        headers=bearer(admin),
    )
    assert made.status_code == 201, made.text
    return name


def _start(server: RunningServer, **query: str | int) -> str:
    return f"{server.base_url}/api/v1/auth/oidc/start?{urlencode(query)}"


def test_the_server_says_single_sign_on_is_on(
    server: RunningServer, provider: OidcProvider
) -> None:
    found = httpx.get(f"{server.base_url}/api/v1/auth/providers").json()
    assert found == {"password": True, "oidc": True, "oidc_issuer": provider.issuer}


def test_the_cli_gets_a_token_for_the_account_of_a_verified_address(
    server: RunningServer, ivy: str
) -> None:
    verifier, challenge = cli_pair()
    with httpx.Client(timeout=10.0) as browser:
        back = sign_in_at_provider(
            browser, _start(server, cli_port=45123, cli_challenge=challenge), "ivy-sub"
        )
    assert back.status_code == 303, back.text
    assert back.headers["location"].startswith("http://127.0.0.1:45123/callback?")
    code = query_of(back.headers["location"])["code"]
    # the code alone is not enough: the verifier only the CLI holds must come with it
    thief = httpx.post(
        f"{server.base_url}/api/v1/auth/oidc/exchange",
        json={"code": code, "verifier": cli_pair()[0]},
    )
    assert_envelope(thief, 401, "invalid_credentials")
    # ... and that try spent it: sign in again, then exchange with the right verifier
    verifier, challenge = cli_pair()
    with httpx.Client(timeout=10.0) as browser:
        back = sign_in_at_provider(
            browser, _start(server, cli_port=45123, cli_challenge=challenge), "ivy-sub"
        )
    code = query_of(back.headers["location"])["code"]
    got = httpx.post(
        f"{server.base_url}/api/v1/auth/oidc/exchange", json={"code": code, "verifier": verifier}
    )
    assert got.status_code == 200, got.text
    assert (got.json()["user"], got.json()["role"]) == (ivy, "operator")
    me = httpx.get(f"{server.base_url}/api/v1/whoami", headers=bearer(got.json()["token"]))
    assert me.json()["user"] == ivy
    again = httpx.post(
        f"{server.base_url}/api/v1/auth/oidc/exchange", json={"code": code, "verifier": verifier}
    )
    assert_envelope(again, 401, "invalid_credentials")  # one-time


def test_an_identity_without_an_account_is_refused(server: RunningServer) -> None:
    _, challenge = cli_pair()
    with httpx.Client(timeout=10.0) as browser:
        back = sign_in_at_provider(
            browser, _start(server, cli_port=45124, cli_challenge=challenge), "stranger-sub"
        )
    assert back.status_code == 403
    assert "no Aether account" in back.text and "127.0.0.1:45124" not in back.text


def test_a_replayed_callback_is_refused(server: RunningServer, ivy: str) -> None:
    _, challenge = cli_pair()
    with httpx.Client(timeout=10.0) as browser:
        start = browser.get(_start(server, cli_port=45125, cli_challenge=challenge))
        back = browser.post(start.headers["location"], data={"sub": "ivy-sub"})
        callback = back.headers["location"]
        assert browser.get(callback).status_code == 303
        assert browser.get(callback).status_code == 400  # the state is spent


def test_the_console_opens_a_session(server: RunningServer, ivy: str) -> None:
    with httpx.Client(timeout=10.0) as browser:
        back = sign_in_at_provider(browser, _start(server, next="/ui/tasks"), "ivy-sub")
        assert back.status_code == 303 and back.headers["location"] == "/ui/tasks"
        assert "aether_session" in back.cookies
        page = browser.get(f"{server.base_url}/ui/tasks")
        assert page.status_code == 200 and ivy in page.text


def test_the_cli_port_must_be_a_loopback_port_number(server: RunningServer) -> None:
    _, challenge = cli_pair()
    bad = httpx.get(_start(server, cli_port=80, cli_challenge=challenge))
    assert_envelope(bad, 400, "bad_request")
