"""What a slice offers, read from its decorated class or function (pure: no I/O).

Each entry point gets a pydantic model of its arguments (from the signature and the
type hints; positional arguments are bound to the parameters' names in order) and a
``TypeAdapter`` of its result; both give the JSON schemas ``$describe`` answers. A
batched entry point's arguments and result are those of one call: the element types
of its ``list[...]`` parameter and result.
"""

from __future__ import annotations

import inspect
import json
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, create_model

from aether.slices.authoring import (
    BATCH_MARK,
    ENTRY_MARK,
    SLICE_MARK,
    BatchSpec,
    EntryMark,
    SliceMark,
)

__all__ = ["BadArguments", "EntrySpec", "SliceSpec", "describe_slice"]

_STRICT_NAMES = ConfigDict(extra="forbid", arbitrary_types_allowed=True)


class BadArguments(Exception):
    """A call's arguments failed validation; ``details`` are JSON-safe pydantic errors."""

    def __init__(self, message: str, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []


@dataclass(frozen=True, slots=True)
class EntrySpec:
    name: str
    attr: str  # the method's attribute on the class ("" for a lean slice's function)
    params: type[BaseModel]
    fields: tuple[str, ...]  # the parameters' names, in order
    renamed: bool  # some parameter's name is not a valid pydantic field name (see _slot)
    returns: TypeAdapter[Any]
    idempotent: bool
    batch: BatchSpec | None
    is_async: bool

    def arguments(self, args: list[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
        """The validated keyword arguments of one call, or ``BadArguments``."""
        if len(args) > len(self.fields):
            raise BadArguments(f"{self.name} takes {len(self.fields)} arguments, {len(args)} given")
        data = dict(kwargs) if kwargs else {}
        for name, value in zip(self.fields, args, strict=False):
            if name in data:
                raise BadArguments(f"{self.name}: {name} given twice")
            data[name] = value
        try:
            model = self.params.model_validate(data)
        except ValidationError as exc:
            details = json.loads(exc.json(include_url=False))
            raise BadArguments(f"{self.name}: invalid arguments", details) from None
        if self.renamed:
            values = model.__dict__
            return {name: values[_slot(name)] for name in self.fields}
        return model.__dict__

    def result(self, value: Any) -> Any:
        """The result as JSON-ready data."""
        return self.returns.dump_python(value, mode="json")

    def describe(self) -> dict[str, Any]:
        return {
            "params": self.params.model_json_schema(),
            "returns": self.returns.json_schema(),
            "idempotent": self.idempotent,
            "batch": None if self.batch is None else self.batch.describe(),
        }


@dataclass(frozen=True, slots=True)
class SliceSpec:
    name: str
    lean: bool
    entries: dict[str, EntrySpec]

    def describe(self) -> dict[str, Any]:
        return {
            "slice": self.name,
            "lean": self.lean,
            "entries": {name: spec.describe() for name, spec in self.entries.items()},
        }


def describe_slice(target: Any) -> SliceSpec:
    """The slice ``target`` (a class or function marked with ``@slice``) describes;
    ``TypeError`` when it is not a slice or an entry point cannot be described."""
    mark = getattr(target, SLICE_MARK, None)
    if not isinstance(mark, SliceMark):
        raise TypeError(f"{target!r} is not marked with @slices.slice")
    if inspect.isclass(target):
        entries: dict[str, EntrySpec] = {}
        for attr, func in _marked_methods(target):
            spec = _entry_spec(func, attr, method=True)
            if spec.name in entries:
                raise TypeError(f"{target.__name__}: two entry points named {spec.name!r}")
            entries[spec.name] = spec
        if not entries:
            raise TypeError(f"{target.__name__} has no @slices.entry methods")
        return SliceSpec(mark.name or target.__name__.lower(), False, entries)
    if callable(target):
        spec = _entry_spec(target, "", method=False)
        return SliceSpec(mark.name or target.__name__, True, {spec.name: spec})
    raise TypeError(f"{target!r} is neither a class nor a function")


def _marked_methods(cls: type) -> list[tuple[str, Callable[..., Any]]]:
    found: dict[str, Callable[..., Any]] = {}
    for klass in reversed(cls.__mro__):
        for attr, value in vars(klass).items():
            if isinstance(getattr(value, ENTRY_MARK, None), EntryMark):
                found[attr] = value
            else:
                found.pop(attr, None)
    return list(found.items())


def _entry_spec(func: Callable[..., Any], attr: str, *, method: bool) -> EntrySpec:
    mark = getattr(func, ENTRY_MARK, None) or EntryMark(None, False)
    batch = getattr(func, BATCH_MARK, None)
    name = mark.name or func.__name__
    try:
        hints = typing.get_type_hints(func, include_extras=True)
    except Exception as exc:
        raise TypeError(f"{name}: cannot resolve the type hints: {exc}") from exc
    params = list(inspect.signature(func).parameters.values())
    if method:
        params = params[1:]
    fields: dict[str, Any] = {}
    for param in params:
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD, param.POSITIONAL_ONLY):
            raise TypeError(f"{name}: entry points take named parameters ({param.name})")
        hint = hints.get(param.name, Any)
        default = ... if param.default is param.empty else param.default
        fields[param.name] = (hint, default)
    returns: Any = hints.get("return", Any)
    if batch is not None:
        if len(fields) != 1:
            raise TypeError(f"{name}: a batched entry point takes one parameter (a list)")
        ((field, (hint, default)),) = fields.items()
        fields = {field: (_item_type(hint), default)}
        returns = _item_type(returns)
    renamed = any(_slot(field) != field for field in fields)
    definitions: dict[str, Any] = {
        _slot(field): (hint, Field(default, alias=field) if _slot(field) != field else default)
        for field, (hint, default) in fields.items()
    }
    params_model = create_model(f"{name}_arguments", __config__=_STRICT_NAMES, **definitions)
    return EntrySpec(
        name=name,
        attr=attr,
        params=params_model,
        fields=tuple(fields),
        renamed=renamed,
        returns=TypeAdapter(None if returns is type(None) else returns),
        idempotent=mark.idempotent,
        batch=batch,
        is_async=inspect.iscoroutinefunction(func),
    )


def _slot(name: str) -> str:
    """The model's field for the parameter ``name``: the name itself, unless pydantic
    refuses or warns about it (``_private``, ``model_…``, ``schema``, ``json``…); then
    a safe name, with the parameter's name as its alias."""
    if name.startswith("_") or name.startswith("model_") or hasattr(BaseModel, name):
        return f"param_{name.lstrip('_')}_{len(name)}"
    return name


def _item_type(hint: Any) -> Any:
    """``X`` for ``list[X]`` (``Any`` when unannotated or not a list)."""
    if typing.get_origin(hint) in (list, typing.List):  # noqa: UP006
        (item,) = typing.get_args(hint) or (Any,)
        return item
    return Any
