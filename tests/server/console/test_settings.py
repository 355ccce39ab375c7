"""The settings pages: tokens (create once-shown, revoke), signing keys, retention."""

from __future__ import annotations

import html
import re
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from playwright.sync_api import Browser, expect

from aether.artifacts.signing import fingerprint, public_key_b64
from tests.support.api import bearer, unique
from tests.support.browser import axe_violations, new_console, screenshot, sign_in
from tests.support.console import csrf_of, signed_in
from tests.support.server import RunningServer


def _api(server: RunningServer, token: str) -> httpx.Client:
    return httpx.Client(base_url=server.base_url, headers=bearer(token), timeout=15.0)


def _new_app(server: RunningServer, token: str | None = None) -> str:
    app = unique("settings-app")
    with _api(server, token or server.token("operator")) as api:
        api.put(f"/api/v1/apps/{app}/settings", json={}).raise_for_status()
    return app


def _app_with_a_key(server: RunningServer) -> tuple[str, dict[str, Any]]:
    """A new app of the default tenant with one signing key: (app, the key's record)."""
    app = _new_app(server)
    with _api(server, server.token("operator")) as api:
        key: dict[str, Any] = api.post(
            f"/api/v1/apps/{app}/public-keys",
            json={"public_key": public_key_b64(_new_key().public_key())},
        ).json()
    return app, key


def _tokens(server: RunningServer, token: str | None = None) -> list[dict[str, object]]:
    with _api(server, token or server.admin_token) as api:
        found: list[dict[str, object]] = api.get("/api/v1/tokens").json()
    return found


def _keys(server: RunningServer, app: str, token: str | None = None) -> list[dict[str, str]]:
    with _api(server, token or server.token("viewer")) as api:
        answer = api.get(f"/api/v1/apps/{app}/public-keys")
        answer.raise_for_status()
        found: list[dict[str, str]] = answer.json()
    return found


def _settings_of(server: RunningServer, app: str) -> dict[str, object]:
    with _api(server, server.token("viewer")) as api:
        found: dict[str, object] = api.get(f"/api/v1/apps/{app}/settings").json()
    return found


def _created_token(page: str) -> str:
    match = re.search(r'<input id="new-token"[^>]*value="([^"]+)"', page)
    assert match, page
    return match.group(1)


def _message(page: str) -> str:
    match = re.search(r'<p class="message">(.*?)</p>', page, re.S)
    assert match, page
    return html.unescape(match.group(1))


def _status(server: RunningServer, token: str) -> int:
    with _api(server, token) as api:
        return api.get("/api/v1/apps").status_code


# -- what each role sees ----------------------------------------------------------------


@pytest.mark.parametrize("role", ["viewer", "operator"])
def test_viewer_and_operator_see_settings_but_not_the_tokens(
    server: RunningServer, role: str
) -> None:
    app = _new_app(server)
    with signed_in(server.base_url, server.token(role)) as client:
        page = client.get("/ui/settings")
    assert page.status_code == 200, page.text
    assert 'data-testid="tokens-need-admin"' in page.text
    assert 'action="/ui/settings/tokens"' not in page.text
    assert f'data-app="{app}"' in page.text
    s = server.ctx.settings
    assert f"{s.events_resume_limit} revisions" in page.text
    assert f"{s.metrics_retention_days} days" in page.text
    assert "AETHER_AUDIT_RETENTION_DAYS" in page.text
    assert f"{s.audit_retention_days} days" in page.text


def test_an_admin_sees_the_tenants_tokens_without_their_secrets(server: RunningServer) -> None:
    tenant_admin = server.new_tenant()
    with _api(server, tenant_admin) as api:
        made = api.post("/api/v1/tokens", json={"role": "viewer", "name": "ci-reader"}).json()
    with signed_in(server.base_url, tenant_admin) as client:
        page = client.get("/ui/settings").text
    assert f'data-token="{made["id"]}"' in page
    assert "ci-reader" in page
    assert made["token"] not in page
    # a token of another tenant is not listed
    other = next(t for t in _tokens(server) if not t["revoked_at"])
    assert f'data-token="{other["id"]}"' not in page


# -- tokens: create once, revoke ----------------------------------------------------------


def test_an_admin_creates_a_token_shown_once_that_works(server: RunningServer) -> None:
    admin = server.new_tenant()
    with signed_in(server.base_url, admin) as client:
        csrf = csrf_of(client, "/ui/settings")
        answer = client.post(
            "/ui/settings/tokens", data={"csrf": csrf, "name": "deploy bot", "role": "operator"}
        )
        assert answer.status_code == 201, answer.text
        assert answer.headers["cache-control"] == "no-store"
        assert "location" not in answer.headers
        token = _created_token(answer.text)
        assert "Copy it now" in answer.text
        # the list shows it, never its secret
        listing = client.get("/ui/settings").text
        assert "deploy bot" in listing and token not in listing
    assert _status(server, token) == 200
    with _api(server, token) as api:
        assert api.post("/api/v1/tokens/rotate").status_code == 201  # an operator's own call


