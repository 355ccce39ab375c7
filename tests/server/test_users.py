"""Accounts: a tenant admin adds people and service accounts, people sign in with a
password (and a TOTP code), tokens carry the account's role and an expiry, and another
tenant's accounts are a 404."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pyotp
import pytest

from aether.server.services.accounts import totp_step
from tests.support.api import assert_envelope, audit_events, bearer, unique
from tests.support.server import RunningServer, running_server

PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(tmp_path_factory.mktemp("users")) as running:
        yield running


@pytest.fixture
async def http(server: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10.0) as client:
        yield client


async def _add(
    http: httpx.AsyncClient, admin: str, role: str = "operator", **body: Any
) -> dict[str, Any]:
    body = {"name": unique("u"), "role": role, "password": PASSWORD, **body}
    answer = await http.post("/api/v1/users", json=body, headers=bearer(admin))
    assert answer.status_code == 201, answer.text
    created: dict[str, Any] = answer.json()
    return created


async def _login(http: httpx.AsyncClient, user: str, **body: Any) -> httpx.Response:
    return await http.post("/api/v1/auth/login", json={"user": user, "password": PASSWORD, **body})


async def test_a_person_signs_in_with_a_password_and_acts_with_the_role_given(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    admin = server.new_tenant()
    alice = await _add(http, admin, "operator", display_name="Alice")
    assert alice["password"] is True and alice["totp"] is False and "password_hash" not in alice
    signed = await _login(http, alice["name"])
    assert signed.status_code == 200, signed.text
    token = signed.json()["token"]
    assert signed.json()["role"] == "operator" and signed.json()["expires_at"]
    me = (await http.get("/api/v1/whoami", headers=bearer(token))).json()
    assert (me["user"], me["role"], me["cluster_admin"]) == (alice["name"], "operator", False)
    assert me["tenant"] == signed.json()["tenant"] and me["expires_at"]
    # an operator deploys, but may not manage members
    listed = await http.get("/api/v1/users", headers=bearer(token))
    assert listed.status_code == 403
    # the sign-in is an audit event with the account as its actor
    events = await audit_events(http, server.admin_token, limit=200)
    signin = [
        e for e in events if e["action"] == "POST /auth/login" and e["actor"] == alice["name"]
    ]
    assert signin and signin[0]["actor_kind"] == "user" and signin[0]["outcome"] == "ok"


async def test_a_wrong_password_and_an_unknown_account_get_the_same_answer(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    admin = server.new_tenant()
    bob = await _add(http, admin)
    wrong = await http.post(
        "/api/v1/auth/login", json={"user": bob["name"], "password": "not the password"}
    )
    unknown = await _login(http, unique("nobody"))
    for answer in (wrong, unknown):
        assert_envelope(answer, 401, "invalid_credentials")
    assert wrong.json()["message"] == unknown.json()["message"]
    events = await audit_events(http, server.admin_token, limit=200)
    refused = [e for e in events if e["action"] == "POST /auth/login" and e["status"] == 401]
    assert any(bob["name"] in e["detail"] for e in refused)


async def test_password_tries_are_limited_per_account(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    admin = server.new_tenant()
    carol = await _add(http, admin)
    answers = [
        await http.post("/api/v1/auth/login", json={"user": carol["name"], "password": "x" * 12})
        for _ in range(11)
    ]
    assert [a.status_code for a in answers[:10]] == [401] * 10
    assert_envelope(answers[10], 429, "rate_limited")
    assert int(answers[10].headers["Retry-After"]) >= 1
    # even the right password waits now
    assert (await _login(http, carol["name"])).status_code == 429


async def test_a_change_of_role_or_a_removal_reaches_the_tokens_already_out(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    admin = server.new_tenant()
    dan = await _add(http, admin, "viewer")
    token = (await _login(http, dan["name"])).json()["token"]
    assert (await http.get("/api/v1/users", headers=bearer(token))).status_code == 403
    promoted = await http.patch(
        f"/api/v1/users/{dan['name']}", json={"role": "admin"}, headers=bearer(admin)
    )
    assert promoted.status_code == 200 and promoted.json()["role"] == "admin"
    assert (await http.get("/api/v1/users", headers=bearer(token))).status_code == 200
    removed = await http.delete(f"/api/v1/users/{dan['name']}", headers=bearer(admin))
    assert removed.status_code == 200 and removed.json()["tokens_revoked"] == 1
    assert (await http.get("/api/v1/whoami", headers=bearer(token))).status_code == 401
    assert (await _login(http, dan["name"])).status_code == 401


async def test_a_service_account_holds_tokens_with_its_role_and_an_expiry(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    admin = server.new_tenant()
    ci = unique("ci")
    created = await http.post(
        "/api/v1/users",
        json={"name": ci, "role": "operator", "kind": "service"},
        headers=bearer(admin),
    )
    assert created.status_code == 201, created.text
    assert created.json()["kind"] == "service" and created.json()["password"] is False
    issued = await http.post(
        "/api/v1/tokens",
        json={"name": "deploys", "user": ci, "expires_in": 60},
        headers=bearer(admin),
    )
    assert issued.status_code == 201, issued.text
    assert issued.json()["role"] == "operator" and issued.json()["user"] == ci
    me = (await http.get("/api/v1/whoami", headers=bearer(issued.json()["token"]))).json()
    assert (me["user"], me["role"]) == (ci, "operator") and me["expires_at"]
    # a service account cannot sign in with a password, and a role beside its own is refused
    no = await http.post("/api/v1/auth/login", json={"user": ci, "password": PASSWORD})
    assert_envelope(no, 401, "invalid_credentials")
    mismatch = await http.post(
        "/api/v1/tokens", json={"name": "x", "user": ci, "role": "admin"}, headers=bearer(admin)
    )
    assert_envelope(mismatch, 400, "bad_request")
    listed = (await http.get("/api/v1/tokens", headers=bearer(admin))).json()
    assert any(t["user"] == ci and t["expires_at"] for t in listed)


async def test_an_expired_token_stops_working_even_when_cached(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    admin = server.new_tenant()
    erin = await _add(http, admin, "viewer")

    async def short_lived() -> str:
        from datetime import timedelta

        from aether.store.records.base import now

        ctx = server.ctx
        user = await ctx.records.find_user(erin["name"])
        assert user is not None
        member_tenant = (await ctx.records.tenants_of(user.id))[0]
        _, token = await ctx.records.issue_token(
            member_tenant[0],
            "viewer",
            "short",
            user_id=user.id,
            expires_at=now() + timedelta(seconds=1.5),
        )
        return token

    token = server.run(short_lived())
    assert (await http.get("/api/v1/whoami", headers=bearer(token))).status_code == 200  # cached
    time.sleep(2.0)
    assert_envelope(await http.get("/api/v1/whoami", headers=bearer(token)), 401, "unauthorized")


async def test_totp_is_asked_for_once_enrolled_and_checked(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    admin = server.new_tenant()
    frank = await _add(http, admin, "admin", totp=True)
    secret = frank["totp_enrolment"]["secret"]
    assert frank["totp_enrolment"]["uri"].startswith("otpauth://totp/")
    assert_envelope(await _login(http, frank["name"]), 401, "totp_required")
    assert_envelope(await _login(http, frank["name"], totp="000000"), 401, "invalid_credentials")
    code = pyotp.TOTP(secret).now()
    good = await _login(http, frank["name"], totp=code)
    assert good.status_code == 200, good.text
    # a code counts once: someone who saw it cannot sign in with it again
    assert_envelope(await _login(http, frank["name"], totp=code), 401, "invalid_credentials")
    # the secret is never shown again
    again = (await http.get(f"/api/v1/users/{frank['name']}", headers=bearer(admin))).json()
    assert again["totp"] is True and again["totp_enrolment"] is None


def test_admins_without_a_second_factor_are_refused_when_the_cluster_requires_one(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    with running_server(tmp_path_factory.mktemp("totp"), totp_required_for_admins=True) as srv:
        admin = srv.new_tenant()
        with httpx.Client(base_url=srv.base_url, timeout=10.0) as http:
            for role in ("admin", "operator"):
                name = unique(role)
                made = http.post(
                    "/api/v1/users",
                    json={"name": name, "role": role, "password": PASSWORD},
                    headers=bearer(admin),
                )
                assert made.status_code == 201, made.text
                answer = http.post("/api/v1/auth/login", json={"user": name, "password": PASSWORD})
                if role == "admin":
                    assert_envelope(answer, 403, "totp_enrollment_required")
                    enrolled = http.post(f"/api/v1/users/{name}/totp", headers=bearer(admin))
                    code = pyotp.TOTP(enrolled.json()["secret"]).now()
                    answer = http.post(
                        "/api/v1/auth/login",
                        json={"user": name, "password": PASSWORD, "totp": code},
                    )
                assert answer.status_code == 200, answer.text


async def test_another_tenants_accounts_are_a_404(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    admin_a, admin_b = server.new_tenant(), server.new_tenant()
    gina = await _add(http, admin_a)
    name = gina["name"]
    for method, path, body in (
        ("GET", f"/api/v1/users/{name}", None),
        ("PATCH", f"/api/v1/users/{name}", {"role": "viewer"}),
        ("DELETE", f"/api/v1/users/{name}", None),
        ("PUT", f"/api/v1/users/{name}/password", {"password": "a" * 16}),
        ("POST", f"/api/v1/users/{name}/totp", None),
    ):
        answer = await http.request(method, path, json=body, headers=bearer(admin_b))
        assert_envelope(answer, 404, "not_found")
    assert all(
        u["name"] != name for u in (await http.get("/api/v1/users", headers=bearer(admin_b))).json()
    )
    # signing in to a tenant it is not in is the same answer as a wrong password
    assert_envelope(await _login(http, name, tenant="default"), 401, "invalid_credentials")


async def test_a_person_changes_its_own_password_with_the_current_one(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    admin = server.new_tenant()
    hal = await _add(http, admin, "viewer")
    token = (await _login(http, hal["name"])).json()["token"]
    path = f"/api/v1/users/{hal['name']}/password"
    refused = await http.put(path, json={"password": "n" * 16}, headers=bearer(token))
    assert_envelope(refused, 401, "invalid_credentials")
    changed = await http.put(
        path, json={"password": "n" * 16, "current_password": PASSWORD}, headers=bearer(token)
    )
    assert changed.status_code == 204, changed.text
    assert (await _login(http, hal["name"])).status_code == 401
    relogin = await http.post(
        "/api/v1/auth/login", json={"user": hal["name"], "password": "n" * 16}
    )
    assert relogin.status_code == 200
    # a viewer may not change another member's password
    other = await _add(http, admin, "viewer")
    assert_envelope(
        await http.put(
            f"/api/v1/users/{other['name']}/password",
            json={"password": "z" * 16},
            headers=bearer(token),
        ),
        404,
        "not_found",
    )


async def test_the_cluster_admin_makes_a_person_a_member_of_a_second_tenant(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    admin_a = server.new_tenant()
    tenant_b = unique("tenant")
    server.mint("admin", tenant_b)
    ivan = await _add(http, admin_a, "operator")
    # a tenant's admin may not: that is the cluster admin's
    refused = await http.put(
        f"/api/v1/tenants/{tenant_b}/members/{ivan['name']}",
        json={"role": "viewer"},
        headers=bearer(admin_a),
    )
    assert_envelope(refused, 403, "forbidden")
    added = await http.put(
        f"/api/v1/tenants/{tenant_b}/members/{ivan['name']}",
        json={"role": "viewer"},
        headers=bearer(server.admin_token),
    )
    assert added.status_code == 200 and added.json()["role"] == "viewer"
    # two tenants now: signing in asks which, and each token has that tenant's role
    assert_envelope(await _login(http, ivan["name"]), 400, "bad_request")
    in_b = await _login(http, ivan["name"], tenant=tenant_b)
    assert (in_b.json()["tenant"], in_b.json()["role"]) == (tenant_b, "viewer")
    me = (await http.get("/api/v1/whoami", headers=bearer(in_b.json()["token"]))).json()
    assert len(me["tenants"]) == 2 and tenant_b in me["tenants"]
    # tenant A's admin no longer governs the account alone: its password is not A's to set
    refused = await http.put(
        f"/api/v1/users/{ivan['name']}/password",
        json={"password": "b" * 16},
        headers=bearer(admin_a),
    )
    assert_envelope(refused, 403, "forbidden")


def test_a_totp_code_of_this_step_or_either_side_passes_once() -> None:
    secret = pyotp.random_base32()
    totp = pyotp.TOTP(secret)
    at = 1_800_000_015.0  # inside step 60_000_000
    step = 60_000_000
    assert totp_step(secret, totp.at(at), None, at) == step
    assert totp_step(secret, totp.at(at - 30), None, at) == step - 1  # the clock drifted
    assert totp_step(secret, totp.at(at + 30), None, at) == step + 1
    assert totp_step(secret, totp.at(at - 60), None, at) is None  # too old
    assert totp_step(secret, totp.at(at), step, at) is None  # used already
    assert totp_step(secret, totp.at(at + 30), step, at) == step + 1  # a newer one passes
