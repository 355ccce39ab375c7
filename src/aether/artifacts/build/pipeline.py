"""``build``: detect, install or reuse dependencies, stage, and say what runs."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_args

import aether
from aether.artifacts.build.common import PYTHON_VENDOR_DIR, BuildLog, BuildResult, Plan
from aether.artifacts.build.deps import install_node, install_python
from aether.artifacts.build.detect import (
    derive_name,
    detect_runtime,
    procfile_web,
    read_json_object,
    read_toml,
)
from aether.artifacts.build.runtimes import (
    app_spec,
    plan_node,
    plan_python,
    plan_slice,
    plan_static,
)
from aether.artifacts.build.staging import Wanted, locked, sync_tree, walk_tree
from aether.artifacts.build.tools import pip_python
from aether.artifacts.ignore import IGNORE_FILE, IgnoreRules
from aether.artifacts.sbom import make_bom, npm_sbom, python_sbom
from aether.errors import BadRequestError
from aether.model.app import APP_NAME_RE, Runtime

__all__ = ["build", "slice_runtime_files", "vendor_slice_runtime"]


def slice_runtime_files() -> list[tuple[str, Path]]:
    """(path inside the vendor dir, installed file) of the slice runtime, in a stable order:
    ``aether/__init__.py`` and ``aether/slices/*.py`` of the aether running this build."""
    package = Path(aether.__file__).resolve().parent
    files = [("aether/__init__.py", package / "__init__.py")]
    files += [(f"aether/slices/{p.name}", p) for p in sorted((package / "slices").glob("*.py"))]
    return files


def vendor_slice_runtime(wanted: dict[str, Wanted]) -> None:
    """Copy the slice runtime into the staged vendor dir (over any ``aether`` there), so
    the sandbox's python3 imports ``aether.slices`` from the artifact."""
    for stale in [rel for rel in wanted if rel.startswith(f"{PYTHON_VENDOR_DIR}/aether/")]:
        del wanted[stale]
    for directory in ("", "/aether", "/aether/slices"):
        wanted[f"{PYTHON_VENDOR_DIR}{directory}"] = Wanted("dir")
    for rel, src in slice_runtime_files():
        wanted[f"{PYTHON_VENDOR_DIR}/{rel}"] = Wanted("file", src=str(src))


def build(
    source: Path,
    *,
    name: str | None = None,
    cache_dir: Path,
    sbom: bool = True,
    progress: Callable[[str], None] | None = None,
) -> BuildResult:
    """Build ``source`` into ``cache_dir/builds/<app>`` and describe how to run it.

    ``name`` overrides aether.toml's name (which overrides package.json /
    pyproject names and the directory name). Raises BadRequestError for bad
    configuration, and with code ``build_failed`` when npm or pip fails (the
    message names the command and ends with its last output lines).
    """
    source = Path(source).resolve()
    cache_dir = Path(cache_dir).resolve()
    if not source.is_dir():
        raise BadRequestError(f"{source} is not a directory", code="bad_path")
    say = BuildLog(progress)
    toml_path = source / "aether.toml"
    toml = read_toml(toml_path)
    procfile = procfile_web(source)

    declared = toml.get("runtime")
    runtime: Runtime
    if declared is not None:
        if declared not in get_args(Runtime):
            raise BadRequestError(
                f"{toml_path}: runtime must be one of {', '.join(get_args(Runtime))}, "
                f"not {declared!r}"
            )
        runtime = declared
    else:
        detected = detect_runtime(source)
        if detected is None and not (toml.get("start") or procfile):
            raise BadRequestError(
                f"cannot tell how to run {source}: no package.json, pyproject.toml, "
                "requirements.txt or index.html; add an aether.toml with "
                'name = "..." and start = "..."'
            )
        runtime = detected or "command"

    toml_name = toml.get("name")
    if name is not None:
        app = name
    elif isinstance(toml_name, str):
        app = toml_name
    else:
        app = derive_name(source, runtime)
    if not APP_NAME_RE.match(app):
        raise BadRequestError(
            f"invalid app name {app!r}: use 1-63 lower-case letters, digits and '-', "
            "starting and ending with a letter or digit"
        )
    say(f"building {app} ({runtime}) from {source}")

    pkg: dict[str, Any] = {}
    python, py_version = "", ""
    if runtime == "node":
        if not (source / "package.json").is_file():
            raise BadRequestError(f"runtime is node but {source / 'package.json'} is missing")
        pkg = read_json_object(source / "package.json")
        plan = plan_node(source, pkg, procfile)
    elif runtime == "python":
        python, py_version = pip_python()
        plan = plan_python(source, procfile, py_version)
    elif runtime == "slice":
        python, py_version = pip_python()
        plan = plan_slice(source, py_version, toml.get("slice"))
    elif runtime == "static":
        port_env = toml.get("port_env", "PORT")
        plan = plan_static(source, port_env if isinstance(port_env, str) else "PORT")
    else:
        plan = Plan(
            defaults={"start": procfile} if procfile else {},
            exclude=(),
            deps_dir=None,
            app_version=None,
        )
    spec = app_spec(toml, plan, name=app, runtime=runtime, where=toml_path if toml else source)

    staging = cache_dir / "builds" / app
    with locked(cache_dir / "builds" / f".{app}.lock"):
        entry: Path | None = None
        lockfile: Path | None = None
        cached = False
        if runtime == "node":
            entry, lockfile, cached = install_node(source, pkg, cache_dir, say)
        elif runtime == "python" and (
            (source / "requirements.txt").is_file() or (source / "pyproject.toml").is_file()
        ):
            entry, cached = install_python(source, cache_dir, python, py_version, say)
        elif runtime == "slice":
            entry, cached = install_python(
                source, cache_dir, python, py_version, say, slice_runtime=True
            )

        excluded = [f"/{IGNORE_FILE}", *plan.exclude]
        with contextlib.suppress(ValueError):
            inside = cache_dir.relative_to(source)
            excluded.append(f"/{inside.as_posix()}/")
        rules = IgnoreRules.for_root(source, excluded)
        wanted: dict[str, Wanted] = {}
        walk_tree(source, "", rules, wanted, link=False)
        if entry is not None and plan.deps_dir and (entry / plan.deps_dir).is_dir():
            wanted[plan.deps_dir] = Wanted("dir")
            walk_tree(entry / plan.deps_dir, f"{plan.deps_dir}/", None, wanted, link=True)
        if runtime == "slice":
            vendor_slice_runtime(wanted)
            say(f"added the slice runtime (aether.slices) to {PYTHON_VENDOR_DIR}")
        written, removed = sync_tree(staging, wanted)
        say(f"staged {len(wanted)} entries in {staging} ({written} written, {removed} removed)")

        bom: dict[str, Any] | None = None
        if sbom:
            if runtime == "node" and lockfile is not None and lockfile.is_file():
                bom = npm_sbom(lockfile, app=app, version=plan.app_version, installed_root=staging)
            elif runtime in ("python", "slice"):
                bom = python_sbom(staging / PYTHON_VENDOR_DIR, app=app, version=plan.app_version)
            else:
                bom = make_bom(app, [], version=plan.app_version, runtime=runtime)
            say(f"sbom: {len(bom['components'])} components")
    return BuildResult(
        root=staging, runtime=runtime, spec=spec, sbom=bom, cached=cached, log=say.lines
    )
