"""What each runtime (Node.js, Python, static) contributes to a build."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from aether.artifacts.build.common import NODE_MODULES, PYTHON_VENDOR_DIR, Plan
from aether.artifacts.build.detect import read_toml, static_dir
from aether.errors import BadRequestError
from aether.model.app import AppSpec, Runtime

__all__ = ["SLICE_HOST", "app_spec", "plan_node", "plan_python", "plan_slice", "plan_static"]

#: how a node starts a slice instance (the host is vendored into the artifact)
SLICE_HOST = "python3 -m aether.slices.host"


def _plain_node(script: object) -> bool:
    """Whether an npm start script is just ``node FILE [ARGS]`` (no shell syntax)."""
    if not isinstance(script, str):
        return False
    try:
        words = shlex.split(script)
    except ValueError:
        return False
    shell = set("|&;<>()$`*?[]{}~\\\"'")
    return len(words) >= 2 and words[0] == "node" and not any(c in shell for c in script)


def plan_node(source: Path, pkg: dict[str, Any], procfile: str | None) -> Plan:
    scripts = pkg.get("scripts") if isinstance(pkg.get("scripts"), dict) else {}
    main = pkg.get("main")
    start: str | None
    if procfile:
        start = procfile
    elif isinstance(scripts, dict) and _plain_node(scripts.get("start")):
        # `node server.js` run directly: no npm process in between (faster to
        # start, and SIGTERM reaches the app itself)
        start = str(scripts["start"]).strip()
    elif isinstance(scripts, dict) and scripts.get("start"):
        start = "npm start"
    elif isinstance(main, str) and main:
        start = f"node {shlex.quote(main)}"
    elif (source / "server.js").is_file():
        start = "npm start"  # npm's own default: `node server.js`
    else:
        start = None
    version = pkg.get("version")
    return Plan(
        defaults={"start": start} if start else {},
        exclude=(f"{NODE_MODULES}/",),
        deps_dir=NODE_MODULES,
        app_version=version if isinstance(version, str) else None,
    )


def plan_python(source: Path, procfile: str | None, py_version: str) -> Plan:
    pythonpath = [PYTHON_VENDOR_DIR]
    project = read_toml(source / "pyproject.toml").get("project")
    if (source / "pyproject.toml").is_file() and (source / "src").is_dir():
        pythonpath.append("src")  # src layout: the app's own package lives there
    version = project.get("version") if isinstance(project, dict) else None
    return Plan(
        defaults={
            **({"start": procfile} if procfile else {}),
            "env": {"PYTHONPATH": ":".join(pythonpath), "AETHER_PYTHON_VERSION": py_version},
        },
        exclude=(f"/{PYTHON_VENDOR_DIR}/",),
        deps_dir=PYTHON_VENDOR_DIR,
        app_version=version if isinstance(version, str) else None,
    )


def plan_slice(source: Path, py_version: str, import_path: object) -> Plan:
    """A python app whose start is the slice host (``aether.slices``, vendored by the build)."""
    python = plan_python(source, None, py_version)
    env = dict(python.defaults["env"])
    if isinstance(import_path, str):
        env["AETHER_SLICE"] = import_path
    return Plan(
        defaults={"start": SLICE_HOST, "health": "/healthz", "env": env},
        exclude=python.exclude,
        deps_dir=python.deps_dir,
        app_version=python.app_version,
    )


def plan_static(source: Path, port_env: str) -> Plan:
    directory = static_dir(source) or "."
    start = (
        f'python3 -m http.server "${port_env}" --bind 127.0.0.1 '
        f"--directory {shlex.quote(directory)}"
    )
    return Plan(
        defaults={"start": start, "health": "/"}, exclude=(), deps_dir=None, app_version=None
    )


def app_spec(
    toml: dict[str, Any], plan: Plan, *, name: str, runtime: Runtime, where: Path
) -> AppSpec:
    data = dict(plan.defaults)
    for key, value in toml.items():
        if key == "env" and isinstance(value, dict) and isinstance(data.get("env"), dict):
            data["env"] = {**data["env"], **value}
        else:
            data[key] = value
    data["name"] = name
    data["runtime"] = runtime
    if not data.get("start"):
        hint = {
            "node": "add a start script or main to package.json",
            "python": "add a Procfile with a `web:` line",
            "slice": 'set slice = "module:attribute"',
        }.get(runtime, "add a Procfile with a `web:` line")
        raise BadRequestError(
            f"no start command for {runtime} app {name!r} in {where}: "
            f'set start = "..." in aether.toml or {hint}'
        )
    try:
        return AppSpec.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'file'}: {e['msg']}" for e in exc.errors()
        )
        raise BadRequestError(f"{where}: {problems}") from None
