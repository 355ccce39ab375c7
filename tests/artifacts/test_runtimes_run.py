"""Built apps actually serve: pack, extract and start them the way a node does.

A node extracts the artifact, then runs ``/bin/sh -c "exec <start>"`` with
cwd = the extracted app and env = spec.env + PORT + AETHER_* (see
``aether.node.drivers.process``). Doing the same here proves that the staged
tree is complete once it has gone through the canonical packer (e.g. the
vendored Python packages are not dropped, node_modules/.bin links survive,
normalised mtimes break nothing).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from aether.artifacts import pack, safe_extract
from aether.artifacts.build import BuildResult, build
from aether.ports import free_port

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def extract_artifact(result: BuildResult, tmp_path: Path) -> Path:
    archive = tmp_path / "artifact.tar.gz"
    pack(result.root, archive)
    app_dir = tmp_path / "instance" / "app"
    safe_extract(archive, app_dir)
    return app_dir


@contextlib.contextmanager
def running(result: BuildResult, app_dir: Path, instance_id: str) -> Iterator[str]:
    """Start the app like the process driver does; yield its base URL once healthy."""
    spec = result.spec
    port = free_port()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(app_dir)}
    env.update(spec.env)
    env.update({spec.port_env: str(port), "AETHER_INSTANCE_ID": instance_id})
    log = (app_dir.parent / "output.log").open("wb")
    proc = subprocess.Popen(
        ["/bin/sh", "-c", f"exec {spec.start}"],
        cwd=app_dir,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                output = (app_dir.parent / "output.log").read_text(errors="replace")
                pytest.fail(f"{spec.start!r} exited with {proc.returncode}:\n{output}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(url + (spec.health or "/"), timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                output = (app_dir.parent / "output.log").read_text(errors="replace")
                pytest.fail(f"{spec.start!r} not healthy within 30s:\n{output}")
            time.sleep(0.05)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def test_express_app_serves(npm: None, build_cache: Path, tmp_path: Path) -> None:
    result = build(EXAMPLES / "express-app", cache_dir=build_cache)
    app_dir = extract_artifact(result, tmp_path)
    with running(result, app_dir, "express-app@1/0") as url:
        response = httpx.get(url + "/", timeout=5)
        assert response.status_code == 200
        body = response.json()
        assert body["instance"] == "express-app@1/0"
        assert body["message"] == "Hello from Express on Aether"
        assert "uptime" in body
        assert httpx.get(url + "/healthz", timeout=5).text == "ok\n"
        assert httpx.get(url + "/nope", timeout=5).status_code == 404


def test_flask_app_serves(build_cache: Path, tmp_path: Path) -> None:
    result = build(EXAMPLES / "flask-app", cache_dir=build_cache)
    app_dir = extract_artifact(result, tmp_path)
    with running(result, app_dir, "flask-app@3/1") as url:
        response = httpx.get(url + "/", timeout=5)
        assert response.status_code == 200
        assert response.json() == {
            "message": "Hello from Flask on Aether",
            "instance": "flask-app@3/1",
        }


def test_static_site_serves(tmp_path: Path) -> None:
    result = build(EXAMPLES / "static-site", cache_dir=tmp_path / "cache")
    app_dir = extract_artifact(result, tmp_path)
    with running(result, app_dir, "static-site@1/0") as url:
        response = httpx.get(url + "/", timeout=5)
        assert response.status_code == 200
        assert "<h1>Static site on Aether</h1>" in response.text
        assert httpx.get(url + "/style.css", timeout=5).status_code == 200
