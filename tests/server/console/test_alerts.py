"""The alerts page (server-rendered): a tenant's alerts and silences, no one else's."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.support.api import bearer, unique
from tests.support.console import signed_in
from tests.support.server import RunningServer, running_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(tmp_path_factory.mktemp("aether-console-alerts")) as srv:
        yield srv


def test_the_page_lists_the_tenant_s_silences_only(server: RunningServer) -> None:
    tenant, other = unique("acme"), unique("b")
    comment = unique("deploying")
    made = httpx.post(
        f"{server.base_url}/api/v1/alerts/silences",
        json={"matchers": {"alertname": "CrashLooping", "app": "web"}, "comment": comment},
        headers=bearer(server.token("operator", tenant)),
    )
    assert made.status_code == 201, made.text
    with signed_in(server.base_url, server.token("viewer", tenant)) as client:
        page = client.get("/ui/alerts")
        assert page.status_code == 200, page.text
        assert "<h1>Alerts</h1>" in page.text and "No alert." in page.text
        assert comment in page.text and "alertname=CrashLooping" in page.text
        assert 'href="/ui/alerts" aria-current="page"' in page.text
        firing = client.get("/ui/alerts", params={"state": "firing"})
        assert '<option value="firing" selected>' in firing.text
    with signed_in(server.base_url, server.token("viewer", other)) as client:
        theirs = client.get("/ui/alerts")
        assert theirs.status_code == 200 and comment not in theirs.text
