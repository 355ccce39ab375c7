"""The apps pages (``/ui/apps``, ``/ui/apps/{app}``, its artifact view) on a real server.

Route tests sign in over HTTP with each role; the browser test plays two nodes
through the node API (``FakeNodes``) so the leader places and activates real
instance records, and watches the page follow them live.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import httpx
import pytest
from playwright.sync_api import Browser, expect

from aether.artifacts.signing import fingerprint, generate_key, public_key_b64, sign_digest
from aether.store.records import DEFAULT_TENANT
from tests.support.api import DIGEST_HEADER, bearer, sha256_of, spec_for, unique
from tests.support.browser import axe_violations, new_console, screenshot, sign_in
from tests.support.console import csrf_of, signed_in
from tests.support.fake_nodes import FakeNodes
from tests.support.server import RunningServer, running_server
from tests.support.waiting import eventually

T = TypeVar("T")

SBOM = {
    "bomFormat": "CycloneDX",
    "specVersion": "1.5",
    "components": [
        {"type": "library", "name": "flask", "version": "3.0.3", "purl": "pkg:pypi/flask@3.0.3"}
    ],
}
MANIFEST = [{"path": "app.py", "size": 120, "sha256": "ab" * 32, "mode": 0o644}]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """Its own server: the fake nodes here take every instance the leader places. Long
    leases: they do not heartbeat."""
    with running_server(tmp_path_factory.mktemp("console-apps"), lease_ttl=120.0) as running:
        yield running


# -- helpers ------------------------------------------------------------------------


def upload(server: RunningServer, token: str) -> str:
    data = os.urandom(256)
    answer = httpx.post(
        f"{server.base_url}/api/v1/artifacts",
        content=data,
        headers={**bearer(token), DIGEST_HEADER: sha256_of(data)},
    )
    assert answer.status_code == 201, answer.text
    return sha256_of(data)


def deploy(
    server: RunningServer,
    app: str,
    *,
    instances: int = 1,
    token: str | None = None,
    spec: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Upload fresh bytes and deploy them as ``app`` with an SBOM and a manifest."""
    token = token or server.admin_token
    body = {
        "digest": upload(server, token),
        "spec": spec_for(app, **(spec or {})),
        "instances": instances,
        "sbom": SBOM,
        "manifest": MANIFEST,
    }
    answer = httpx.post(
        f"{server.base_url}/api/v1/apps/{app}/deployments", json=body, headers=bearer(token)
    )
    assert answer.status_code == 201, answer.text
    result: dict[str, Any] = answer.json()
    return result


def app_of(server: RunningServer, app: str, token: str | None = None) -> dict[str, Any]:
    answer = httpx.get(
        f"{server.base_url}/api/v1/apps/{app}", headers=bearer(token or server.admin_token)
    )
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


def log(server: RunningServer, app: str, *lines: str) -> None:
    async def append() -> None:
        tenant = await server.ctx.records.ensure_tenant(DEFAULT_TENANT)
        await server.ctx.logs.append(tenant.id, app, f"v1/0@{app}-node", "\n".join(lines))

    server.run(append())