def test_an_admin_revokes_a_token_and_it_stops_working(server: RunningServer) -> None:
    admin = server.new_tenant()
    with _api(server, admin) as api:
        made = api.post("/api/v1/tokens", json={"role": "viewer", "name": "old"}).json()
    assert _status(server, made["token"]) == 200
    with signed_in(server.base_url, admin) as client:
        csrf = csrf_of(client, "/ui/settings")
        answer = client.post(f"/ui/settings/tokens/{made['id']}/revoke", data={"csrf": csrf})
        assert answer.status_code == 303, answer.text
        assert answer.headers["location"].startswith("/ui/settings?done=")
        after = client.get(answer.headers["location"]).text
    assert "revoked" in after
    assert _status(server, made["token"]) == 401


@pytest.mark.parametrize("role", ["viewer", "operator"])
def test_a_non_admin_cannot_create_or_revoke_a_token(server: RunningServer, role: str) -> None:
    victim = next(t for t in _tokens(server) if not t["revoked_at"])
    before = len(_tokens(server))
    with signed_in(server.base_url, server.token(role)) as client:
        csrf = csrf_of(client, "/ui/settings")
        made = client.post(
            "/ui/settings/tokens", data={"csrf": csrf, "name": "sneaky", "role": "admin"}
        )
        gone = client.post(f"/ui/settings/tokens/{victim['id']}/revoke", data={"csrf": csrf})
    for answer in (made, gone):
        assert answer.status_code == 403, answer.text
        assert "<title>Error 403" in answer.text
    after = _tokens(server)
    assert len(after) == before
    assert next(t for t in after if t["id"] == victim["id"])["revoked_at"] is None


def test_create_and_revoke_without_csrf_are_refused_and_change_nothing(
    server: RunningServer,
) -> None:
    admin = server.new_tenant()
    with _api(server, admin) as api:
        made = api.post("/api/v1/tokens", json={"role": "viewer", "name": "keep"}).json()
    before = _tokens(server, admin)
    with signed_in(server.base_url, admin) as client:
        create = client.post("/ui/settings/tokens", data={"name": "x", "role": "viewer"})
        revoke = client.post(f"/ui/settings/tokens/{made['id']}/revoke", data={"csrf": "forged"})
    for answer in (create, revoke):
        assert answer.status_code == 403
        assert "CSRF" in answer.text
    assert _tokens(server, admin) == before
    assert _status(server, made["token"]) == 200


@pytest.mark.parametrize(
    ("name", "role", "message"),
    [
        ("bot", "superuser", "body.role: Input should be 'admin', 'operator', 'viewer' or"),
        ("   ", "viewer", "body.name: String should have at least 1 character"),
        ("bot", "join", "only a cluster admin (an admin of the default tenant) may create"),
    ],
)
def test_bad_token_input_shows_the_apis_message(
    server: RunningServer, name: str, role: str, message: str
) -> None:
    admin = server.new_tenant()
    before = _tokens(server, admin)
    with signed_in(server.base_url, admin) as client:
        csrf = csrf_of(client, "/ui/settings")
        answer = client.post("/ui/settings/tokens", data={"csrf": csrf, "name": name, "role": role})
    assert answer.status_code in (400, 403), answer.text
    assert "<title>Error" in answer.text
    assert message in _message(answer.text)
    assert _tokens(server, admin) == before


def test_revoking_an_unknown_or_foreign_token_is_not_found(server: RunningServer) -> None:
    foreign = next(t for t in _tokens(server) if not t["revoked_at"])
    admin = server.new_tenant()
    with signed_in(server.base_url, admin) as client:
        csrf = csrf_of(client, "/ui/settings")
        answer = client.post(f"/ui/settings/tokens/{foreign['id']}/revoke", data={"csrf": csrf})
    assert answer.status_code == 404
    assert "Not found" in answer.text
    assert next(t for t in _tokens(server) if t["id"] == foreign["id"])["revoked_at"] is None


# -- signing keys and retention of an app ---------------------------------------------------


