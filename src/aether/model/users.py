"""Accounts and signing in: the API's request and response bodies.

``/api/v1/users`` (a tenant's members), ``/api/v1/auth/...`` (signing in) and
``/api/v1/whoami``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from aether.model.time import Timestamp

__all__ = [
    "USER_NAME_PATTERN",
    "AuthProvidersOut",
    "LoginIn",
    "LoginOut",
    "MemberIn",
    "OidcExchangeIn",
    "PasswordIn",
    "TotpOut",
    "UserIn",
    "UserOut",
    "UserPatch",
    "WhoAmIOut",
]

#: letters, digits, '.', '_' and '-', starting with a letter or digit (a login name)
USER_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
Role = Literal["admin", "operator", "viewer"]
Password = Annotated[str, Field(min_length=1, max_length=1024)]
Email = Annotated[str, Field(pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$", max_length=254)]


class UserIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(pattern=USER_NAME_PATTERN)]
    role: Role
    #: ``person`` signs in (password, single sign-on); ``service`` only holds tokens
    kind: Literal["person", "service"] = "person"
    display_name: Annotated[str, Field(max_length=128)] = ""
    email: Email | None = None
    password: Password | None = None
    #: enrol a TOTP second factor now and return its secret once (``totp`` below)
    totp: bool = False


class MemberIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Role


class UserPatch(BaseModel):
    """Only the fields sent change; ``role`` is the role in the caller's tenant."""

    model_config = ConfigDict(extra="forbid")

    role: Role | None = None
    display_name: Annotated[str, Field(max_length=128)] | None = None
    email: Email | None = None
    disabled: bool | None = None


class TotpOut(BaseModel):
    secret: str
    uri: str  # otpauth://totp/...: what an authenticator app scans


class UserOut(BaseModel):
    name: str
    kind: str
    role: str  # in the caller's tenant
    display_name: str
    email: str | None
    password: bool  # whether a password is set (never the password)
    totp: bool  # whether a second factor is enrolled
    sso: bool  # whether a single sign-on identity is linked
    disabled: bool
    created_at: Timestamp
    totp_enrolment: TotpOut | None = None  # only in the answer that enrolled it


class PasswordIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    password: Password
    #: your current password, when you change your own
    current_password: Password | None = None


class LoginIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user: Annotated[str, Field(min_length=1, max_length=64)]
    password: Password
    tenant: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    totp: Annotated[str, Field(min_length=6, max_length=10)] | None = None


class LoginOut(BaseModel):
    token: str
    token_id: str
    user: str
    tenant: str
    role: str
    expires_at: Timestamp


class OidcExchangeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: Annotated[str, Field(min_length=16, max_length=256)]
    verifier: Annotated[str, Field(min_length=43, max_length=128)]


class AuthProvidersOut(BaseModel):
    password: bool
    oidc: bool
    oidc_issuer: str | None


class WhoAmIOut(BaseModel):
    user: str | None  # None: a bare token (no account)
    tenant: str
    role: str
    cluster_admin: bool
    token_id: str
    node: str | None
    expires_at: Timestamp | None
    tenants: list[str] = []  # every tenant the account belongs to