def in_thread(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to its end on a loop of its own (the browser's sync API holds this
    thread's)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, make()).result(timeout=60)


def with_nodes(server: RunningServer, act: Callable[[FakeNodes], Coroutine[Any, Any, T]]) -> T:
    async def run() -> T:
        fake = FakeNodes(server)
        try:
            return await act(fake)
        finally:
            await fake.close()

    return in_thread(run)


async def one_active(server: RunningServer, fake: FakeNodes, app: str) -> dict[str, Any]:
    """Two fake nodes, ``app`` deployed with one instance, brought up to ACTIVE."""
    await fake.register(unique("n"))
    await fake.register(unique("n"))
    deploy(server, app)

    async def placed() -> list[dict[str, Any]]:
        return await fake.instances(app)

    (inst,) = await eventually(placed, "a placement")
    await fake.bring_up(inst["key"])
    found: dict[str, Any] = inst
    return found


def error_message(page: httpx.Response) -> str:
    assert page.headers["content-type"].startswith("text/html"), page.text
    found = re.search(r'<p class="message">(.*?)</p>', page.text, re.S)
    assert found, page.text
    return found.group(1).strip()


# -- /ui/apps ----------------------------------------------------------------------


def test_the_list_shows_the_tenants_apps_filtered_and_paged(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = unique("list")
    names = [f"{prefix}-{i}" for i in range(3)]
    for name in names:
        deploy(server, name, instances=2)
    other = unique("hidden")
    deploy(server, other)
    monkeypatch.setattr("aether.server.console.apps.PAGE_SIZE", 2)
    with signed_in(server.base_url, server.token("viewer")) as client:
        first = client.get("/ui/apps", params={"q": prefix})
        assert first.status_code == 200, first.text
        assert "3 of" in first.text and "apps match" in first.text
        assert names[0] in first.text and names[1] in first.text
        assert names[2] not in first.text and other not in first.text
        assert "Page 1 of 2" in first.text
        assert re.search(r'data-testid="app-instances">0 / 2<', first.text)
        second = client.get("/ui/apps", params={"q": prefix, "page": 2})
        assert names[2] in second.text and names[0] not in second.text
        everything = client.get("/ui/apps").text
        assert other in everything
        assert client.get("/ui/apps", params={"page": "x"}).status_code == 400
    # another tenant sees none of them
    with signed_in(server.base_url, server.new_tenant()) as client:
        answer = client.get("/ui/apps", params={"q": prefix})
        assert answer.status_code == 200
        assert names[0] not in answer.text and "No app matches" in answer.text


# -- /ui/apps/{app} ----------------------------------------------------------------


def test_a_viewer_sees_the_app_and_every_action_is_disabled_and_refused(
    server: RunningServer,
) -> None:
    app = unique("view")
    dep = deploy(server, app, instances=2)
    log(server, app, "hello from the app")
    with signed_in(server.base_url, server.token("viewer")) as client:
        page = client.get(f"/ui/apps/{app}")
        assert page.status_code == 200, page.text
        html = page.text
        assert f"<h1>{app}</h1>" in html
        assert 'data-testid="app-instances">0 / 2<' in html
        assert f'data-deployment="{dep["id"]}"' in html
        assert "created</strong>" in html  # the rollout timeline of the live deployment
        assert "hello from the app" in html
        assert f'href="/ui/apps/{app}/artifacts/{dep["digest"]}"' in html
        assert 'data-kind="apps"' in html and 'data-fields="calls_per_s"' in html
        for action in ("Scale", "Roll back"):
            button = re.search(rf"<button[^>]*>{action}</button>", html)
            assert button and "disabled" in button.group(0), action
        assert 'title="needs the operator role"' in html
        csrf = csrf_of(client, f"/ui/apps/{app}")
        refused = client.post(f"/ui/apps/{app}/scale", data={"instances": "5", "csrf": csrf})
        assert refused.status_code == 403
        assert refused.headers["content-type"].startswith("text/html")
        refused = client.post(f"/ui/apps/{app}/rollback", data={"version": "1", "csrf": csrf})
        assert refused.status_code == 403
    assert app_of(server, app)["instances_desired"] == 2
    assert app_of(server, app)["version"] == 1


def test_an_operator_scales_from_the_console(server: RunningServer) -> None:
    app = unique("scale")
    deploy(server, app, instances=1)
    with signed_in(server.base_url, server.token("operator")) as client:
        csrf = csrf_of(client, f"/ui/apps/{app}")
        answer = client.post(f"/ui/apps/{app}/scale", data={"instances": "3", "csrf": csrf})
        assert answer.status_code == 303, answer.text
        assert answer.headers["location"].startswith(f"/ui/apps/{app}?done=Scaled")
        assert app_of(server, app)["instances_desired"] == 3
        shown = client.get(answer.headers["location"]).text
        assert f"Scaled {app} to 3 instance(s)." in shown
        assert "scaled</strong> instances 1 → 3" in shown


@pytest.mark.parametrize(
    ("value", "message"),
    [("-1", "greater than or equal to 0"), ("abc", "valid integer"), ("", "valid integer")],
)
def test_a_bad_scale_shows_the_apis_message_and_changes_nothing(
    server: RunningServer, value: str, message: str
) -> None:
    app = unique("badscale")
    deploy(server, app, instances=2)
    with signed_in(server.base_url, server.token("operator")) as client:
        csrf = csrf_of(client, f"/ui/apps/{app}")
        answer = client.post(f"/ui/apps/{app}/scale", data={"instances": value, "csrf": csrf})
        assert answer.status_code == 400, answer.text
        assert message in error_message(answer)
    assert app_of(server, app)["instances_desired"] == 2


def test_scale_without_csrf_is_refused_and_changes_nothing(server: RunningServer) -> None:
    app = unique("csrf")
    deploy(server, app, instances=2)
    with signed_in(server.base_url, server.token("admin")) as client:
        for data in ({"instances": "4"}, {"instances": "4", "csrf": "forged"}):
            answer = client.post(f"/ui/apps/{app}/scale", data=data)
            assert answer.status_code == 403
            assert "CSRF" in answer.text
    assert app_of(server, app)["instances_desired"] == 2


def test_another_tenants_app_and_artifact_are_not_found(server: RunningServer) -> None:
    app = unique("mine")
    dep = deploy(server, app, instances=2)
    with signed_in(server.base_url, server.new_tenant()) as client:
        answers = [
            client.get(f"/ui/apps/{app}"),
            client.get(f"/ui/apps/{app}/artifacts/{dep['digest']}"),
        ]
        csrf = csrf_of(client)
        answers.append(client.post(f"/ui/apps/{app}/scale", data={"instances": "0", "csrf": csrf}))
        for answer in answers:
            assert answer.status_code == 404, answer.text
            assert answer.headers["content-type"].startswith("text/html")
            assert dep["digest"] not in answer.text
            assert "another tenant" not in answer.text
    assert app_of(server, app)["instances_desired"] == 2


def test_the_artifact_view_shows_sbom_manifest_and_signature(server: RunningServer) -> None:
    app = unique("art")
    dep = deploy(server, app)
    with signed_in(server.base_url, server.token("viewer")) as client:
        page = client.get(f"/ui/apps/{app}/artifacts/{dep['digest']}")
        assert page.status_code == 200, page.text
        assert "pkg:pypi/flask@3.0.3" in page.text
        assert "<code>app.py</code>" in page.text and "<code>644</code>" in page.text
        assert "Unsigned: uploaded without a signature." in page.text
        # a digest this app never deployed (even the tenant's own) is not shown here
        stray = upload(server, server.admin_token)
        assert client.get(f"/ui/apps/{app}/artifacts/{stray}").status_code == 404


def test_the_artifact_view_shows_which_app_key_verified_the_signature(
    server: RunningServer,
) -> None:
    app, key = unique("signed"), generate_key()
    admin = bearer(server.admin_token)
    answer = httpx.post(
        f"{server.base_url}/api/v1/apps/{app}/public-keys",
        json={"public_key": public_key_b64(key)},
        headers=admin,
    )
    assert answer.status_code == 201, answer.text
    data = os.urandom(256)
    digest = sha256_of(data)
    signature = sign_digest(key, digest)
    answer = httpx.post(
        f"{server.base_url}/api/v1/artifacts",
        content=data,
        headers={
            **admin,
            DIGEST_HEADER: digest,
            "X-Aether-Signature": signature,
            "X-Aether-App": app,
        },
    )
    assert answer.status_code == 201 and answer.json()["verified"], answer.text
    answer = httpx.post(
        f"{server.base_url}/api/v1/apps/{app}/deployments",
        json={"digest": digest, "spec": spec_for(app)},
        headers=admin,
    )
    assert answer.status_code == 201, answer.text
    with signed_in(server.base_url, server.token("viewer")) as client:
        page = client.get(f"/ui/apps/{app}/artifacts/{digest}")
        assert page.status_code == 200, page.text
        assert f"app key <code>{fingerprint(key)}</code>" in page.text
        assert f"<code>{signature}</code>" in page.text
        assert "No SBOM was sent" in page.text and "No manifest was recorded" in page.text


def test_rollback_to_a_chosen_version(
    server: RunningServer,
) -> None:
    app = unique("rb")
    deploy(server, app)
    deploy(server, app)
    deploy(server, app)
    with signed_in(server.base_url, server.token("operator")) as client:
        html = client.get(f"/ui/apps/{app}").text
        assert '<option value="1">' in html and '<option value="2">' in html
        assert '<option value="3">' not in html  # the live version is no rollback target
        csrf = csrf_of(client, f"/ui/apps/{app}")
        answer = client.post(f"/ui/apps/{app}/rollback", data={"version": "1", "csrf": csrf})
        assert answer.status_code == 303, answer.text
        assert "Rolling back to v1 as v4" in client.get(answer.headers["location"]).text
        assert app_of(server, app)["version"] == 4
        missing = client.post(f"/ui/apps/{app}/rollback", data={"version": "99", "csrf": csrf})
        assert missing.status_code == 404
        assert "has no version 99" in error_message(missing)


def test_promote_shows_only_for_a_waiting_canary_and_lets_it_go_on(
    server: RunningServer,
) -> None:
    app, lone = unique("canary"), unique("lone")
    canary = {"rollout": {"strategy": "canary", "auto_promote": False}}
    deploy(server, app, spec=canary)
    deploy(server, app, spec=canary)  # v1 is replaced through a canary that waits
    deploy(server, lone)
    with signed_in(server.base_url, server.token("operator")) as client:
        assert "Promote canary" in client.get(f"/ui/apps/{app}").text
        assert "Promote canary" not in client.get(f"/ui/apps/{lone}").text
        csrf = csrf_of(client, f"/ui/apps/{app}")
        nothing = client.post(f"/ui/apps/{lone}/promote", data={"csrf": csrf})
        assert nothing.status_code == 409
        assert "no rollout in progress" in error_message(nothing)
        promoted = client.post(f"/ui/apps/{app}/promote", data={"csrf": csrf})
        assert promoted.status_code == 303, promoted.text
        after = client.get(promoted.headers["location"]).text
        assert "Canary promoted" in after and "Promote canary" not in after
    blueprint = httpx.get(
        f"{server.base_url}/api/v1/blueprints/{app}", headers=bearer(server.admin_token)
    ).json()
    assert blueprint["promoted"] is True


def test_the_log_search_filters_server_side_and_keeps_the_query(server: RunningServer) -> None:
    app = unique("logs")
    dep = deploy(server, app)
    log(server, app, "GET /health 200", "ERROR database timeout", "GET /items 200")
    with signed_in(server.base_url, server.token("viewer")) as client:
        page = client.get(f"/ui/apps/{app}", params={"search": "error"}).text
        assert "ERROR database timeout" in page and "GET /items" not in page
        assert 'value="error"' in page and 'data-search="error"' in page
        shown = client.get(f"/ui/apps/{app}", params={"deployment": dep["id"]})
        assert shown.status_code == 200 and "GET /items 200" in shown.text
        unknown = client.get(f"/ui/apps/{app}", params={"deployment": "no-such"})
        assert unknown.status_code == 404


def test_migrate_asks_the_api_with_the_rows_instance(server: RunningServer) -> None:
    app = unique("mig")

    inst = with_nodes(server, lambda fake: one_active(server, fake, app))
    with signed_in(server.base_url, server.token("viewer")) as client:
        csrf = csrf_of(client, f"/ui/apps/{app}")
        refused = client.post(
            f"/ui/apps/{app}/migrate", data={"instance": inst["key"], "csrf": csrf}
        )
        assert refused.status_code == 403
    with signed_in(server.base_url, server.token("operator")) as client:
        html = client.get(f"/ui/apps/{app}").text
        assert f'name="instance" value="{inst["key"]}"' in html
        csrf = csrf_of(client, f"/ui/apps/{app}")
        other = client.post(
            f"/ui/apps/{app}/migrate", data={"instance": "instances/x/other@1/0", "csrf": csrf}
        )
        assert other.status_code == 400
        moved = client.post(f"/ui/apps/{app}/migrate", data={"instance": inst["key"], "csrf": csrf})
        assert moved.status_code == 303, moved.text
        assert f"from {inst['node']}" in client.get(moved.headers["location"]).text
        again = client.post(f"/ui/apps/{app}/migrate", data={"instance": inst["key"], "csrf": csrf})
        assert again.status_code == 409  # the API's already_migrating, as a page


def test_the_apps_pages_have_no_inline_script_or_style(server: RunningServer) -> None:
    app = unique("csp")
    dep = deploy(server, app)
    with signed_in(server.base_url, server.token("viewer")) as client:
        for path in ("/ui/apps", f"/ui/apps/{app}", f"/ui/apps/{app}/artifacts/{dep['digest']}"):
            answer = client.get(path)
            assert answer.status_code == 200, path
            html = answer.text
            assert "/ui/static/console.js" in html, path
            assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), path
            assert " style=" not in html and "<style" not in html, path
            assert not re.search(r"<[^>]+\son[a-z]+=", html), path


# -- in a browser ------------------------------------------------------------------


def test_an_operator_scales_searches_logs_and_opens_the_sbom_in_a_browser(
    server: RunningServer, browser: Browser
) -> None:
    app = unique("web")

    first = with_nodes(server, lambda fake: one_active(server, fake, app))
    dep = app_of(server, app)
    log(server, app, "GET /health 200", "ERROR cache miss storm", "GET /items 200")
    context = new_console(browser)
    page = context.new_page()
    for other in ("shop-api", "shop-web"):  # the list shows more than one app
        deploy(server, unique(other), instances=2)
    sign_in(page, server.base_url, server.token("operator"), next_path="/ui/apps")
    expect(page.locator("h1")).to_have_text("Apps")
    expect(page.locator(f"tr[data-app='{app}'] [data-testid=app-instances]")).to_have_text("1 / 1")
    screenshot(page, "apps")
    page.fill("#apps-q", app)
    page.click("form[role=search] button[type=submit]")
    expect(page.locator(f"tr[data-app='{app}'] [data-testid=app-instances]")).to_have_text("1 / 1")
    assert axe_violations(page) == []

    page.click(f"a[href='/ui/apps/{app}']")
    expect(page.locator("h1")).to_have_text(app)
    expect(page.locator("body")).to_have_attribute("data-live", "live")
    expect(page.locator(f"tr[data-instance='{first['key']}']")).to_contain_text("ACTIVE")
    expect(page.locator("#logs")).to_have_attribute("data-streaming", "yes")
    assert axe_violations(page) == []

    page.fill("#scale-instances", "2")
    page.click("form[action$='/scale'] button[type=submit]")
    expect(page.locator(".flash")).to_have_text(f"Scaled {app} to 2 instance(s).")
    page.evaluate("window.stillThisPage = true")  # gone if the page reloads

    async def second(fake: FakeNodes) -> None:
        async def placed() -> list[dict[str, Any]]:
            found = await fake.instances(app)
            return found if len(found) == 2 else []

        for inst in await eventually(placed, "the second placement"):
            if inst["key"] != first["key"]:
                await fake.bring_up(inst["key"])

    with_nodes(server, second)
    expect(page.locator("#app-summary [data-testid=app-instances]")).to_have_text("2 / 2")
    expect(page.locator("[data-testid=instance-count]")).to_have_text("(2)")
    assert page.evaluate("window.stillThisPage === true")
    screenshot(page, "app")

    page.fill("#log-search", "error")
    page.click("#log-search ~ button, form[role=search] button[type=submit]")
    expect(page.locator("#logs")).to_contain_text("ERROR cache miss storm")
    expect(page.locator("#logs")).not_to_contain_text("GET /items")
    expect(page.locator("#logs")).to_have_attribute("data-streaming", "yes")
    log(server, app, "GET /later 200", "ERROR arrived while watching")
    expect(page.locator("#logs")).to_contain_text("ERROR arrived while watching")
    expect(page.locator("#logs")).not_to_contain_text("GET /later")
    assert "search=error" in page.url

    page.click(f"a[href='/ui/apps/{app}/artifacts/{dep_digest(server, app)}']")
    expect(page.locator("[data-testid=sbom]")).to_contain_text("pkg:pypi/flask@3.0.3")
    expect(page.locator("[data-testid=signature]")).to_contain_text("Unsigned")
    assert axe_violations(page) == []
    context.close()

    phone = new_console(browser, width=390, height=844)
    small = phone.new_page()
    sign_in(small, server.base_url, server.token("viewer"), next_path=f"/ui/apps/{app}")
    expect(small.locator("h1")).to_have_text(app)
    expect(small.locator("form[action$='/scale'] button")).to_be_disabled()
    expect(small.locator(f"tr[data-instance='{first['key']}'] button")).to_be_disabled()
    assert axe_violations(small) == []
    width = small.evaluate("document.documentElement.scrollWidth")
    assert width <= 390 + 1, width
    phone.close()
    assert dep["version"] == 1


def dep_digest(server: RunningServer, app: str) -> str:
    answer = httpx.get(
        f"{server.base_url}/api/v1/apps/{app}/deployments", headers=bearer(server.admin_token)
    )
    digest: str = answer.json()[0]["digest"]
    return digest


def test_an_app_with_nothing_deployed_yet_has_a_page(server: RunningServer) -> None:
    app = unique("keyonly")  # registering a signing key creates the app before any deploy
    answer = httpx.post(
        f"{server.base_url}/api/v1/apps/{app}/public-keys",
        json={"public_key": public_key_b64(generate_key())},
        headers=bearer(server.admin_token),
    )
    assert answer.status_code == 201, answer.text
    with signed_in(server.base_url, server.token("viewer")) as client:
        page = client.get(f"/ui/apps/{app}")
        assert page.status_code == 200, page.text
        assert "Nothing deployed yet" in page.text and "No instance placed" in page.text
