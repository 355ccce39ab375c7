"""``aether up`` (what `make run` starts) and ``aether up --ha``, as a user runs them."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from aether.ports import free_port
from tests.support.browser import chromium, new_console, screenshot
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e


def _free_run(count: int) -> int:
    """The first of ``count`` consecutive free loopback ports."""
    for _ in range(50):
        base = free_port()
        if base + count > 65535:
            continue
        ok = True
        for port in range(base, base + count):
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise AssertionError("no run of free ports")


def _up(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen[str], int, int]:
    api, router = _free_run(3), _free_run(2)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AETHER_")},
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
    }
    command = [sys.executable, "-m", "aether", "up", "--demo", "--data-dir", str(tmp_path / "up")]
    proc = subprocess.Popen(
        [*command, "--port", str(api), "--router-port", str(router), *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    return proc, api, router


def _wait_up(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    seen = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if line.startswith("Next:"):
            return "".join(seen)
    raise AssertionError("aether up never came up:\n" + "".join(seen))


def _stop(proc: subprocess.Popen[str]) -> int:
    os.killpg(proc.pid, signal.SIGTERM)
    return proc.wait(30)


def _status(tmp_path: Path, api: str) -> dict[str, object]:
    token = (tmp_path / "up" / "server" / "admin.token").read_text().strip()
    response = httpx.get(
        f"{api}/api/v1/status", headers={"Authorization": f"Bearer {token}"}, timeout=5
    )
    response.raise_for_status()
    data: dict[str, object] = response.json()
    return data


def test_up_demo_serves_and_stops_cleanly(tmp_path: Path) -> None:
    proc, api, router = _up(tmp_path)
    try:
        out = _wait_up(proc)
        assert "1 server(s), 2 node(s)" in out
        assert _status(tmp_path, f"http://127.0.0.1:{api}")["leader"] == f"http://127.0.0.1:{api}"
        answer = httpx.get(f"http://127.0.0.1:{router}/apps/hello-python/", timeout=5)
        assert answer.json()["message"] == "Hello from Aether"
    finally:
        code = _stop(proc)
    assert code == 0


def test_up_prints_the_console_and_it_shows_the_demo_live(tmp_path: Path) -> None:
    """The acceptance of the console: `make run` prints a /ui URL; signing in there with the
    printed token shows the demo app, both nodes and live CPU charts within 15 s."""
    proc, _, _ = _up(tmp_path)
    try:
        out = _wait_up(proc)
        console = re.search(r"console:\s+(http://\S+/ui/)", out)
        token = re.search(r"^\s+admin token (\S+)$", out, re.MULTILINE)
        assert console and token, out
        with chromium() as browser:
            context = new_console(browser)
            page = context.new_page()
            started = time.monotonic()
            page.goto(console.group(1))
            page.fill("#token", token.group(1))
            page.click("#token-form button[type=submit]")
            try:
                page.wait_for_selector("tr[data-app='hello-python']", timeout=15_000)
            except Exception:
                raise AssertionError(page.url + "\n" + page.content()[:5000]) from None
            page.wait_for_selector("tr[data-node='node-1']", timeout=15_000)
            page.wait_for_selector("tr[data-node='node-2']", timeout=15_000)
            charts = page.locator("figure.chart[data-kind='nodes']")
            assert charts.count() == 2
            page.wait_for_function(
                "() => [...document.querySelectorAll('figure.chart[data-kind=nodes]')]"
                ".every(f => Number(f.getAttribute('data-points') || 0) >= 3)",
                timeout=max(1_000, int((15 - (time.monotonic() - started)) * 1000)),
            )
            assert time.monotonic() - started < 15
            screenshot(page, "overview")
            context.close()
    finally:
        code = _stop(proc)
    assert code == 0


def test_up_ha_runs_three_servers_on_etcd(tmp_path: Path) -> None:
    etcd = _free_run(6)
    proc, api, router = _up(tmp_path, "--ha", "--etcd-port", str(etcd))
    try:
        out = _wait_up(proc)
        assert "3 server(s), 2 node(s)" in out and "etcd:" in out
        urls = [f"http://127.0.0.1:{api + i}" for i in range(3)]
        statuses = [_status(tmp_path, url) for url in urls]
        assert len({s["leader"] for s in statuses}) == 1  # one leader, seen by every server
        assert statuses[0]["leader"] in urls
        answer = httpx.get(f"http://127.0.0.1:{router + 1}/apps/hello-python/", timeout=5)
        assert answer.json()["message"] == "Hello from Aether"
        # the state lives in etcd: its members answer on the ports given
        health = httpx.get(f"http://127.0.0.1:{etcd}/health", timeout=5).json()
        assert health["health"] == "true"
        wait_for(lambda: (tmp_path / "up" / "etcd").is_dir(), 5, "etcd data in the data dir")
    finally:
        code = _stop(proc)
    assert code == 0


REPO = Path(__file__).resolve().parents[2]


def _quick_start_commands() -> list[list[str]]:
    """The commands of the README's quick start, in order (the second ``sh`` block)."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = section.split("```sh\n")[2].split("```", 1)[0]
    lines = (shlex.split(line, comments=True) for line in block.splitlines())
    return [words for words in lines if words]  # a comment alone is for the reader


