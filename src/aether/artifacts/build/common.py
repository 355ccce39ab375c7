"""What every step of a build shares: the result, a runtime's plan, the log."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aether.model.app import AppSpec, Runtime

__all__ = [
    "KEY_VERSION",
    "LOCKFILES",
    "NODE_MODULES",
    "NPM_DEP_FIELDS",
    "PYTHON_VENDOR_DIR",
    "STALE_TMP_SECONDS",
    "TAIL_LINES",
    "BuildLog",
    "BuildResult",
    "Plan",
]


#: Where pip installs Python dependencies inside the artifact. Not matched by the
#: packer's default ignores (unlike ``.venv``), and the name Azure Functions uses
#: for the same purpose, so it is recognisable.
PYTHON_VENDOR_DIR = ".python_packages"
NODE_MODULES = "node_modules"

LOCKFILES = ("npm-shrinkwrap.json", "package-lock.json")  # npm's precedence order
NPM_DEP_FIELDS = (
    "dependencies",
    "optionalDependencies",
    "peerDependencies",
    "bundleDependencies",
    "bundledDependencies",
    "overrides",
)
KEY_VERSION = 1
TAIL_LINES = 25
STALE_TMP_SECONDS = 24 * 3600


@dataclass(frozen=True, slots=True)
class BuildResult:
    """A built app: ``root`` is the directory to pack, ``spec`` how a node runs it.

    ``cached`` is true when the dependencies came from the cache (no package
    manager ran); ``log`` holds every progress line, package manager output included.
    """

    root: Path
    runtime: Runtime
    spec: AppSpec
    sbom: dict[str, Any] | None
    cached: bool
    log: list[str]


@dataclass(frozen=True, slots=True)
class Plan:
    """What one runtime contributes before anything is installed."""

    defaults: dict[str, Any]
    exclude: tuple[str, ...]  # extra ignore patterns for the source copy
    deps_dir: str | None  # name of the dependency directory inside the artifact
    app_version: str | None


class BuildLog:
    def __init__(self, progress: Callable[[str], None] | None) -> None:
        self.lines: list[str] = []
        self._progress = progress

    def __call__(self, line: str) -> None:
        self.lines.append(line)
        if self._progress is not None:
            self._progress(line)
