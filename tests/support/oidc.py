"""A real OpenID Connect provider on loopback for sign-in tests (``oidc-provider-mock``),
and the browser's part of the code flow, done with plain HTTP."""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx

from tests.support.server import RunningServer, running_server

__all__ = [
    "OidcProvider",
    "cli_pair",
    "oidc_provider",
    "query_of",
    "server_with_sso",
    "sign_in_at_provider",
]


@dataclass(frozen=True)
class OidcProvider:
    issuer: str
    client_id: str = "aether-test"
    client_secret: str = "aether-test-secret"


@contextmanager
def oidc_provider(people: dict[str, str]) -> Iterator[OidcProvider]:
    """A provider whose subjects are ``people``'s keys, each with its (verified) e-mail."""
    try:
        from oidc_provider_mock import User, run_server_in_thread
    except ImportError as exc:  # pragma: no cover - the test extra installs it
        raise RuntimeError(
            "oidc-provider-mock is needed: `make test` installs it (pip install -e '.[test]')"
        ) from exc
    users = [
        User(sub=sub, claims={"email": email, "email_verified": True})
        for sub, email in people.items()
    ]
    with run_server_in_thread(user_claims=users) as server:
        yield OidcProvider(f"http://localhost:{server.server_port}")


@contextmanager
def server_with_sso(data_dir: Path, provider: OidcProvider) -> Iterator[RunningServer]:
    """A real server whose single sign-on is ``provider``."""
    with running_server(
        data_dir,
        oidc_issuer=provider.issuer,
        oidc_client_id=provider.client_id,
        oidc_client_secret=provider.client_secret,
    ) as running:
        yield running


def cli_pair() -> tuple[str, str]:
    """(verifier, challenge) as the CLI makes them (PKCE S256)."""
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).decode().rstrip("=")


def sign_in_at_provider(client: httpx.Client, start_url: str, subject: str) -> httpx.Response:
    """What a browser does from ``start_url``: follow to the provider's form, sign in as
    ``subject``, follow back to the server; the server's last answer (not followed)."""
    start = client.get(start_url)
    assert start.status_code in (302, 303), start.text
    authorize = start.headers["location"]
    back = client.post(authorize, data={"sub": subject})
    assert back.status_code in (302, 303), back.text
    callback = back.headers["location"]
    assert "/api/v1/auth/oidc/callback" in callback, callback
    return client.get(callback)


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