def test_the_readme_quick_start_runs_as_written(tmp_path: Path) -> None:
    proc, api, router = _up(tmp_path)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AETHER_")},
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
    }
    ports = {"7070": str(api), "8080": str(router), "8081": str(router + 1)}
    ran = []
    try:
        _wait_up(proc)
        for words in _quick_start_commands():
            if words[0] == ".":  # the venv: this test runs the package's own interpreter
                continue
            args = [re.sub(r":(7070|8080|8081)\b", lambda m: ":" + ports[m[1]], w) for w in words]
            if args[0] == "aether":
                args = [sys.executable, "-m", "aether", *args[1:]]
            follows = "-f" in words
            try:
                result = subprocess.run(
                    args,
                    cwd=REPO,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=4 if follows else 180,
                )
            except subprocess.TimeoutExpired as stopped:  # `logs -f` follows until stopped
                assert follows, words
                assert "listening on" in (stopped.stdout or b"").decode(), words
                ran.append(words)
                continue
            assert result.returncode == 0, (words, result.stdout, result.stderr)
            ran.append(words)
        assert [w[:2] for w in ran][-2:] == [["aether", "rollback"], ["aether", "apps"]]
        deployments = json.loads(
            subprocess.run(
                [sys.executable, "-m", "aether", "deployments", "hello-python", "--format", "json"],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            ).stdout
        )["deployments"]
        assert (deployments[0]["version"], deployments[0]["rollback_of"]) == (3, 1)
        gone = httpx.get(f"http://127.0.0.1:{router}/apps/static-site/", timeout=5)
        assert gone.status_code == 404
    finally:
        code = _stop(proc)
    assert code == 0


def test_up_tls_serves_the_api_over_https_trusted_through_the_saved_ca(tmp_path: Path) -> None:
    """`aether up --tls`: the API's certificate comes from the cluster CA made for it; the
    session trusts that CA, nodes join over HTTPS, plain HTTP on the API port is refused."""
    proc, api, router = _up(tmp_path, "--tls")
    try:
        out = _wait_up(proc)
        assert f"https://127.0.0.1:{api}/api/v1" in out
        ca_file = tmp_path / "up" / "tls" / "ca.crt"
        config = (tmp_path / "config" / "aether" / "config.toml").read_text()
        assert str(ca_file) in config
        token = (tmp_path / "up" / "server" / "admin.token").read_text().strip()
        status = httpx.get(
            f"https://127.0.0.1:{api}/api/v1/status",
            headers={"Authorization": f"Bearer {token}"},
            verify=str(ca_file),
            timeout=5,
        ).json()
        assert status["leader"] == f"https://127.0.0.1:{api}"
        with pytest.raises(httpx.ConnectError):  # not trusted without the cluster CA
            httpx.get(f"https://127.0.0.1:{api}/readyz", timeout=5)
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{api}/readyz", timeout=5)
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("AETHER_")},
            "XDG_CACHE_HOME": str(tmp_path / "cache"),
            "XDG_CONFIG_HOME": str(tmp_path / "config"),
        }
        nodes = subprocess.run(
            [sys.executable, "-m", "aether", "nodes", "--format", "json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert nodes.returncode == 0, nodes.stderr
        assert sorted(n["id"] for n in json.loads(nodes.stdout)["nodes"]) == ["node-1", "node-2"]
        answer = httpx.get(f"http://127.0.0.1:{router}/apps/hello-python/", timeout=5)
        assert answer.json()["message"] == "Hello from Aether"
    finally:
        code = _stop(proc)
    assert code == 0
