"""What a (re)started node removes from its data directory: what no assignment holds.

A node killed with ``kill -9`` (or by a power cut) cannot clean up: the
instance directories it ran (``DATA_DIR/instances/APP@VERSION-N/``) and the
artifact archives it cached (``DATA_DIR/artifacts/HEX.tar.gz``) stay on disk,
while the leader places those instances elsewhere. Once the restarted node has
read its assignments (the first snapshot of its assignment stream),
:func:`sweep` removes

- every instance directory no assignment holds, except a stateful instance's
  whose state may not be on the server (see :func:`unsaved_state`): that one
  is kept, and the reason is logged;
- every cached artifact archive (and partial download) no assignment names.

A directory an assignment holds is never touched: its runner rebuilds it.

Each instance directory carries ``instance.json`` (written by the runner when
it loads the instance, node-owned, 0600): the instance's key, artifact digest
and, for a stateful app, its ``state_dir``. It is how the sweep knows where a
stale instance kept its state once the assignment (and its spec) is gone.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aether.artifacts import pack
from aether.model.cluster import InstanceRecord
from aether.node.contents import ContentStore
from aether.node.trees import remove_tree

__all__ = [
    "INSTANCE_FILE",
    "PENDING_SNAPSHOT",
    "SweepResult",
    "instance_dir_name",
    "sweep",
    "unsaved_state",
    "write_instance_file",
]

log = logging.getLogger("aether.node.cleanup")

INSTANCE_FILE = "instance.json"
PENDING_SNAPSHOT = "snapshot.tar.gz"  # a checkpoint packed and not yet stored


def instance_dir_name(record: InstanceRecord) -> str:
    """``APP@VERSION-N``: the instance's directory under ``DATA_DIR/instances``."""
    return f"{record.app}@{record.version}-{record.n}"


def write_instance_file(root: Path, record: InstanceRecord) -> None:
    """Note beside the instance what the sweep needs once its assignment is gone."""
    spec = record.spec
    data = {
        "key": record.key,
        "digest": record.digest,
        "stateful": spec.stateful,
        "state_dir": spec.state_dir if spec.stateful else None,
    }
    path = root / INSTANCE_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(json.dumps(data) + "\n")


def _read_instance_file(root: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((root / INSTANCE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _has_content(path: Path) -> bool:
    """Something is at ``path`` other than an empty directory (a link counts)."""
    if not os.path.lexists(path):
        return False
    if path.is_symlink() or not path.is_dir():
        return True
    with os.scandir(path) as entries:
        return any(True for _ in entries)


def _packed_digest(state: Path, scratch: Path) -> str:
    """The digest a checkpoint of ``state`` would have (canonical, so comparable)."""
    fd, name = tempfile.mkstemp(prefix=".sweep-", suffix=".tar.gz", dir=scratch)
    os.close(fd)
    try:
        return pack(state, Path(name)).digest
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)


def unsaved_state(root: Path, stored_snapshots: Collection[str]) -> str | None:
    """Why the stale instance directory ``root`` must stay, or None when it may go.

    It stays when a checkpoint was packed but not stored (``snapshot.tar.gz``),
    when it has no ``instance.json`` (made by an older node: where its state
    would be cannot be told) and still has its app, or when the app is stateful
    and its state directory is not empty and does not pack to a snapshot this
    node stored on the server (``stored_snapshots``, from its request log).
    """
    if (root / PENDING_SNAPSHOT).exists():
        return "a checkpoint was taken but never stored on the server"
    meta = _read_instance_file(root)
    if meta is None:
        if os.path.lexists(root / "app"):
            return (
                f"it has no {INSTANCE_FILE} (made by an older node), so whether it holds "
                "state cannot be told"
            )
        return None
    state_dir = meta.get("state_dir")
    if not meta.get("stateful") or not isinstance(state_dir, str):
        return None
    state = root / "app" / state_dir
    if not _has_content(state):
        return None
    where = f"its state ({state})"
    if not state.resolve().is_relative_to((root / "app").resolve()):
        return f"{where} leaves the app directory"
    try:
        digest = _packed_digest(state, root)
    except Exception as exc:  # links out, sockets: it cannot be checkpointed as is
        return f"{where} cannot be compared with a checkpoint ({exc})"
    if digest in stored_snapshots:
        return None
    return f"{where} differs from every checkpoint this node stored on the server"


@dataclass
class SweepResult:
    removed: list[str] = field(default_factory=list)  # instance directory names
    kept: dict[str, str] = field(default_factory=dict)  # stale ones kept: name -> why
    artifacts_removed: list[str] = field(default_factory=list)  # file names


def sweep(
    data_dir: Path, assigned: Iterable[InstanceRecord], stored_snapshots: Collection[str]
) -> SweepResult:
    """Remove the instance directories, cached artifacts and shared contents no
    assignment holds.

    Blocking (run it in a thread), and only while no runner of an instance
    outside ``assigned`` is at work. Logs one line per directory it keeps.
    """
    records = list(assigned)
    held = {instance_dir_name(r) for r in records}
    digests = {r.digest.split(":", 1)[-1] for r in records}  # as the runner names them
    result = SweepResult()
    instances = data_dir / "instances"
    with contextlib.suppress(FileNotFoundError):
        for entry in sorted(instances.iterdir()):
            if entry.name in held or entry.is_symlink() or not entry.is_dir():
                continue
            why = unsaved_state(entry, stored_snapshots)
            if why is not None:
                result.kept[entry.name] = why
                log.warning(
                    "keeping %s, which no assignment holds: %s (remove it by hand once its "
                    "state is not needed)",
                    entry,
                    why,
                )
                continue
            try:
                remove_tree(entry)
            except OSError as exc:
                log.warning("could not remove %s, which no assignment holds: %s", entry, exc)
                continue
            result.removed.append(entry.name)
    artifacts = data_dir / "artifacts"
    with contextlib.suppress(FileNotFoundError):
        for entry in sorted(artifacts.iterdir()):
            # HEX.tar.gz, or a partial download HEX.tar.partN
            if entry.name.split(".", 1)[0] in digests or entry.is_dir():
                continue
            try:
                entry.unlink()
            except OSError as exc:
                log.warning("could not remove the cached artifact %s: %s", entry, exc)
                continue
            result.artifacts_removed.append(entry.name)
    if (data_dir / "contents").is_dir():  # shipped files no instance links to any more
        ContentStore(data_dir / "contents").prune()
    if result.removed or result.artifacts_removed:
        log.info(
            "removed what no assignment holds: instance directories [%s]; artifacts [%s]",
            ", ".join(result.removed),
            ", ".join(result.artifacts_removed),
        )
    return result
