"""The API's bodies of ``/api/v1/secrets``: a tenant's named secrets (the headers of
http tools, what policies redact). A value goes in, never out: answers carry the name
and its timestamps only."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field, SecretStr

from aether.model.time import Timestamp

__all__ = ["SECRET_NAME_PATTERN", "SecretDeletedOut", "SecretIn", "SecretOut"]

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


class SecretDeletedOut(BaseModel):
    name: str
    deleted: bool = True
