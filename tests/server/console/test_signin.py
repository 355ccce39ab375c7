"""Signing in to the console, sessions, CSRF and the security headers on every /ui answer."""

from __future__ import annotations

import re

import httpx
import pytest
from playwright.sync_api import Browser, expect

from aether.server.console import CSP
from aether.server.console.view import paginate
from aether.store.records import DEFAULT_TENANT
from tests.support.api import bearer, unique
from tests.support.browser import axe_violations, new_console, screenshot, sign_in
from tests.support.console import csrf_of, login_csrf, signed_in
from tests.support.server import RunningServer


def test_a_visitor_without_a_session_is_sent_to_sign_in(server: RunningServer) -> None:
    with httpx.Client(base_url=server.base_url) as client:
        answer = client.get("/ui/nodes?state=down")
    assert answer.status_code == 303
    assert answer.headers["location"] == "/ui/login?next=/ui/nodes%3Fstate%3Ddown"


def test_signing_in_sets_a_strict_httponly_cookie(server: RunningServer) -> None:
    with httpx.Client(base_url=server.base_url) as client:
        csrf = login_csrf(client)
        answer = client.post(
            "/ui/login", data={"token": server.admin_token, "csrf": csrf, "next": "/ui/apps"}
        )
    assert answer.status_code == 303
    assert answer.headers["location"] == "/ui/apps"
    cookie = next(
        c for c in answer.headers.get_list("set-cookie") if c.startswith("aether_session=")
    )
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie
    assert "Path=/" in cookie
    assert "Secure" not in cookie  # plain HTTP on loopback; over TLS it is Secure


@pytest.mark.parametrize(
    "target", ["https://evil.example/", "//evil.example/ui", "/api/v1/tokens", "/ui\\..\\x"]
)
def test_sign_in_only_returns_to_a_console_page(server: RunningServer, target: str) -> None:
    with httpx.Client(base_url=server.base_url) as client:
        csrf = login_csrf(client)
        answer = client.post(
            "/ui/login", data={"token": server.admin_token, "csrf": csrf, "next": target}
        )
    assert answer.status_code == 303
    assert answer.headers["location"] == "/ui/"


def test_a_wrong_token_is_refused_on_the_form(server: RunningServer) -> None:
    with httpx.Client(base_url=server.base_url) as client:
        csrf = login_csrf(client)
        answer = client.post("/ui/login", data={"token": "not-a-token", "csrf": csrf})
    assert answer.status_code == 401
    assert "not valid" in answer.text
    assert "aether_session" not in answer.headers.get("set-cookie", "")


def test_a_person_signs_in_with_an_account_and_a_wrong_password_is_refused(
    server: RunningServer,
) -> None:
    admin = server.new_tenant()
    name = unique("jo")
    made = httpx.post(
        f"{server.base_url}/api/v1/users",
        json={"name": name, "role": "viewer", "password": "a long enough password"},
        headers=bearer(admin),
    )
    assert made.status_code == 201, made.text
    with httpx.Client(base_url=server.base_url) as client:
        wrong = client.post(
            "/ui/login",
            data={"user": name, "password": "not it at all", "csrf": login_csrf(client)},
        )
        assert wrong.status_code == 401 and "Wrong user name or password" in wrong.text
        assert "aether_session" not in wrong.headers.get("set-cookie", "")
        good = client.post(
            "/ui/login",
            data={
                "user": name,
                "password": "a long enough password",
                "csrf": login_csrf(client),
                "next": "/ui/apps",
            },
        )
        assert good.status_code == 303 and good.headers["location"] == "/ui/apps"
        page = client.get("/ui/apps")
    assert page.status_code == 200 and f"{name} · " in page.text


def test_node_and_join_credentials_cannot_sign_in(server: RunningServer) -> None:
    for token in (server.join_token, server.node_token("console-node-1")):
        with httpx.Client(base_url=server.base_url) as client:
            csrf = login_csrf(client)
            answer = client.post("/ui/login", data={"token": token, "csrf": csrf})
        assert answer.status_code == 403, answer.text
        assert "cannot sign in to the console" in answer.text


def test_sign_in_without_the_form_csrf_is_refused(server: RunningServer) -> None:
    with httpx.Client(base_url=server.base_url) as client:
        login_csrf(client)
        answer = client.post("/ui/login", data={"token": server.admin_token, "csrf": "forged"})
    assert answer.status_code == 403
    assert "<title>Error 403" in answer.text
    assert "aether_session" not in answer.headers.get("set-cookie", "")


def test_a_forged_cookie_gets_the_error_page_and_is_cleared(server: RunningServer) -> None:
    with httpx.Client(base_url=server.base_url, cookies={"aether_session": "forged"}) as client:
        page = client.get("/ui/")
        api = client.get("/api/v1/apps")
    assert page.status_code == 401
    assert page.headers["content-type"].startswith("text/html")
    assert "Sign in again" in page.text
    assert 'aether_session=""' in page.headers["set-cookie"]
    # the API refuses the cookie too, with its envelope
    assert api.status_code == 401
    assert api.json()["code"] == "session_expired"