def _new_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def _pem(key: Ed25519PrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@pytest.mark.parametrize("role", ["viewer", "operator", "admin"])
def test_every_role_sees_an_apps_keys_and_retention(server: RunningServer, role: str) -> None:
    app = _new_app(server)
    key = _new_key()
    with _api(server, server.token("operator")) as api:
        api.post(
            f"/api/v1/apps/{app}/public-keys",
            json={"public_key": public_key_b64(key.public_key()), "name": "release"},
        ).raise_for_status()
        api.put(f"/api/v1/apps/{app}/settings", json={"retain_deployments": 4}).raise_for_status()
    with signed_in(server.base_url, server.token(role)) as client:
        page = client.get(f"/ui/settings/apps/{app}")
    assert page.status_code == 200, page.text
    assert fingerprint(key.public_key()) in page.text
    assert 'value="4"' in page.text
    disabled = 'disabled title="needs the operator role"' in page.text
    assert disabled == (role == "viewer")


def test_an_operator_adds_keys_toggles_signatures_sets_retention_and_removes_a_key(
    server: RunningServer,
) -> None:
    app = _new_app(server)
    raw, pem = _new_key(), _new_key()
    with signed_in(server.base_url, server.token("operator")) as client:
        csrf = csrf_of(client, f"/ui/settings/apps/{app}")
        first = client.post(
            f"/ui/settings/apps/{app}/keys",
            data={"csrf": csrf, "public_key": public_key_b64(raw.public_key()), "name": "ci"},
        )
        assert first.status_code == 303, first.text
        second = client.post(
            f"/ui/settings/apps/{app}/keys", data={"csrf": csrf, "public_key": _pem(pem)}
        )
        assert second.status_code == 303, second.text
        keys = _keys(server, app)
        assert [k["fingerprint"] for k in keys] == [
            fingerprint(raw.public_key()),
            fingerprint(pem.public_key()),
        ]
        saved = client.post(
            f"/ui/settings/apps/{app}",
            data={
                "csrf": csrf,
                "require_signature": "on",
                "require_provenance": "on",
                "retain_deployments": "3",
            },
        )
        assert saved.status_code == 303, saved.text
        assert _settings_of(server, app) == {
            "app": app,
            "require_signature": True,
            "require_provenance": True,
            "retain_deployments": 3,
        }
        page = client.get(saved.headers["location"]).text
        assert "Saved: signatures required, provenance required, 3 deployments kept." in page
        assert 'name="require_signature" checked' in page
        assert 'name="require_provenance" checked' in page
        removed = client.post(
            f"/ui/settings/apps/{app}/keys/{keys[0]['id']}/remove", data={"csrf": csrf}
        )
        assert removed.status_code == 303, removed.text
        cleared = client.post(
            f"/ui/settings/apps/{app}", data={"csrf": csrf, "retain_deployments": ""}
        )
        assert cleared.status_code == 303
    assert [k["name"] for k in _keys(server, app)] == [keys[1]["name"]]
    assert _settings_of(server, app)["require_signature"] is False
    assert _settings_of(server, app)["retain_deployments"] is None


def test_a_viewer_cannot_change_keys_or_retention(server: RunningServer) -> None:
    app, key = _app_with_a_key(server)
    with signed_in(server.base_url, server.token("viewer")) as client:
        csrf = csrf_of(client, f"/ui/settings/apps/{app}")
        answers = [
            client.post(
                f"/ui/settings/apps/{app}/keys",
                data={"csrf": csrf, "public_key": public_key_b64(_new_key().public_key())},
            ),
            client.post(f"/ui/settings/apps/{app}/keys/{key['id']}/remove", data={"csrf": csrf}),
            client.post(
                f"/ui/settings/apps/{app}",
                data={"csrf": csrf, "require_signature": "on", "retain_deployments": "2"},
            ),
        ]
    for answer in answers:
        assert answer.status_code == 403, answer.text
        assert "<title>Error 403" in answer.text
    assert [k["id"] for k in _keys(server, app)] == [key["id"]]
    assert _settings_of(server, app) == {
        "app": app,
        "require_signature": False,
        "require_provenance": False,
        "retain_deployments": None,
    }


def test_another_tenants_app_is_not_found_and_unchanged(server: RunningServer) -> None:
    app, key = _app_with_a_key(server)
    with signed_in(server.base_url, server.new_tenant()) as client:
        csrf = csrf_of(client, "/ui/settings")
        assert f'data-app="{app}"' not in client.get("/ui/settings").text
        answers = [
            client.get(f"/ui/settings/apps/{app}"),
            client.post(
                f"/ui/settings/apps/{app}/keys",
                data={"csrf": csrf, "public_key": public_key_b64(_new_key().public_key())},
            ),
            client.post(f"/ui/settings/apps/{app}/keys/{key['id']}/remove", data={"csrf": csrf}),
            client.post(f"/ui/settings/apps/{app}", data={"csrf": csrf, "require_signature": "on"}),
        ]
    for answer in answers:
        assert answer.status_code == 404, answer.text
        assert "Not found" in answer.text
        assert "another tenant" not in answer.text
    assert [k["id"] for k in _keys(server, app)] == [key["id"]]
    assert _settings_of(server, app)["require_signature"] is False


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("not base64!!", "invalid public_key: the public key is not valid base64"),
        (
            "-----BEGIN PUBLIC KEY-----\nabc\n-----END PUBLIC KEY-----",
            "invalid public_key: the public key PEM cannot be read",
        ),
        ("-----BEGIN PRIVATE KEY-----\nMC4C...", "That is a private key"),
    ],
)
def test_a_bad_key_shows_the_message_and_adds_nothing(
    server: RunningServer, key: str, message: str
) -> None:
    app = _new_app(server)
    with signed_in(server.base_url, server.token("operator")) as client:
        csrf = csrf_of(client, f"/ui/settings/apps/{app}")
        answer = client.post(
            f"/ui/settings/apps/{app}/keys", data={"csrf": csrf, "public_key": key}
        )
    assert answer.status_code == 400
    assert _message(answer.text).startswith(message)
    assert _keys(server, app) == []


