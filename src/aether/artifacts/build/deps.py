"""The dependency cache: one install per dependency key, hardlinked into builds."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aether.artifacts.build.common import (
    LOCKFILES,
    NODE_MODULES,
    NPM_DEP_FIELDS,
    PYTHON_VENDOR_DIR,
    STALE_TMP_SECONDS,
    BuildLog,
)
from aether.artifacts.build.detect import read_toml
from aether.artifacts.build.tools import (
    dependency_key,
    node_major_version,
    platform_tag,
    run_tool,
    sha256_file,
)
from aether.errors import BadRequestError

__all__ = ["PYDANTIC_REQUIREMENT", "install_node", "install_python"]

#: what a slice's build installs when the app's own requirements do not name pydantic
PYDANTIC_REQUIREMENT = "pydantic>=2,<3"


def _prune_stale_tmp(deps_root: Path) -> None:
    now = time.time()
    for child in deps_root.glob(".tmp-*"):
        with contextlib.suppress(OSError):
            if now - child.stat().st_mtime > STALE_TMP_SECONDS:
                shutil.rmtree(child, ignore_errors=True)


@contextlib.contextmanager
def _new_entry(deps_root: Path, final: Path) -> Iterator[Path]:
    """A scratch directory that becomes ``final`` atomically if the body succeeds."""
    deps_root.mkdir(parents=True, exist_ok=True)
    _prune_stale_tmp(deps_root)
    work = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name[:24]}-", dir=deps_root))
    try:
        yield work
        try:
            os.rename(work, final)
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            shutil.rmtree(work, ignore_errors=True)  # a concurrent build won the race
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def _remove_bytecode(tree: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(tree):
        if "__pycache__" in dirnames:
            shutil.rmtree(Path(dirpath) / "__pycache__", ignore_errors=True)
            dirnames.remove("__pycache__")
        for name in filenames:
            if name.endswith((".pyc", ".pyo")):
                (Path(dirpath) / name).unlink()


def _fix_script_shebangs(bin_dir: Path) -> None:
    """pip writes this machine's interpreter path into console scripts; use PATH's python3.

    Keeps the artifact free of machine-specific paths (so it is reproducible) and
    the scripts runnable on a node.
    """
    if not bin_dir.is_dir():
        return
    for script in sorted(bin_dir.iterdir()):
        if not script.is_file() or script.is_symlink():
            continue
        data = script.read_bytes()
        if not data.startswith(b"#!"):
            continue
        first, sep, rest = data.partition(b"\n")
        if b"python" not in first:
            continue
        mode = script.stat().st_mode
        script.unlink()  # never write in place: the old inode may be shared
        script.write_bytes(b"#!/usr/bin/env python3" + sep + rest)
        os.chmod(script, stat.S_IMODE(mode))


def _npm_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "npm_config_fund": "false",
            "npm_config_audit": "false",
            "npm_config_update_notifier": "false",
            "npm_config_progress": "false",
        }
    )
    return env


def install_node(
    source: Path, pkg: dict[str, Any], cache_dir: Path, say: BuildLog
) -> tuple[Path | None, Path | None, bool]:
    """(cache entry with node_modules, lockfile npm used, cached?) for a node app."""
    lockfile = next((source / n for n in LOCKFILES if (source / n).is_file()), None)
    if not any(pkg.get(f) for f in NPM_DEP_FIELDS[:5]):
        say("no dependencies in package.json: nothing to install")
        return None, lockfile, False
    node_major = node_major_version()
    npmrc = source / ".npmrc"
    key = dependency_key(
        {
            "kind": "npm",
            "lock": [lockfile.name, sha256_file(lockfile)] if lockfile else None,
            "deps": {f: pkg[f] for f in NPM_DEP_FIELDS if f in pkg},
            "npmrc": sha256_file(npmrc) if npmrc.is_file() else None,
            "node": node_major,
            "platform": platform_tag(),
            "omit": "dev",
        }
    )
    entry = cache_dir / "deps" / f"npm-{key[:32]}"
    lock_name = lockfile.name if lockfile else "package-lock.json"
    if entry.is_dir():
        say(f"reusing cached node_modules ({entry.name}, node {node_major})")
        return entry, lockfile or entry / lock_name, True
    with _new_entry(cache_dir / "deps", entry) as work:
        # The root package's scripts are about its own source, which is not here
        # (and e.g. `prepare: husky` needs a dev dependency): drop them.
        manifest = {k: v for k, v in pkg.items() if k != "scripts"}
        (work / "package.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        if lockfile is not None:
            shutil.copyfile(lockfile, work / lockfile.name)
        if npmrc.is_file():
            shutil.copyfile(npmrc, work / ".npmrc")
        if lockfile is not None:
            cmd = ["npm", "ci", "--omit=dev"]
        else:
            cmd = ["npm", "install", "--omit=dev"]
        say(f"installing dependencies with npm (node {node_major})")
        run_tool(cmd, cwd=work, env=_npm_env(), say=say)
        (work / ".npmrc").unlink(missing_ok=True)  # may hold registry tokens: do not keep it
        # npm's hidden lockfile records install paths and is only a cache for npm
        # itself; it has no place in a reproducible artifact.
        with contextlib.suppress(FileNotFoundError):
            (work / NODE_MODULES / ".package-lock.json").unlink()
        _remove_bytecode(work / NODE_MODULES)  # node-gyp builds may run python
    return entry, lockfile or entry / lock_name, False


def _requirement_files(req: Path, seen: set[Path] | None = None) -> list[Path]:
    """``requirements.txt`` and the files it includes with ``-r`` / ``-c``."""
    seen = seen if seen is not None else set()
    if req in seen or not req.is_file():
        return []
    seen.add(req)
    out = [req]
    for line in req.read_text(encoding="utf-8", errors="replace").splitlines():
        match = re.match(r"^\s*(-r|-c|--requirement|--constraint)[\s=]+(\S+)", line)
        if match:
            out.extend(_requirement_files((req.parent / match.group(2)).resolve(), seen))
    return out


_PYDANTIC_LINE = re.compile(r"^\s*pydantic\s*($|[\[<>=!~;@ ])", re.IGNORECASE)


def _names_pydantic(requirements: list[str]) -> bool:
    return any(_PYDANTIC_LINE.match(line) for line in requirements)


def _slice_requirements(source: Path) -> tuple[list[str], dict[str, Any]]:
    """A slice's: the app's own (if any), and pydantic unless they name it."""
    has_files = (source / "requirements.txt").is_file() or (source / "pyproject.toml").is_file()
    args, parts = _python_requirements(source) if has_files else ([], {})
    named: list[str] = []
    if args[:1] == ["-r"]:
        named = [
            line
            for f in _requirement_files(source / "requirements.txt")
            for line in f.read_text(encoding="utf-8", errors="replace").splitlines()
        ]
    else:
        named = list(args)
    if not _names_pydantic(named):
        args = [*args, PYDANTIC_REQUIREMENT]
        parts = {**parts, "slice": PYDANTIC_REQUIREMENT}
    return args, parts


def _python_requirements(source: Path) -> tuple[list[str], dict[str, Any]]:
    """(pip arguments, key parts) naming what to install for a python app."""
    req = source / "requirements.txt"
    if req.is_file():
        files = _requirement_files(req)
        parts = {"requirements": [[p.name, sha256_file(p)] for p in files]}
        lines = [
            line.strip()
            for f in files
            for line in f.read_text(encoding="utf-8", errors="replace").splitlines()
        ]
        if not any(line and not line.startswith("#") for line in lines):
            return [], parts
        return ["-r", str(req)], parts
    pyproject = read_toml(source / "pyproject.toml")
    project = pyproject.get("project")
    if not isinstance(project, dict) or "dependencies" in project.get("dynamic", []):
        raise BadRequestError(
            f"cannot read the dependencies of {source / 'pyproject.toml'} (no static "
            "[project].dependencies): add a requirements.txt, e.g. with "
            "`pip freeze > requirements.txt` or `poetry export -o requirements.txt`",
            code="build_failed",
        )
    deps = project.get("dependencies", [])
    if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
        raise BadRequestError(
            f"{source / 'pyproject.toml'}: [project].dependencies must be a list of strings"
        )
    return list(deps), {"dependencies": deps}


def install_python(
    source: Path,
    cache_dir: Path,
    python: str,
    py_version: str,
    say: BuildLog,
    *,
    slice_runtime: bool = False,
) -> tuple[Path | None, bool]:
    """(cache entry holding the vendor dir, cached?) for a python app (or a slice:
    pydantic is added unless the app's requirements name it)."""
    args, parts = _slice_requirements(source) if slice_runtime else _python_requirements(source)
    if not args:
        say("no Python dependencies to install")
        return None, False
    key = dependency_key({"kind": "pip", **parts, "python": py_version, "platform": platform_tag()})
    entry = cache_dir / "deps" / f"pip-{key[:32]}"
    if entry.is_dir():
        say(f"reusing cached {PYTHON_VENDOR_DIR} ({entry.name}, python {py_version})")
        return entry, True
    with _new_entry(cache_dir / "deps", entry) as work:
        target = work / PYTHON_VENDOR_DIR
        cmd = [
            python,
            "-m",
            "pip",
            "install",
            "--target",
            str(target),
            "--no-compile",  # .pyc files carry timestamps: not reproducible
            "--no-input",
            "--disable-pip-version-check",
            "--no-warn-script-location",
            *args,
        ]
        env = dict(os.environ)
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        say(f"installing dependencies with pip (python {py_version})")
        run_tool(cmd, cwd=source, env=env, say=say)
        target.mkdir(exist_ok=True)
        _remove_bytecode(target)
        _fix_script_shebangs(target / "bin")
    return entry, False
