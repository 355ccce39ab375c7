"""The endpoint table a host's handles resolve from, and the choice of endpoints for
one call (pure: the order to try them in).

The node pushes the tenant's table with ``$endpoints`` (replacing the last one) and
the leader's cluster snapshot with ``$snapshot``; both live in ``REGISTRY``, one per
host process. No lookup happens per call.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["REGISTRY", "Balance", "Endpoint", "Registry", "in_flight_of", "order_endpoints"]

Balance = Literal["round_robin", "least_in_flight"]


@dataclass(frozen=True, slots=True)
class Endpoint:
    url: str
    node: str
    n: int
    idempotent: bool | None = None  # from the entry's schema, when the table carries it


@dataclass(slots=True)
class Registry:
    table: dict[str, dict[str, tuple[Endpoint, ...]]] = field(default_factory=dict)
    node: str | None = None
    snapshot: dict[str, Any] = field(default_factory=dict)
    turns: dict[tuple[str, str], itertools.count[int]] = field(default_factory=dict)

    def replace(self, table: Mapping[str, Any], node: str | None) -> int:
        """Take a pushed table; how many endpoints it holds. ``ValueError`` if malformed."""
        parsed = parse_table(table)
        self.table = parsed
        self.node = node
        return sum(len(eps) for entries in parsed.values() for eps in entries.values())

    def urls(self) -> set[str]:
        return {ep.url for entries in self.table.values() for eps in entries.values() for ep in eps}

    def endpoints(self, slice_name: str, entry: str) -> tuple[Endpoint, ...]:
        return self.table.get(slice_name, {}).get(entry, ())

    def turn(self, slice_name: str, entry: str) -> int:
        counter = self.turns.get((slice_name, entry))
        if counter is None:
            counter = self.turns[(slice_name, entry)] = itertools.count()
        return next(counter)


REGISTRY = Registry()


def parse_table(table: Mapping[str, Any]) -> dict[str, dict[str, tuple[Endpoint, ...]]]:
    if not isinstance(table, Mapping):
        raise ValueError("the table must be an object")
    parsed: dict[str, dict[str, tuple[Endpoint, ...]]] = {}
    for slice_name, entries in table.items():
        if not isinstance(entries, Mapping):
            raise ValueError(f"{slice_name}: entries must be an object")
        parsed[str(slice_name)] = {
            str(entry): tuple(_endpoint(item) for item in items) for entry, items in entries.items()
        }
    return parsed


def _endpoint(item: Any) -> Endpoint:
    if not isinstance(item, Mapping) or not isinstance(item.get("url"), str):
        raise ValueError(f"an endpoint needs a url: {item!r}")
    schema = item.get("schema")
    idempotent = schema.get("idempotent") if isinstance(schema, Mapping) else None
    if idempotent is None:
        idempotent = item.get("idempotent")
    return Endpoint(
        url=item["url"],
        node=str(item.get("node", "")),
        n=int(item.get("n", 0)),
        idempotent=None if idempotent is None else bool(idempotent),
    )


def in_flight_of(snapshot: Mapping[str, Any], slice_name: str, entry: str, url: str) -> float:
    """An endpoint's in-flight calls in the leader's snapshot (0 when absent):
    ``snapshot["slices"][slice][entry]["by_url"][url]``, a number or ``{"in_flight": n}``."""
    try:
        value = snapshot["slices"][slice_name][entry]["by_url"][url]
    except (KeyError, TypeError):
        return 0.0
    if isinstance(value, Mapping):
        value = value.get("in_flight", 0)
    return float(value) if isinstance(value, int | float) else 0.0


def order_endpoints(
    endpoints: tuple[Endpoint, ...],
    *,
    node: str | None,
    turn: int,
    balance: Balance = "round_robin",
    load: Mapping[str, float] | None = None,
) -> list[Endpoint]:
    """The endpoints in the order to try them: those on ``node`` first, then the
    others; within each group rotated by ``turn`` (round robin), or for
    ``least_in_flight`` the least loaded first (``load`` by url; ties rotate)."""
    local = [ep for ep in endpoints if node is not None and ep.node == node]
    remote = [ep for ep in endpoints if node is None or ep.node != node]
    ordered: list[Endpoint] = []
    for group in (local, remote):
        if not group:
            continue
        start = turn % len(group)
        rotated = group[start:] + group[:start]
        if balance == "least_in_flight":
            loads = load or {}
            rotated.sort(key=lambda ep: loads.get(ep.url, 0.0))
        ordered.extend(rotated)
    return ordered
