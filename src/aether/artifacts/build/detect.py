"""Detection: which runtime a source tree is, and the app's name."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from aether.errors import BadRequestError
from aether.model.app import APP_NAME_RE, AppSpec, Runtime

__all__ = [
    "derive_name",
    "detect_runtime",
    "load_app_spec",
    "procfile_web",
    "read_json_object",
    "read_toml",
    "static_dir",
]


def detect_runtime(source: Path) -> Runtime | None:
    """The runtime implied by the files at ``source``'s root; None means "a plain command"."""
    if (source / "package.json").is_file():
        return "node"
    if (source / "pyproject.toml").is_file() or (source / "requirements.txt").is_file():
        return "python"
    if static_dir(source) is not None:
        return "static"
    return None


def static_dir(source: Path) -> str | None:
    if (source / "index.html").is_file():
        return "."
    if (source / "public" / "index.html").is_file():
        return "public"
    return None


def read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise BadRequestError(f"{path} is not valid TOML: {exc}") from None


def read_json_object(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequestError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequestError(f"{path} must hold a JSON object")
    return data


def procfile_web(source: Path) -> str | None:
    """The ``web:`` command of a Heroku-style Procfile, if there is one."""
    try:
        text = (source / "Procfile").read_text(encoding="utf-8")
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    for line in text.splitlines():
        kind, sep, command = line.partition(":")
        if sep and kind.strip() == "web" and command.strip():
            return command.strip()
    return None


def _sanitise_name(raw: str) -> str | None:
    """An app name from a package or directory name: ``@acme/My_App`` -> ``my-app``."""
    base = raw.rsplit("/", 1)[-1].lower()
    name = re.sub(r"[^a-z0-9]+", "-", base).strip("-")[:63].strip("-")
    return name if APP_NAME_RE.match(name) else None


def derive_name(source: Path, runtime: Runtime) -> str:
    candidates: list[str] = []
    if runtime == "node" and (source / "package.json").is_file():
        pkg_name = read_json_object(source / "package.json").get("name")
        if isinstance(pkg_name, str):
            candidates.append(pkg_name)
    if runtime in ("python", "slice"):
        project = read_toml(source / "pyproject.toml").get("project")
        if isinstance(project, dict) and isinstance(project.get("name"), str):
            candidates.append(project["name"])
    candidates.append(source.name)
    for raw in candidates:
        name = _sanitise_name(raw)
        if name:
            return name
    raise BadRequestError(
        f"cannot derive an app name for {source} from {candidates!r}: "
        'set name = "..." in aether.toml or pass a name'
    )


def load_app_spec(root: Path, *, name: str | None = None) -> AppSpec:
    """Read ``root/aether.toml``; ``name`` overrides the file's name."""
    path = root / "aether.toml"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadRequestError(
            f'{path} not found: create it with at least name = "..." and start = "..."'
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise BadRequestError(f"{path} is not valid TOML: {exc}") from None
    if name is not None:
        data["name"] = name
    try:
        return AppSpec.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'file'}: {e['msg']}" for e in exc.errors()
        )
        raise BadRequestError(f"{path}: {problems}") from None
