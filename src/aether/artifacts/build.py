"""Build an app on the developer's machine into a directory ready to pack.

Nothing is ever built on a server: ``build`` detects the runtime (or reads it
from ``aether.toml``), installs dependencies with the developer's own ``npm`` or
``pip``, and stages source + dependencies in a directory under ``cache_dir``
whose tree is exactly what the artifact must hold, so packing it is
deterministic.

Why it is fast on a redeploy: dependencies are installed once per *dependency
key* (sha256 of the lockfile or requirements, the runtime's major version and
the platform) into ``cache_dir/deps/<key>`` and hardlinked into the staging
directory; the staging directory itself is kept between builds and synced
(unchanged files are left alone, stale ones removed). A one-line source change
therefore costs a stat walk and one file copy, not an ``npm ci``.

Layout under ``cache_dir``::

    builds/<app>/          the staged tree (``BuildResult.root``), reused
    builds/.<app>.lock     serialises builds of one app
    deps/npm-<key>/        node_modules/ + the lockfile npm used
    deps/pip-<key>/        .python_packages/ (``pip install --target``)

Dependencies are installed in isolation from the app's source (only the
manifest and lockfile are copied), so the cache entry depends on nothing but
its key; the root package's own npm lifecycle scripts do not run there.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import importlib.util
import json
import os
import platform
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import tomllib
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import ValidationError

from aether.artifacts.ignore import IGNORE_FILE, IgnoreRules
from aether.artifacts.sbom import make_bom, npm_sbom, python_sbom
from aether.errors import BadRequestError
from aether.model.app import APP_NAME_RE, AppSpec, Runtime

__all__ = [
    "NODE_MODULES",
    "PYTHON_VENDOR_DIR",
    "BuildResult",
    "build",
    "detect_runtime",
]

#: Where pip installs Python dependencies inside the artifact. Not matched by the
#: packer's default ignores (unlike ``.venv``), and the name Azure Functions uses
#: for the same purpose, so it is recognisable.
PYTHON_VENDOR_DIR = ".python_packages"
NODE_MODULES = "node_modules"

_LOCKFILES = ("npm-shrinkwrap.json", "package-lock.json")  # npm's precedence order
_NPM_DEP_FIELDS = (
    "dependencies",
    "optionalDependencies",
    "peerDependencies",
    "bundleDependencies",
    "bundledDependencies",
    "overrides",
)
_KEY_VERSION = 1
_TAIL_LINES = 25
_STALE_TMP_SECONDS = 24 * 3600


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
class _Plan:
    """What one runtime contributes before anything is installed."""

    defaults: dict[str, Any]
    exclude: tuple[str, ...]  # extra ignore patterns for the source copy
    deps_dir: str | None  # name of the dependency directory inside the artifact
    app_version: str | None


class _Log:
    def __init__(self, progress: Callable[[str], None] | None) -> None:
        self.lines: list[str] = []
        self._progress = progress

    def __call__(self, line: str) -> None:
        self.lines.append(line)
        if self._progress is not None:
            self._progress(line)


# --------------------------------------------------------------------------- detection


def detect_runtime(source: Path) -> Runtime | None:
    """The runtime implied by the files at ``source``'s root; None means "a plain command"."""
    if (source / "package.json").is_file():
        return "node"
    if (source / "pyproject.toml").is_file() or (source / "requirements.txt").is_file():
        return "python"
    if _static_dir(source) is not None:
        return "static"
    return None


def _static_dir(source: Path) -> str | None:
    if (source / "index.html").is_file():
        return "."
    if (source / "public" / "index.html").is_file():
        return "public"
    return None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise BadRequestError(f"{path} is not valid TOML: {exc}") from None


