"""Running the developer's own tools (npm, pip) and reading their versions."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import platform
import shlex
import shutil
import subprocess
import sys
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aether.artifacts.build.common import KEY_VERSION, TAIL_LINES, BuildLog
from aether.errors import BadRequestError

__all__ = [
    "dependency_key",
    "node_major_version",
    "pip_python",
    "platform_tag",
    "run_tool",
    "sha256_file",
]


def run_tool(cmd: list[str], *, cwd: Path, env: Mapping[str, str], say: BuildLog) -> None:
    """Run a package manager, streaming its output to the log; build_failed on error."""
    shown = " ".join(shlex.quote(c) for c in cmd)
    say(f"$ {shown}")
    tail: deque[str] = deque(maxlen=TAIL_LINES)
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


def node_major_version() -> str:
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


def pip_python() -> tuple[str, str]:
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


def platform_tag() -> str:
    return f"{sys.platform}-{platform.machine()}"


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def dependency_key(parts: Mapping[str, Any]) -> str:
    blob = json.dumps({"v": KEY_VERSION, **parts}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()