@pytest.mark.parametrize(
    ("value", "message"),
    [("0", "Input should be greater than or equal to 1"), ("many", "a whole number")],
)
def test_a_bad_retention_shows_the_message_and_changes_nothing(
    server: RunningServer, value: str, message: str
) -> None:
    app = _new_app(server)
    with signed_in(server.base_url, server.token("operator")) as client:
        csrf = csrf_of(client, f"/ui/settings/apps/{app}")
        answer = client.post(
            f"/ui/settings/apps/{app}",
            data={"csrf": csrf, "require_signature": "on", "retain_deployments": value},
        )
    assert answer.status_code == 400
    assert message in _message(answer.text)
    assert _settings_of(server, app)["require_signature"] is False


def test_key_changes_without_csrf_are_refused(server: RunningServer) -> None:
    app = _new_app(server)
    with signed_in(server.base_url, server.token("operator")) as client:
        added = client.post(
            f"/ui/settings/apps/{app}/keys",
            data={"public_key": public_key_b64(_new_key().public_key())},
        )
        saved = client.post(f"/ui/settings/apps/{app}", data={"require_signature": "on"})
    for answer in (added, saved):
        assert answer.status_code == 403
        assert "CSRF" in answer.text
    assert _keys(server, app) == []
    assert _settings_of(server, app)["require_signature"] is False


# -- in a browser ---------------------------------------------------------------------------


def test_in_a_browser_an_admin_creates_a_token_sees_it_once_and_revokes_it(
    server: RunningServer, browser: Browser
) -> None:
    admin = server.new_tenant()
    _new_app(server, admin)
    context = new_console(browser)
    page = context.new_page()
    sign_in(page, server.base_url, admin, "/ui/settings")
    expect(page.locator("h1")).to_have_text("Settings")
    page.fill("#token-name", "browser bot")
    page.select_option("#token-role", "viewer")
    page.click("form[action='/ui/settings/tokens'] button[type=submit]")
    expect(page.locator("h1")).to_have_text("Token created")
    token = page.locator("#new-token").input_value()
    assert _status(server, token) == 200
    assert axe_violations(page) == []
    page.click("text=Back to the settings")
    row = page.locator("tr", has_text="browser bot")
    expect(row).to_contain_text("active")
    assert token not in page.content()
    screenshot(page, "settings")
    assert axe_violations(page) == []
    page.once("dialog", lambda dialog: dialog.accept())
    row.get_by_role("button", name="Revoke token browser bot").click()
    expect(page.locator(".flash.ok")).to_contain_text("'browser bot' (viewer) revoked")
    expect(page.locator("tr", has_text="browser bot")).to_contain_text("revoked")
    assert _status(server, token) == 401
    context.close()


@pytest.mark.parametrize("width", [1280, 390])
def test_the_settings_pages_pass_the_accessibility_scan(
    server: RunningServer, browser: Browser, width: int
) -> None:
    app = _new_app(server)
    with _api(server, server.token("operator")) as api:
        api.post(
            f"/api/v1/apps/{app}/public-keys",
            json={"public_key": public_key_b64(_new_key().public_key()), "name": "release"},
        ).raise_for_status()
    context = new_console(browser, width=width)
    page = context.new_page()
    sign_in(page, server.base_url, server.admin_token, "/ui/settings")
    expect(page.locator("h1")).to_have_text("Settings")
    assert axe_violations(page) == []
    page.goto(f"{server.base_url}/ui/settings/apps/{app}")
    expect(page.locator("h1")).to_have_text(f"Settings of {app}")
    assert axe_violations(page) == []
    no_overflow = "document.documentElement.scrollWidth <= window.innerWidth"
    assert page.evaluate(no_overflow)
    if width == 1280:
        screenshot(page, "settings-app")
    page.fill("#retain-deployments", "5")
    page.click("form[aria-label='Signature and retention settings'] button[type=submit]")
    expect(page.locator(".flash.ok")).to_contain_text("5 deployments kept")
    context.close()