def test_an_expired_session_is_refused(server: RunningServer) -> None:
    async def expire() -> None:
        from sqlalchemy import update

        from aether.store.records.schema import ConsoleSession

        async with server.ctx.records.sessions() as session:
            await session.execute(
                update(ConsoleSession).values(expires_at=ConsoleSession.created_at)
            )
            await session.commit()

    with signed_in(server.base_url, server.token("viewer")) as client:
        assert client.get("/ui/").status_code == 200
        server.run(expire())
        server.ctx.sessions._entries.clear()  # another server's cache would not know either
        assert client.get("/ui/").status_code == 401


def test_revoking_the_token_ends_its_sessions(server: RunningServer) -> None:
    async def issue() -> tuple[str, str]:  # its own: other tests' operator tokens stay valid
        row = await server.ctx.records.ensure_tenant(DEFAULT_TENANT)
        return await server.ctx.records.issue_token(row.id, "operator", "revoked by a test")

    token_id, token = server.run(issue())
    with signed_in(server.base_url, token) as client:
        assert client.get("/ui/").status_code == 200
        httpx.delete(
            f"{server.base_url}/api/v1/tokens/{token_id}",
            headers={"Authorization": f"Bearer {server.admin_token}"},
        ).raise_for_status()
        assert client.get("/ui/").status_code == 401


def test_signing_out_ends_the_session(server: RunningServer) -> None:
    with signed_in(server.base_url, server.token("viewer")) as client:
        csrf = csrf_of(client)
        cookie = client.cookies["aether_session"]
        assert client.post("/ui/logout", data={"csrf": csrf}).status_code == 303
        again = httpx.get(f"{server.base_url}/ui/", cookies={"aether_session": cookie})
        assert again.status_code == 401


def test_sign_out_without_csrf_changes_nothing(server: RunningServer) -> None:
    with signed_in(server.base_url, server.token("viewer")) as client:
        answer = client.post("/ui/logout", data={"csrf": "wrong"})
        assert answer.status_code == 403
        assert "CSRF" in answer.text
        assert client.get("/ui/").status_code == 200  # still signed in


def test_the_api_takes_the_cookie_but_a_change_needs_the_csrf_header(
    server: RunningServer,
) -> None:
    with signed_in(server.base_url, server.admin_token) as client:
        assert client.get("/api/v1/apps").status_code == 200
        refused = client.post("/api/v1/tokens", json={"role": "viewer", "name": "x"})
        assert refused.status_code == 403
        assert refused.json()["code"] == "csrf_failed"
        csrf = csrf_of(client)
        made = client.post(
            "/api/v1/tokens",
            json={"role": "viewer", "name": "from the console"},
            headers={"X-CSRF-Token": csrf},
        )
        assert made.status_code == 201, made.text


def test_every_console_answer_has_a_strict_csp(server: RunningServer) -> None:
    with signed_in(server.base_url, server.token("viewer")) as client:
        for path in ("/ui/login", "/ui/", "/ui/static/console.js", "/ui/no-such-page"):
            answer = client.get(path)
            assert answer.headers["content-security-policy"] == CSP, path
            assert answer.headers["x-frame-options"] == "DENY"
            assert answer.headers["x-content-type-options"] == "nosniff"
        assert "'unsafe-inline'" not in CSP and "http" not in CSP
        assert client.get("/ui/no-such-page").status_code == 404


def test_pages_have_no_inline_script_or_style(server: RunningServer) -> None:
    with signed_in(server.base_url, server.token("viewer")) as client:
        for path in ("/ui/login", "/ui/"):
            html = client.get(path).text
            assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), path
            assert " style=" not in html and "<style" not in html, path
            assert not re.search(r"<[^>]+\son[a-z]+=", html), path


def test_signing_in_in_a_browser_shows_the_overview(
    server: RunningServer, browser: Browser
) -> None:
    context = new_console(browser)
    page = context.new_page()
    page.goto(f"{server.base_url}/ui/login")
    screenshot(page, "login")
    assert axe_violations(page) == []
    sign_in(page, server.base_url, server.token("viewer"))
    expect(page.locator("h1")).to_have_text("Overview")
    expect(page.locator(".who-badge")).to_contain_text("viewer")
    expect(page.locator("body")).to_have_attribute("data-live", "live")
    assert axe_violations(page) == []
    page.goto(f"{server.base_url}/ui/nowhere")
    expect(page.locator("h1")).to_contain_text("Not found")
    assert axe_violations(page) == []
    context.close()


@pytest.mark.parametrize(
    ("count", "number", "expected"),
    [(0, 1, ([], 1, 1)), (5, 1, ([0, 1], 1, 3)), (5, 3, ([4], 3, 3)), (5, 9, ([4], 3, 3))],
)
def test_pages_of_a_list(count: int, number: int, expected: tuple[list[int], int, int]) -> None:
    assert paginate(list(range(count)), number, 2) == expected
