"""The API's bodies of ``/api/v1/secrets``: a tenant's named secrets (the headers of
http tools, what policies redact). A value goes in, never out: answers carry the name
and its timestamps only."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field, SecretStr

from aether.model.time import Timestamp

__all__ = [
    "SECRET_NAME_PATTERN",
    "KeyRotationOut",
    "SecretDeletedOut",
    "SecretIn",
    "SecretOut",
]

#: letters (either case), digits, ``.``, ``_`` and ``-``: up to 63, e.g. GITHUB_TOKEN
SECRET_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
MAX_SECRET_BYTES = 64 * 1024


class SecretIn(BaseModel):
    #: kept encrypted, never returned, logged or audited
    value: Annotated[SecretStr, Field(min_length=1, max_length=MAX_SECRET_BYTES)]


class SecretOut(BaseModel):
    name: str
    created_at: Timestamp
    updated_at: Timestamp
    #: the tenant's apps whose running deployment references it (env or file)
    used_by: list[str] = Field(default_factory=list)


class KeyRotationOut(BaseModel):
    """``POST /secrets:rotate-key``: the key-encryption key was replaced."""

    key_id: str  # the new current key
    previous: list[str]  # the keys it replaced (kept in secrets.key.old)
    rewrapped: int  # sealed values whose data key is now wrapped by the new key
    remaining: dict[str, int] = Field(default_factory=dict)  # values still naming an old key


class SecretDeletedOut(BaseModel):
    name: str
    deleted: bool = True