def _read_json_object(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequestError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequestError(f"{path} must hold a JSON object")
    return data


def _procfile_web(source: Path) -> str | None:
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


def _derive_name(source: Path, runtime: Runtime) -> str:
    candidates: list[str] = []
    if runtime == "node" and (source / "package.json").is_file():
        pkg_name = _read_json_object(source / "package.json").get("name")
        if isinstance(pkg_name, str):
            candidates.append(pkg_name)
    if runtime == "python":
        project = _read_toml(source / "pyproject.toml").get("project")
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


# --------------------------------------------------------------------------- subprocesses


def _run(cmd: list[str], *, cwd: Path, env: Mapping[str, str], say: _Log) -> None:
    """Run a package manager, streaming its output to the log; build_failed on error."""
    shown = " ".join(shlex.quote(c) for c in cmd)
    say(f"$ {shown}")
    tail: deque[str] = deque(maxlen=_TAIL_LINES)
    try:
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
    except FileNotFoundError:
        raise BadRequestError(
            f"cannot run {shown}: {cmd[0]} not found on PATH"
            + (
                " (install Node.js and npm, e.g. `apt-get install nodejs npm`)"
                if "npm" in cmd[0]
                else ""
            ),
            code="build_failed",
        ) from None
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip()
            if line:
                tail.append(line)
                say(line)
        code = proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if code != 0:
        raise BadRequestError(
            f"build failed: `{shown}` exited with code {code}; last output:\n" + "\n".join(tail),
            code="build_failed",
        )


def _node_major() -> str:
    try:
        out = subprocess.run(
            ["node", "--version"], capture_output=True, text=True, check=True, timeout=30
        ).stdout.strip()
    except FileNotFoundError:
        raise BadRequestError(
            "node not found on PATH: Node.js apps are built with the local node and npm "
            "(install them, e.g. `apt-get install nodejs npm`)",
            code="build_failed",
        ) from None
    except (subprocess.SubprocessError, OSError) as exc:
        raise BadRequestError(f"`node --version` failed: {exc}", code="build_failed") from None
    return out.lstrip("v").split(".")[0]


def _pip_python() -> tuple[str, str]:
    """The interpreter whose pip installs dependencies, and its ``major.minor``.

    The developer's own Python (the one running aether) when it has pip; else
    ``python3`` from PATH (a venv created without pip).
    """
    if importlib.util.find_spec("pip") is not None:
        return sys.executable, f"{sys.version_info[0]}.{sys.version_info[1]}"
    python = shutil.which("python3")
    if python is not None:
        probe = subprocess.run(
            [python, "-c", "import pip, sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
        )
        if probe.returncode == 0:
            return python, probe.stdout.strip()
    raise BadRequestError(
        "no pip found: neither this Python nor python3 on PATH can run `-m pip` "
        "(install it, e.g. `apt-get install python3-pip`)",
        code="build_failed",
    )


def _platform_tag() -> str:
    return f"{sys.platform}-{platform.machine()}"


def _sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _key(parts: Mapping[str, Any]) -> str:
    blob = json.dumps({"v": _KEY_VERSION, **parts}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


# --------------------------------------------------------------------------- dependency cache


def _prune_stale_tmp(deps_root: Path) -> None:
    now = time.time()
    for child in deps_root.glob(".tmp-*"):
        with contextlib.suppress(OSError):
            if now - child.stat().st_mtime > _STALE_TMP_SECONDS:
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


def _install_node(
    source: Path, pkg: dict[str, Any], cache_dir: Path, say: _Log
) -> tuple[Path | None, Path | None, bool]:
    """(cache entry with node_modules, lockfile npm used, cached?) for a node app."""
    lockfile = next((source / n for n in _LOCKFILES if (source / n).is_file()), None)
    if not any(pkg.get(f) for f in _NPM_DEP_FIELDS[:5]):
        say("no dependencies in package.json: nothing to install")
        return None, lockfile, False
    node_major = _node_major()
    npmrc = source / ".npmrc"
    key = _key(
        {
            "kind": "npm",
            "lock": [lockfile.name, _sha256_file(lockfile)] if lockfile else None,
            "deps": {f: pkg[f] for f in _NPM_DEP_FIELDS if f in pkg},
            "npmrc": _sha256_file(npmrc) if npmrc.is_file() else None,
            "node": node_major,
            "platform": _platform_tag(),
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
        _run(cmd, cwd=work, env=_npm_env(), say=say)
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


def _python_requirements(source: Path) -> tuple[list[str], dict[str, Any]]:
    """(pip arguments, key parts) naming what to install for a python app."""
    req = source / "requirements.txt"
    if req.is_file():
        files = _requirement_files(req)
        parts = {"requirements": [[p.name, _sha256_file(p)] for p in files]}
        lines = [
            line.strip()
            for f in files
            for line in f.read_text(encoding="utf-8", errors="replace").splitlines()
        ]
        if not any(line and not line.startswith("#") for line in lines):
            return [], parts
        return ["-r", str(req)], parts
    pyproject = _read_toml(source / "pyproject.toml")
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


def _install_python(
    source: Path, cache_dir: Path, python: str, py_version: str, say: _Log
) -> tuple[Path | None, bool]:
    """(cache entry holding the vendor dir, cached?) for a python app."""
    args, parts = _python_requirements(source)
    if not args:
        say("no Python dependencies to install")
        return None, False
    key = _key({"kind": "pip", **parts, "python": py_version, "platform": _platform_tag()})
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
        _run(cmd, cwd=source, env=env, say=say)
        target.mkdir(exist_ok=True)
        _remove_bytecode(target)
        _fix_script_shebangs(target / "bin")
    return entry, False


# --------------------------------------------------------------------------- staging


@dataclass(frozen=True, slots=True)
class _Want:
    kind: Literal["dir", "file", "symlink"]
    src: str = ""
    link: bool = False  # hardlink from the cache instead of copying
    target: str = ""


def _walk(
    root: Path, prefix: str, rules: IgnoreRules | None, out: dict[str, _Want], link: bool
) -> None:
    """Add ``root``'s tree (not following symlinks) to ``out`` under ``prefix``."""
    pending = [""]
    while pending:
        rel_dir = pending.pop()
        with os.scandir(root / rel_dir if rel_dir else root) as it:
            children = list(it)
        for child in children:
            rel = f"{rel_dir}/{child.name}" if rel_dir else child.name
            st = child.stat(follow_symlinks=False)
            is_dir = stat.S_ISDIR(st.st_mode)
            if rules is not None and rules.is_ignored(rel, is_dir=is_dir):
                continue
            dest = f"{prefix}{rel}"
            if is_dir:
                out[dest] = _Want("dir")
                pending.append(rel)
            elif stat.S_ISREG(st.st_mode):
                out[dest] = _Want("file", src=child.path, link=link)
            elif stat.S_ISLNK(st.st_mode):
                out[dest] = _Want("symlink", target=os.readlink(child.path))
            else:
                raise BadRequestError(
                    f"{root / rel} is a special file (device, fifo or socket); apps hold only "
                    f"files, directories and symlinks (add it to {IGNORE_FILE})",
                    code="special_file",
                )


def _same_bytes(a: str, b: str) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            chunk_a, chunk_b = fa.read(1 << 16), fb.read(1 << 16)
            if chunk_a != chunk_b:
                return False
            if not chunk_a:
                return True


def _up_to_date(want: _Want, have: os.stat_result, staged: str) -> bool:
    """Whether the staged file already equals ``want.src``, without reading it if possible.

    Dependencies are hardlinked, so the same inode proves equality; a link to
    another inode (an older cache entry) is replaced, and only a private copy (a
    filesystem without hardlinks) is compared byte for byte: npm gives every
    extracted file the same mtime, so size and mtime prove nothing there. Source
    files are copies: equal size, mtime and exec bit, and a source ctime older
    than the copy (ctime cannot be set by tools, unlike mtime, which ``tar`` or
    ``touch -r`` restore) mean it was not rewritten since.
    """
    src = os.stat(want.src, follow_symlinks=False)
    if (src.st_dev, src.st_ino) == (have.st_dev, have.st_ino):
        return True
    if (src.st_mode & 0o111) != (have.st_mode & 0o111) or src.st_size != have.st_size:
        return False
    if want.link:
        return have.st_nlink == 1 and _same_bytes(want.src, staged)
    return (
        have.st_nlink == 1
        and src.st_mtime_ns == have.st_mtime_ns
        and src.st_ctime_ns < have.st_ctime_ns
    )


def _place_file(want: _Want, dest: Path) -> None:
    """Put ``want.src`` at ``dest`` without ever writing into an existing inode."""
    with contextlib.suppress(FileNotFoundError):
        dest.unlink()
    if want.link:
        try:
            os.link(want.src, dest, follow_symlinks=False)
            return
        except OSError:
            pass  # another filesystem, or no hardlinks there: copy
    tmp = dest.with_name(f".{dest.name}.aether-tmp")
    shutil.copy2(want.src, tmp, follow_symlinks=False)
    os.replace(tmp, dest)


def _remove(path: Path, is_dir: bool) -> None:
    if is_dir:
        shutil.rmtree(path)
    else:
        path.unlink()


def _sync(staging: Path, wanted: dict[str, _Want]) -> tuple[int, int]:
    """Make ``staging`` hold exactly ``wanted``; returns (files written, entries removed)."""
    staging.mkdir(parents=True, exist_ok=True)
    existing: dict[str, os.stat_result] = {}
    removed = 0
    pending = [""]
    while pending:
        rel_dir = pending.pop()
        with os.scandir(staging / rel_dir if rel_dir else staging) as it:
            children = list(it)
        for child in children:
            rel = f"{rel_dir}/{child.name}" if rel_dir else child.name
            st = child.stat(follow_symlinks=False)
            is_dir = stat.S_ISDIR(st.st_mode)
            want = wanted.get(rel)
            kind = "dir" if is_dir else "file" if stat.S_ISREG(st.st_mode) else "other"
            if stat.S_ISLNK(st.st_mode):
                kind = "symlink"
            if want is None or want.kind != kind:
                _remove(Path(child.path), is_dir)
                removed += 1
                continue
            existing[rel] = st
            if is_dir:
                pending.append(rel)
    written = 0
    for rel in sorted(wanted):  # parents sort before their children
        want = wanted[rel]
        dest = staging / rel
        have = existing.get(rel)
        if want.kind == "dir":
            if have is None:
                dest.mkdir()
        elif want.kind == "symlink":
            if have is None or os.readlink(dest) != want.target:
                with contextlib.suppress(FileNotFoundError):
                    dest.unlink()
                os.symlink(want.target, dest)
                written += 1
        elif have is None or not _up_to_date(want, have, str(dest)):
            _place_file(want, dest)
            written += 1
    return written, removed


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


# --------------------------------------------------------------------------- runtimes


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


def _plan_node(source: Path, pkg: dict[str, Any], procfile: str | None) -> _Plan:
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
    return _Plan(
        defaults={"start": start} if start else {},
        exclude=(f"{NODE_MODULES}/",),
        deps_dir=NODE_MODULES,
        app_version=version if isinstance(version, str) else None,
    )


def _plan_python(source: Path, procfile: str | None, py_version: str) -> _Plan:
    pythonpath = [PYTHON_VENDOR_DIR]
    project = _read_toml(source / "pyproject.toml").get("project")
    if (source / "pyproject.toml").is_file() and (source / "src").is_dir():
        pythonpath.append("src")  # src layout: the app's own package lives there
    version = project.get("version") if isinstance(project, dict) else None
    return _Plan(
        defaults={
            **({"start": procfile} if procfile else {}),
            "env": {"PYTHONPATH": ":".join(pythonpath), "AETHER_PYTHON_VERSION": py_version},
        },
        exclude=(f"/{PYTHON_VENDOR_DIR}/",),
        deps_dir=PYTHON_VENDOR_DIR,
        app_version=version if isinstance(version, str) else None,
    )


def _plan_static(source: Path, port_env: str) -> _Plan:
    directory = _static_dir(source) or "."
    start = (
        f'python3 -m http.server "${port_env}" --bind 127.0.0.1 '
        f"--directory {shlex.quote(directory)}"
    )
    return _Plan(
        defaults={"start": start, "health": "/"}, exclude=(), deps_dir=None, app_version=None
    )


def _spec(
    toml: dict[str, Any], plan: _Plan, *, name: str, runtime: Runtime, where: Path
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


# --------------------------------------------------------------------------- build


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
    say = _Log(progress)
    toml_path = source / "aether.toml"
    toml = _read_toml(toml_path)
    procfile = _procfile_web(source)

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
        app = _derive_name(source, runtime)
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
        pkg = _read_json_object(source / "package.json")
        plan = _plan_node(source, pkg, procfile)
    elif runtime == "python":
        python, py_version = _pip_python()
        plan = _plan_python(source, procfile, py_version)
    elif runtime == "static":
        port_env = toml.get("port_env", "PORT")
        plan = _plan_static(source, port_env if isinstance(port_env, str) else "PORT")
    else:
        plan = _Plan(
            defaults={"start": procfile} if procfile else {},
            exclude=(),
            deps_dir=None,
            app_version=None,
        )
    spec = _spec(toml, plan, name=app, runtime=runtime, where=toml_path if toml else source)

    staging = cache_dir / "builds" / app
    with _locked(cache_dir / "builds" / f".{app}.lock"):
        entry: Path | None = None
        lockfile: Path | None = None
        cached = False
        if runtime == "node":
            entry, lockfile, cached = _install_node(source, pkg, cache_dir, say)
        elif runtime == "python" and (
            (source / "requirements.txt").is_file() or (source / "pyproject.toml").is_file()
        ):
            entry, cached = _install_python(source, cache_dir, python, py_version, say)

        excluded = [f"/{IGNORE_FILE}", *plan.exclude]
        with contextlib.suppress(ValueError):
            inside = cache_dir.relative_to(source)
            excluded.append(f"/{inside.as_posix()}/")
        rules = IgnoreRules.for_root(source, excluded)
        wanted: dict[str, _Want] = {}
        _walk(source, "", rules, wanted, link=False)
        if entry is not None and plan.deps_dir and (entry / plan.deps_dir).is_dir():
            wanted[plan.deps_dir] = _Want("dir")
            _walk(entry / plan.deps_dir, f"{plan.deps_dir}/", None, wanted, link=True)
        written, removed = _sync(staging, wanted)
        say(f"staged {len(wanted)} entries in {staging} ({written} written, {removed} removed)")

        bom: dict[str, Any] | None = None
        if sbom:
            if runtime == "node" and lockfile is not None and lockfile.is_file():
                bom = npm_sbom(lockfile, app=app, version=plan.app_version, installed_root=staging)
            elif runtime == "python":
                bom = python_sbom(staging / PYTHON_VENDOR_DIR, app=app, version=plan.app_version)
            else:
                bom = make_bom(app, [], version=plan.app_version, runtime=runtime)
            say(f"sbom: {len(bom['components'])} components")
    return BuildResult(
        root=staging, runtime=runtime, spec=spec, sbom=bom, cached=cached, log=say.lines
    )
