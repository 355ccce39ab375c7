"""App names inside the cluster, and the names the router is reached by.

An app's name is its tenant's own (``apps`` is UNIQUE per tenant), so two tenants
may both have ``web``. The state store, the nodes and the router key an app by its
**cluster name**: the plain name for the ``default`` tenant's apps (so their keys
are as they always were), ``{app}.{tenant}`` (the tenant's name) for any other
tenant's. Neither an app nor a tenant name may contain a dot, so the split is
unambiguous.

The router reaches a cluster name by ``Host: {app}.localhost`` or ``/apps/{app}/``
(the default tenant's) and ``Host: {app}.{tenant}.localhost`` or
``/t/{tenant}/apps/{app}/`` (another tenant's).
"""

from __future__ import annotations

import re

__all__ = [
    "CLUSTER_NAME_PATTERN",
    "DEFAULT_TENANT",
    "cluster_name",
    "route_path",
    "route_target",
    "shown_name",
    "split_cluster_name",
]

DEFAULT_TENANT = "default"

_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_NAME = re.compile(rf"^{_LABEL}$")  # an app's or a tenant's
#: a cluster name: ``{app}`` or ``{app}.{tenant}``
CLUSTER_NAME_PATTERN = rf"^{_LABEL}(\.{_LABEL})?$"


def _valid(name: str) -> bool:
    return bool(_NAME.match(name))


def cluster_name(app: str, tenant: str) -> str:
    """The name the cluster knows tenant ``tenant``'s (a tenant NAME) app ``app`` by.

    The API has validated both names; this refuses only what would not split back.
    """
    if not app or not tenant or "." in app or "." in tenant:
        raise ValueError(f"not an app and tenant name: {app!r}, {tenant!r}")
    return app if tenant == DEFAULT_TENANT else f"{app}.{tenant}"


def split_cluster_name(name: str) -> tuple[str, str]:
    """``{app}`` → (app, "default"); ``{app}.{tenant}`` → (app, tenant)."""
    app, dot, tenant = name.partition(".")
    if not dot:
        return app, DEFAULT_TENANT
    return app, tenant


def shown_name(name: str, tenant: str) -> str:
    """How a cluster name reads for tenant ``tenant``: its own apps by their plain
    name, anything else (a cluster admin's cluster-wide view) as it is."""
    app, owner = split_cluster_name(name)
    return app if owner == tenant else name


def route_path(app: str, tenant: str) -> str:
    """The path the routers serve tenant ``tenant``'s app ``app`` under."""
    cluster_name(app, tenant)  # both names valid
    return f"/apps/{app}/" if tenant == DEFAULT_TENANT else f"/t/{tenant}/apps/{app}/"


def _route_by_host(host: str) -> str | None:
    labels = host.split(":", 1)[0].lower().split(".")
    if labels[-1] != "localhost" or not 2 <= len(labels) <= 3:
        return None
    names = labels[:-1]
    if not all(_valid(label) for label in names):
        return None
    return cluster_name(names[0], names[1] if len(names) == 2 else DEFAULT_TENANT)


def _route_by_path(path: str) -> tuple[str, str] | None:
    bare, q, query = path.partition("?")
    tenant = DEFAULT_TENANT
    if bare.startswith("/t/"):
        tenant, _, rest = bare[len("/t/") :].partition("/")
        bare = "/" + rest
    if not bare.startswith("/apps/") or not _valid(tenant):
        return None
    app, _, tail = bare[len("/apps/") :].partition("/")
    if not _valid(app):
        return None
    return cluster_name(app, tenant), "/" + tail + q + query


def route_target(host: str, path: str) -> tuple[str, str] | None:
    """(cluster name, upstream path) a router request names, or None if it names no app.

    ``path`` is the request's path with its query. The host form wins; the path form
    loses its ``/apps/{app}`` or ``/t/{tenant}/apps/{app}`` prefix.
    """
    by_host = _route_by_host(host)
    if by_host is not None:
        return by_host, path
    return _route_by_path(path)
