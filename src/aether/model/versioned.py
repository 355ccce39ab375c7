"""A payload that carries its schema version (pure; the registry is ``model.schemas``).

:class:`Versioned` is the base of every node↔server message and stored record: it
writes ``"schema": <version>`` with the payload, reads a payload without one as
version 1 (what 0.1.0 wrote) and refuses a newer one (:class:`SchemaTooNewError`:
written by a newer node or server); :class:`Upcasting`, the base of a schema past
version 1, also brings older payloads up to date with :func:`upcast_to`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "UPCASTERS",
    "VERSION_FIELD",
    "SchemaTooNewError",
    "Upcaster",
    "Upcasting",
    "Versioned",
    "upcast_to",
    "version_of",
]

VERSION_FIELD = "schema"

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]

# (schema name, version it reads) → the payload one version later; empty while every
# schema is at version 1
UPCASTERS: dict[tuple[str, int], Upcaster] = {}


class SchemaTooNewError(ValueError):
    """A payload newer than this code knows: written by a newer node or server."""


def _too_new(name: str, version: int, known: int) -> str:
    return (
        f"{name} schema {version} is newer than this version's {known}: "
        "upgrade the servers first (docs/operations.md, Upgrades)"
    )


def version_of(payload: Mapping[str, Any], field: str = VERSION_FIELD) -> int:
    """A payload's version: its ``schema`` field, 1 without one (0.1.0 wrote none)."""
    value = payload.get(field, 1)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 1


def upcast_to(
    name: str,
    payload: Mapping[str, Any],
    target: int,
    *,
    field: str = VERSION_FIELD,
    upcasters: Mapping[tuple[str, int], Upcaster] = UPCASTERS,
) -> dict[str, Any]:
    """``payload`` of schema ``name`` brought up to version ``target`` by the upcasters
    in turn, stamped with it; a payload newer than ``target`` is a
    :class:`SchemaTooNewError`."""
    version = version_of(payload, field)
    if version > target:
        raise SchemaTooNewError(_too_new(name, version, target))
    out = dict(payload)
    while version < target:
        step = upcasters.get((name, version))
        if step is None:
            raise LookupError(f"no upcaster for {name} from schema {version}")
        out = step(out)
        version += 1
    out[field] = target
    return out


class Versioned(BaseModel):
    """A message or record of schema ``SCHEMA_NAME`` at version ``SCHEMA_VERSION``.

    Written with its version under ``SCHEMA_KEY`` (``schema``; the endpoint record,
    whose ``schema`` has been a slice entry's description since 0.1.0, uses
    ``schema_version``). Built in Python it is the current version; read from a
    payload it is the payload's version (1 without one), and one newer than this code
    is refused. Reading costs one integer check, in pydantic's fast path: a schema
    still at version 1 has nothing to upcast. One that goes past it derives from
    :class:`Upcasting` instead, overrides ``SCHEMA_VERSION`` and its version field's
    default together, and registers its upcaster in :data:`UPCASTERS`.
    """

    model_config = ConfigDict(
        validate_by_name=True, validate_by_alias=True, serialize_by_alias=True
    )

    SCHEMA_NAME: ClassVar[str] = ""
    SCHEMA_VERSION: ClassVar[int] = 1
    SCHEMA_KEY: ClassVar[str] = VERSION_FIELD

    schema_version: int = Field(default=1, alias="schema", ge=1)  # VERSION_FIELD

    def __init__(self, /, **data: Any) -> None:
        # built in Python: the current version (a payload without one is version 1)
        if self.SCHEMA_KEY not in data and "schema_version" not in data:
            data[self.SCHEMA_KEY] = self.SCHEMA_VERSION
        super().__init__(**data)

    # pydantic calls a model's own __init__ on every validation unless it is marked as
    # the base one (as RootModel's is): reading a payload does not go through it
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if cls.SCHEMA_VERSION > 1 and not issubclass(cls, Upcasting):
            raise TypeError(
                f"{cls.__name__}: schema {cls.SCHEMA_NAME!r} is past version 1, so it must "
                "derive from Upcasting (its readers upcast older payloads)"
            )

    @field_validator("schema_version")
    @classmethod
    def _not_newer(cls, version: int) -> int:
        if version > cls.SCHEMA_VERSION:
            raise SchemaTooNewError(_too_new(cls.SCHEMA_NAME, version, cls.SCHEMA_VERSION))
        return version


class Upcasting(Versioned):
    """A :class:`Versioned` schema past version 1: a payload of an older version (or
    without one: version 1) is brought up to date by :func:`upcast_to` before it is
    validated. That takes every payload as Python objects first (not pydantic's JSON
    fast path), so only schemas that have upcasters pay for it."""

    @model_validator(mode="before")
    @classmethod
    def _upcast(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        version = data.get(cls.SCHEMA_KEY, data.get("schema_version", 1))
        if version == cls.SCHEMA_VERSION and type(version) is int:
            return data
        return upcast_to(cls.SCHEMA_NAME, data, cls.SCHEMA_VERSION, field=cls.SCHEMA_KEY)
