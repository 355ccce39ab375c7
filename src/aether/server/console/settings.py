"""The settings pages: API tokens, each app's signing keys and retention, the cluster's.

``/ui/settings`` lists the tenant's tokens (an admin creates and revokes them),
the apps (each links to its signing keys and retention) and the cluster's
retention figures. A new token is shown once, on the page that answers the
form's POST: it never goes into a URL, a redirect or a log.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Form
from fastapi.responses import RedirectResponse, Response

from aether.artifacts.signing import KeyFormatError, public_key_b64, read_public_key
from aether.server.console.view import Action, ConsoleError, Page, View

__all__ = ["key_to_register", "router"]

router = APIRouter()

#: the roles a token may be created with here (``join`` only by the cluster admin)
ROLES = ("viewer", "operator", "admin", "join")


def _done(path: str, what: str) -> Response:
    return RedirectResponse(f"{path}?done={quote(what)}", status_code=303)


def _app_path(app: str) -> str:
    return f"/ui/settings/apps/{quote(app, safe='')}"


def _api_app(app: str) -> str:
    return f"/api/v1/apps/{quote(app, safe='')}"


def key_to_register(text: str) -> str:
    """What the API takes for a pasted key: a public PEM becomes base64 of its 32 bytes.

    Anything else is sent as it is (the API says what is wrong with it); a pasted
    private key is refused here, so it goes no further.
    """
    text = text.strip()
    if "PRIVATE KEY" in text:
        raise ConsoleError(
            400,
            "That is a private key: paste the public key only (aether keys generate prints it).",
            "bad_key",
        )
    if "PUBLIC KEY-----" not in text:
        return text
    try:
        return public_key_b64(read_public_key(text))
    except KeyFormatError as exc:
        raise ConsoleError(400, f"invalid public_key: {exc}", "bad_key") from None


async def _tokens(view: View) -> list[dict[str, Any]] | None:
    """The tenant's tokens, newest first; None when the role may not list them."""
    if not view.can("admin"):
        return None
    found: list[dict[str, Any]] = await view.api.get("/api/v1/tokens")
    return sorted(found, key=lambda t: t.get("created_at") or "", reverse=True)


@router.get("/settings")
async def settings(view: Page) -> Response:
    tokens, apps, retention = await asyncio.gather(
        _tokens(view), view.api.get("/api/v1/apps"), view.api.get("/api/v1/settings")
    )
    return view.render(
        "settings.html",
        page="settings",
        tokens=tokens,
        roles=ROLES,
        apps=apps,
        retention=retention,
    )


@router.post("/settings/tokens")
async def create_token(
    view: Action,
    name: Annotated[str, Form()] = "",
    role: Annotated[str, Form()] = "",
) -> Response:
    """Create a token and show it once, on this answer (never in a URL)."""
    made = await view.api.post("/api/v1/tokens", {"name": name.strip(), "role": role})
    return view.render("token_created.html", page="settings", status_code=201, token=made)


@router.post("/settings/tokens/{token_id}/revoke")
async def revoke_token(view: Action, token_id: str) -> Response:
    gone = await view.api.delete(f"/api/v1/tokens/{quote(token_id, safe='')}")
    return _done("/ui/settings", f"Token {gone['name']!r} ({gone['role']}) revoked.")


@router.get("/settings/apps/{app}")
async def app_settings(view: Page, app: str) -> Response:
    found, keys, cluster = await asyncio.gather(
        view.api.get(f"{_api_app(app)}/settings"),
        view.api.get(f"{_api_app(app)}/public-keys"),
        view.api.get("/api/v1/settings"),
    )
    return view.render(
        "settings_app.html",
        page="settings",
        app=found,
        keys=keys,
        default_retain=cluster["retain_deployments"],
    )


@router.post("/settings/apps/{app}/keys")
async def add_key(
    view: Action,
    app: str,
    public_key: Annotated[str, Form()] = "",
    name: Annotated[str, Form()] = "",
) -> Response:
    await view.api.get(f"{_api_app(app)}/settings")  # 404 for an unknown app: never create it
    body: dict[str, Any] = {"public_key": key_to_register(public_key)}
    if name.strip():
        body["name"] = name.strip()
    added = await view.api.post(f"{_api_app(app)}/public-keys", body)
    return _done(_app_path(app), f"Key {added['name']} ({added['fingerprint']}) added.")


@router.post("/settings/apps/{app}/keys/{key_id}/remove")
async def remove_key(view: Action, app: str, key_id: str) -> Response:
    await view.api.delete(f"{_api_app(app)}/public-keys/{quote(key_id, safe='')}")
    return _done(_app_path(app), "Key removed.")


@router.post("/settings/apps/{app}")
async def change_app_settings(
    view: Action,
    app: str,
    require_signature: Annotated[str, Form()] = "",
    require_provenance: Annotated[str, Form()] = "",
    retain_deployments: Annotated[str, Form()] = "",
) -> Response:
    """Save the form: require_signature and require_provenance (checkboxes) and
    retain_deployments (empty: default)."""
    await view.api.get(f"{_api_app(app)}/settings")  # 404 for an unknown app: never create it
    retain: int | None = None
    if retain_deployments.strip():
        try:
            retain = int(retain_deployments)
        except ValueError:
            raise ConsoleError(
                400,
                "Deployments kept must be a whole number (empty: the cluster's default).",
                "bad_request",
            ) from None
    body = {
        "require_signature": require_signature == "on",
        "require_provenance": require_provenance == "on",
        "retain_deployments": retain,
    }
    saved = await view.api.put(f"{_api_app(app)}/settings", body)
    kept = saved["retain_deployments"] or "the default"
    signed = "required" if saved["require_signature"] else "not required"
    proven = "required" if saved.get("require_provenance") else "not required"
    return _done(
        _app_path(app),
        f"Saved: signatures {signed}, provenance {proven}, {kept} deployments kept.",
    )
