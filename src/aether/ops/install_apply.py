"""Writing a rendering: into an output directory, or onto a machine (``--apply``).

:func:`plan` compares the files to write with what is on disk and decides, per
file, what to do; nothing is written unless every file may be (a file that
differs from the rendering is a conflict without ``force``). Files the operator
owns (``keep``: the ``*.env`` secrets) are never replaced once they exist, even
with ``force``; only their mode is tightened. :func:`write` then carries a plan out.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from aether.ops.install import Rendered

__all__ = ["Step", "conflicts", "for_machine", "plan", "write"]

Action = Literal["create", "update", "unchanged", "kept", "conflict"]


@dataclass(frozen=True)
class Step:
    """One file: where it goes, what will happen to it, and its mode (``mode_fix``: the
    mode on disk differs and will be set)."""

    path: Path
    action: Action
    mode: int
    mode_fix: bool = False


def for_machine(rendered: dict[str, Rendered], machine: str) -> dict[str, Rendered]:
    """The files of ``machine``, by their path below ``/`` (``etc/aether/server.toml``)."""
    prefix = f"{machine}/"
    return {p.removeprefix(prefix): f for p, f in rendered.items() if p.startswith(prefix)}


def _action(target: Path, file: Rendered, force: bool) -> Action:
    try:
        current = target.read_text()
    except FileNotFoundError:
        return "create"
    if current == file.content:
        return "unchanged"
    if file.keep:
        return "kept"
    return "update" if force else "conflict"


def plan(files: dict[str, Rendered], root: Path, *, force: bool = False) -> list[Step]:
    """What writing ``files`` (paths relative to ``root``) would do, file by file."""
    steps = []
    for relative, file in sorted(files.items()):
        target = root / relative
        action = _action(target, file, force)
        mode_fix = False
        if action in ("unchanged", "kept"):
            mode_fix = (target.stat().st_mode & 0o7777) != file.mode
        steps.append(Step(target, action, file.mode, mode_fix))
    return steps


def conflicts(steps: list[Step]) -> list[Path]:
    return [step.path for step in steps if step.action == "conflict"]


def write(steps: list[Step], files: dict[str, Rendered], root: Path) -> None:
    """Carry out ``steps`` (which must hold no conflict): each file written whole to a
    temporary name with its mode, then renamed into place."""
    if conflicts(steps):
        raise ValueError("refusing to write: the plan has conflicts")
    by_target = {root / relative: file for relative, file in files.items()}
    for step in steps:
        if step.action in ("create", "update"):
            step.path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
            _write_file(step.path, by_target[step.path].content, step.mode)
        elif step.mode_fix:
            step.path.chmod(step.mode)


def _write_file(path: Path, content: str, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.aether-install")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(content)
        os.chmod(tmp, mode)  # the umask may have taken bits away
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
