"""Request and response bodies of the signing API: public keys and app settings."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from aether.model.time import Timestamp

__all__ = ["AppSettingsIn", "AppSettingsOut", "PublicKeyIn", "PublicKeyOut"]


class PublicKeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    public_key: Annotated[str, Field(min_length=1, max_length=128)]
    """Base64 of the 32 raw Ed25519 public key bytes."""
    name: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    """A label; default ``key-`` + the first 12 hex digits of the fingerprint."""


class PublicKeyOut(BaseModel):
    id: str
    name: str
    public_key: str
    fingerprint: str
    created_at: Timestamp


class AppSettingsIn(BaseModel):
    """Only the fields sent are changed; ``retain_deployments: null`` restores the default."""

    model_config = ConfigDict(extra="forbid")

    require_signature: bool | None = None
    require_provenance: bool | None = None
    retain_deployments: Annotated[int, Field(ge=1, le=10_000)] | None = None


class AppSettingsOut(BaseModel):
    app: str
    require_signature: bool
    require_provenance: bool = False
    retain_deployments: int | None
