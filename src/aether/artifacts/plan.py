"""Pack plans: the ordered entries of a canonical archive, without the file contents.

A plan holds everything that decides an archive's bytes except what is inside
the files: directories, files by sha256, size and mode, symlinks by target, in
archive order. ``aether.artifacts.pack.write_plan`` turns a plan plus a way to
open each file's content into the very bytes ``pack`` would have written, so a
server that already holds most files as blobs can assemble a new artifact from a
plan and the few blobs that changed.

Plans arriving over HTTP are hostile until proven otherwise: ``PackPlan.from_dict``
(and ``from_json``) refuse anything ``pack`` could not have produced and anything
that would extract outside its directory, each with a clear code:

=================  ===========================================================
``bad_plan``       not the plan shape, an unknown format, a non-normalised
                   path, a bad sha256/size/mode, a parent that is not listed
``absolute_path``  an entry path starting with ``/``
``path_traversal`` an entry path with a ``..`` component
``path_conflict``  two entries for one path, or an entry below a non-directory
``link_escape``    a symlink that is absolute or resolves outside the root
``too_many_entries`` more entries than allowed
``archive_too_large`` file contents adding up to more than allowed
=================  ===========================================================
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from aether.artifacts.digest import DIGEST_PREFIX
from aether.errors import BadRequestError, UnsafeArchiveError

__all__ = [
    "MAX_PLAN_ENTRIES",
    "PLAN_FORMAT",
    "PLAN_FORMATS",
    "PLAN_FORMAT_V1",
    "PackPlan",
    "PlanEntry",
]

#: The archive framing a plan is written with: ``/1`` is one gzip stream over the
#: tar (tar PAX + gzip level 6, no mtime), ``/2`` one gzip member per segment
#: (``aether.artifacts.framing``). New plans use ``/2``; ``/1`` is still accepted
#: from older clients.
PLAN_FORMAT_V1 = "aether-tar-gz/1"
PLAN_FORMAT = "aether-tar-gz/2"
PLAN_FORMATS = (PLAN_FORMAT_V1, PLAN_FORMAT)
#: Default entry limit for plans received from elsewhere (a big node_modules has ~50k).
MAX_PLAN_ENTRIES = 200_000
_MAX_PATH_BYTES = 4096
#: Symlinks followed while resolving one path; more is treated as an escape (or a loop).
_MAX_LINK_HOPS = 40
#: Path components walked to check all of a plan's links; bounds the work a hostile
#: plan (many long, chained links) can cause. Real trees use a tiny fraction.
_LINK_STEP_BUDGET = 500_000
_HEX64 = re.compile(r"[0-9a-f]{64}")

DIR_MODE = 0o755
LINK_MODE = 0o777
FILE_MODES = frozenset({0o644, 0o755})

Kind = Literal["dir", "file", "symlink"]


@dataclass(frozen=True, slots=True)
class PlanEntry:
    """One archive entry; ``sha256`` (bare hex) and ``size`` for files, ``target`` for links."""

    path: str
    kind: Kind
    mode: int
    size: int = 0
    sha256: str = ""
    target: str = ""

    @classmethod
    def dir(cls, path: str) -> PlanEntry:
        return cls(path, "dir", DIR_MODE)

    @classmethod
    def file(cls, path: str, sha256: str, size: int, mode: int) -> PlanEntry:
        return cls(path, "file", mode, size=size, sha256=sha256)

    @classmethod
    def symlink(cls, path: str, target: str) -> PlanEntry:
        return cls(path, "symlink", LINK_MODE, target=target)

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "dir":
            return {"type": "dir", "path": self.path}
        if self.kind == "symlink":
            return {"type": "symlink", "path": self.path, "target": self.target}
        return {
            "type": "file",
            "path": self.path,
            "sha256": self.sha256,
            "size": self.size,
            "mode": self.mode,
        }


@dataclass(frozen=True, slots=True)
class PackPlan:
    """The entries of one canonical archive, in archive order."""

    entries: tuple[PlanEntry, ...]
    format: str = PLAN_FORMAT

    def files(self) -> Iterator[PlanEntry]:
        return (e for e in self.entries if e.kind == "file")

    @property
    def file_count(self) -> int:
        return sum(1 for _ in self.files())

    @property
    def file_bytes(self) -> int:
        """Total size of the file contents (uncompressed)."""
        return sum(e.size for e in self.files())

    def blob_digests(self) -> list[str]:
        """The distinct file contents as ``sha256:<hex>`` digests, in first-use order."""
        return list(dict.fromkeys(DIGEST_PREFIX + e.sha256 for e in self.files()))

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.format, "entries": [e.to_dict() for e in self.entries]}

    def to_json(self) -> bytes:
        """Canonical JSON (sorted keys, no spaces): the same plan gives the same bytes."""
        return json.dumps(
            self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode()

    @classmethod
    def from_json(
        cls,
        data: bytes | str,
        *,
        max_entries: int = MAX_PLAN_ENTRIES,
        max_bytes: int | None = None,
    ) -> PackPlan:
        """Parse and validate; see ``from_dict``."""
        try:
            raw = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRequestError(f"plan is not valid JSON: {exc}", code="bad_plan") from None
        return cls.from_dict(raw, max_entries=max_entries, max_bytes=max_bytes)

    @classmethod
    def from_dict(
        cls,
        raw: object,
        *,
        max_entries: int = MAX_PLAN_ENTRIES,
        max_bytes: int | None = None,
    ) -> PackPlan:
        """A validated plan from its JSON form, or a 400 error with the codes listed above.

        ``max_bytes`` bounds the sum of the file sizes (None: no bound).
        """
        if not isinstance(raw, Mapping) or set(raw) != {"format", "entries"}:
            raise _bad("a plan is an object with exactly the keys 'format' and 'entries'")
        if raw["format"] not in PLAN_FORMATS:
            raise _bad(
                f"unknown plan format {raw['format']!r}; this server knows {list(PLAN_FORMATS)!r}"
            )
        items = raw["entries"]
        if not isinstance(items, list):
            raise _bad("'entries' must be a list")
        if len(items) > max_entries:
            raise UnsafeArchiveError(
                f"plan has {len(items)} entries, more than the limit of {max_entries}",
                code="too_many_entries",
            )
        plan = cls(tuple(_entry_from(i, item) for i, item in enumerate(items)), str(raw["format"]))
        plan.check(max_bytes=max_bytes)
        return plan

    def check(self, *, max_bytes: int | None = None) -> None:
        """Refuse duplicate or orphan paths, escaping links and oversized contents."""
        kinds: dict[str, Kind] = {}
        links: dict[str, str] = {}
        total = 0
        for entry in self.entries:
            path = entry.path
            if path in kinds:
                raise UnsafeArchiveError(f"plan lists {path!r} twice", code="path_conflict")
            parent = posixpath.dirname(path)
            if parent:
                parent_kind = kinds.get(parent)
                if parent_kind is None:
                    raise _bad(f"entry {path!r} comes before (or without) its directory {parent!r}")
                if parent_kind != "dir":
                    raise UnsafeArchiveError(
                        f"entry {path!r} is below {parent!r}, which is a {parent_kind}, "
                        "not a directory",
                        code="path_conflict",
                    )
            kinds[path] = entry.kind
            if entry.kind == "symlink":
                links[path] = entry.target
            elif entry.kind == "file":
                total += entry.size
                if max_bytes is not None and total > max_bytes:
                    raise UnsafeArchiveError(
                        f"plan's files add up to more than the {max_bytes}-byte limit",
                        code="archive_too_large",
                    )
        budget = [_LINK_STEP_BUDGET]
        for path, target in links.items():
            if _resolve(path, links, budget) is None:
                raise UnsafeArchiveError(
                    f"symlink {path!r} -> {target!r} resolves outside the artifact "
                    "(or through more than 40 links)",
                    code="link_escape",
                )
            if budget[0] < 0:
                raise UnsafeArchiveError(
                    "the plan's symlinks are too many and too tangled to check",
                    code="link_escape",
                )


def _bad(message: str) -> BadRequestError:
    return BadRequestError(f"invalid plan: {message}", code="bad_plan")


def _text(value: object, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise _bad(f"{what} must be a non-empty string")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise _bad(f"{what} {value!r} is not valid UTF-8") from None
    if size > _MAX_PATH_BYTES or "\x00" in value:
        raise _bad(f"{what} is longer than {_MAX_PATH_BYTES} bytes or contains NUL")
    return value


def _path(value: object) -> str:
    path = _text(value, "an entry path")
    if path.startswith("/"):
        raise UnsafeArchiveError(f"entry path {path!r} is absolute", code="absolute_path")
    parts = path.split("/")
    if ".." in parts:
        raise UnsafeArchiveError(
            f"entry path {path!r} contains a '..' component", code="path_traversal"
        )
    if "" in parts or "." in parts:
        raise _bad(f"entry path {path!r} is not normalised (empty or '.' component)")
    return path


def _int(value: object, what: str) -> int:
    if type(value) is not int or value < 0:
        raise _bad(f"{what} must be a non-negative integer")
    return value


def _entry_from(index: int, item: object) -> PlanEntry:
    if not isinstance(item, Mapping):
        raise _bad(f"entry {index} is not an object")
    kind = item.get("type")
    expected = {
        "dir": {"type", "path"},
        "file": {"type", "path", "sha256", "size", "mode"},
        "symlink": {"type", "path", "target"},
    }.get(kind if isinstance(kind, str) else "")
    if expected is None:
        raise _bad(f"entry {index} has type {kind!r}; expected 'dir', 'file' or 'symlink'")
    if set(item) != expected:
        raise _bad(f"entry {index} ({kind}) must have exactly the keys {sorted(expected)}")
    path = _path(item["path"])
    if kind == "dir":
        return PlanEntry.dir(path)
    if kind == "symlink":
        target = _text(item["target"], f"the target of symlink {path!r}")
        if target.startswith("/"):
            raise UnsafeArchiveError(
                f"symlink {path!r} -> {target!r} is absolute", code="link_escape"
            )
        return PlanEntry.symlink(path, target)
    sha = item["sha256"]
    if not isinstance(sha, str) or _HEX64.fullmatch(sha) is None:
        raise _bad(f"file {path!r}: sha256 must be 64 lowercase hex digits")
    mode = _int(item["mode"], f"file {path!r}: mode")
    if mode not in FILE_MODES:
        raise _bad(f"file {path!r}: mode must be 0o644 (420) or 0o755 (493), not {mode:#o}")
    return PlanEntry.file(path, sha, _int(item["size"], f"file {path!r}: size"), mode)


def _resolve(path: str, links: Mapping[str, str], budget: list[int]) -> str | None:
    """Where ``path`` leads inside the root after following the plan's own links; None if out.

    Like ``realpath`` on the extracted tree: each symlink's target is read relative
    to the directory holding the link. Unknown components are taken as directories
    or files, which can only keep a path inside. A resolved path longer than
    ``PATH_MAX`` counts as out. Each component walked costs one unit of
    ``budget[0]``; the walk stops (answering "inside") when it runs out.
    """
    pending = path.split("/")
    pending.reverse()
    prefixes: list[str] = []  # prefixes[-1] is the resolved path so far
    hops = 0
    while pending and budget[0] >= 0:
        budget[0] -= 1
        part = pending.pop()
        if part in ("", "."):
            continue
        if part == "..":
            if not prefixes:
                return None
            prefixes.pop()
            continue
        candidate = f"{prefixes[-1]}/{part}" if prefixes else part
        if len(candidate) > _MAX_PATH_BYTES:
            return None
        target = links.get(candidate)
        if target is None:
            prefixes.append(candidate)
            continue
        hops += 1
        if hops > _MAX_LINK_HOPS or target.startswith("/"):
            return None
        pending.extend(reversed(target.split("/")))
    return prefixes[-1] if prefixes else ""
