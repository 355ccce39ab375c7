"""Signing in with an OpenID Connect provider: the authorization-code flow with PKCE.

The server is the confidential client (``AETHER_OIDC_CLIENT_ID``/``_SECRET``): it sends
the browser to the provider, takes the code back at ``/api/v1/auth/oidc/callback``,
exchanges it, and checks the ID token (signature against the provider's keys, issuer,
audience, expiry, nonce). The identity maps to an account by its (issuer, subject), or
on the first sign-in by a verified e-mail address an admin gave the account; nobody
without an account gets in. Then the console gets a session, and the CLI (which waits on
a loopback port) a one-time code it exchanges, with the verifier only it knows, for a
token (``POST /api/v1/auth/oidc/exchange``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import httpx
from authlib.common.urls import add_params_to_uri
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from aether.errors import BadRequestError, ForbiddenError, UnauthorizedError
from aether.server.settings import ServerSettings
from aether.store.records import Records
from aether.store.records.schema import User

__all__ = ["Identity", "OidcClient", "account_for"]

_DISCOVERY_TTL = 300.0


@dataclass(frozen=True, slots=True)
class Identity:
    issuer: str
    subject: str
    email: str | None
    email_verified: bool


class OidcClient:
    """The provider as this server sees it; discovery and keys are cached for 5 minutes."""

    def __init__(self, settings: ServerSettings) -> None:
        self.issuer = settings.oidc_issuer.rstrip("/")
        self.client_id = settings.oidc_client_id
        self.client_secret = settings.oidc_client_secret
        self.scopes = settings.oidc_scopes
        self._meta: tuple[float, dict[str, Any]] | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.issuer and self.client_id)

    async def _metadata(self) -> dict[str, Any]:
        if self._meta is not None and self._meta[0] > time.monotonic():
            return self._meta[1]
        try:
            async with httpx.AsyncClient(timeout=10.0) as http:
                found = await http.get(f"{self.issuer}/.well-known/openid-configuration")
                found.raise_for_status()
                meta: dict[str, Any] = found.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise UnauthorizedError(
                f"the sign-in provider {self.issuer} cannot be reached: {exc}",
                code="oidc_unavailable",
            ) from exc
        self._meta = (time.monotonic() + _DISCOVERY_TTL, meta)
        return meta

    async def authorization_url(
        self, redirect_uri: str, state: str, nonce: str, code_verifier: str
    ) -> str:
        meta = await self._metadata()
        return str(
            add_params_to_uri(
                meta["authorization_endpoint"],
                [
                    ("response_type", "code"),
                    ("client_id", self.client_id),
                    ("redirect_uri", redirect_uri),
                    ("scope", self.scopes),
                    ("state", state),
                    ("nonce", nonce),
                    ("code_challenge", create_s256_code_challenge(code_verifier)),
                    ("code_challenge_method", "S256"),
                ],
            )
        )

    async def identity(
        self, redirect_uri: str, code: str, code_verifier: str, nonce: str
    ) -> Identity:
        """Exchange the code and check the ID token; UnauthorizedError if anything is off."""
        meta = await self._metadata()
        try:
            async with httpx.AsyncClient(timeout=10.0) as http:
                answer = await http.post(
                    meta["token_endpoint"],
                    data={
                        "grant_type": "authorization_code",
                        "code": code,
                        "redirect_uri": redirect_uri,
                        "code_verifier": code_verifier,
                    },
                    auth=(self.client_id, self.client_secret),
                )
                if answer.status_code != 200:
                    raise UnauthorizedError(
                        f"the provider refused the sign-in: {answer.text[:200]}",
                        code="oidc_failed",
                    )
                tokens = answer.json()
                keys = (await http.get(meta["jwks_uri"])).json()
            id_token = tokens.get("id_token")
            if not id_token:
                raise UnauthorizedError("the provider sent no ID token", code="oidc_failed")
            decoded = jwt.decode(id_token, KeySet.import_key_set(keys))
            jwt.JWTClaimsRegistry(
                iss={"essential": True, "value": meta.get("issuer", self.issuer)},
                aud={"essential": True, "value": self.client_id},
                sub={"essential": True},
                exp={"essential": True},
                nonce={"essential": True, "value": nonce},
            ).validate(decoded.claims)
        except UnauthorizedError:
            raise
        except (JoseError, httpx.HTTPError, ValueError, KeyError) as exc:
            raise UnauthorizedError(
                f"the sign-in could not be verified: {exc}", code="oidc_failed"
            ) from exc
        claims = decoded.claims
        return Identity(
            issuer=str(claims["iss"]),
            subject=str(claims["sub"]),
            email=claims.get("email"),
            email_verified=claims.get("email_verified") is True,
        )


async def account_for(records: Records, identity: Identity) -> User:
    """The account of this identity: linked before, or (first sign-in) the one an admin
    created with this e-mail address, if the provider verified it. Linked from then on."""
    user = await records.find_user_by_oidc(identity.issuer, identity.subject)
    if user is None and identity.email and identity.email_verified:
        user = await records.find_user_by_email(identity.email)
        if user is not None and user.oidc_subject is None:
            await records.update_user(
                user.id, oidc_issuer=identity.issuer, oidc_subject=identity.subject
            )
        elif user is not None:
            user = None  # that address is already linked to another identity
    if user is None:
        who = identity.email or identity.subject
        raise ForbiddenError(
            f"there is no Aether account for {who}: ask an admin to create one "
            "(`aether users create NAME --email ADDRESS`)",
            code="no_account",
        )
    if user.disabled_at is not None or user.kind != "person":
        raise ForbiddenError("this account may not sign in", code="no_account")
    return user


def check_loopback_port(port: int | None) -> int:
    if port is None or not 1024 <= port <= 65535:
        raise BadRequestError("cli_port must be a port number from 1024 to 65535")
    return port
