"""Two tenants and the default one each deploy an app named ``web``; each is reached
only through its own routes (issue 16: app names are each tenant's own)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.cluster import Cluster

pytestmark = pytest.mark.e2e


def _web(root: Path, says: str) -> Path:
    """An app named ``web`` whose page says ``says``."""
    root.mkdir()
    (root / "aether.toml").write_text(
        'name = "web"\nstart = "python3 -m http.server $PORT"\nhealth = "/"\n'
    )
    (root / "index.html").write_text(says)
    return root


def _as(cluster: Cluster, token: str, *args: str) -> Any:
    """``aether ARGS --format json`` with ``token`` (a tenant's admin)."""
    own = cluster.env["AETHER_TOKEN"]
    cluster.env["AETHER_TOKEN"] = token
    try:
        answer = cluster.cli_json(*args)
    finally:
        cluster.env["AETHER_TOKEN"] = own
    return answer


def test_same_app_name_in_two_tenants_each_reached_only_by_its_own_routes(
    cluster: Cluster, tmp_path: Path
) -> None:
    cluster.start_server()
    cluster.start_node("n1")
    router = cluster.router("n1")
    tokens = {t: str(cluster.cli_json("tenants", "create", t)["admin_token"]) for t in "ab"}

    deployed = {"default": cluster.cli_json("deploy", str(_web(tmp_path / "d", "default web")))}
    for tenant, token in tokens.items():
        deployed[tenant] = _as(
            cluster, token, "deploy", str(_web(tmp_path / tenant, f"{tenant} web"))
        )
    for answer in deployed.values():
        assert answer["status"] == "active", answer
    assert deployed["default"]["url"] == f"{router}/apps/web/"
    assert deployed["a"]["url"] == f"{router}/t/a/apps/web/"
    assert deployed["b"]["url"] == f"{router}/t/b/apps/web/"

    def page(path: str, host: str | None = None) -> tuple[int, str]:
        headers = {"Host": host} if host else {}
        response = httpx.get(f"{router}{path}", headers=headers, timeout=10)
        return response.status_code, response.text

    for path, host, says in [
        ("/apps/web/", None, "default web"),
        ("/", "web.localhost", "default web"),
        ("/t/a/apps/web/", None, "a web"),
        ("/", "web.a.localhost", "a web"),
        ("/t/b/apps/web/index.html", None, "b web"),
        ("/", f"web.b.localhost:{router.rsplit(':', 1)[1]}", "b web"),
    ]:
        assert page(path, host) == (200, says), (path, host)

    # a tenant without web, and a name nobody has: one and the same 404
    for path, host in [("/t/c/apps/web/", None), ("/", "web.c.localhost")]:
        status, text = page(path, host)
        assert status == 404 and "no app 'web.c'" in text, text
    assert page("/t/c/apps/nothing/")[0] == 404

    # each tenant's CLI lists its own web, by its plain name, and no one else's
    for tenant, token in tokens.items():
        listed = _as(cluster, token, "apps")["apps"]
        assert [(x["name"], x["deployment_id"], x["route"]) for x in listed] == [
            ("web", deployed[tenant]["deployment_id"], f"/t/{tenant}/apps/web/")
        ]
