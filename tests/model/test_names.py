"""Cluster names: a tenant's app inside the cluster, and back."""

from __future__ import annotations

import pytest

from aether.model.names import cluster_name, route_path, shown_name, split_cluster_name


@pytest.mark.parametrize(
    ("app", "tenant", "name"),
    [
        ("web", "default", "web"),
        ("web", "acme", "web.acme"),
        ("a-1", "b-2", "a-1.b-2"),
    ],
)
def test_cluster_name_round_trips(app: str, tenant: str, name: str) -> None:
    assert cluster_name(app, tenant) == name
    assert split_cluster_name(name) == (app, tenant)


@pytest.mark.parametrize(
    ("app", "tenant"),
    [("a.b", "acme"), ("web", "a.b"), ("", "acme"), ("web", ""), (".", "acme")],
)
def test_cluster_name_refuses_what_would_not_split_back(app: str, tenant: str) -> None:
    with pytest.raises(ValueError):
        cluster_name(app, tenant)


def test_a_tenant_sees_its_own_apps_by_their_plain_name_and_others_as_they_are() -> None:
    assert shown_name("web.acme", "acme") == "web"
    assert shown_name("web", "default") == "web"
    assert shown_name("web.acme", "default") == "web.acme"  # a cluster admin's view
    assert shown_name("web", "acme") == "web"


def test_the_route_path_is_the_tenant_s_form() -> None:
    assert route_path("web", "default") == "/apps/web/"
    assert route_path("web", "acme") == "/t/acme/apps/web/"
