"""Real ``aether`` processes (server, nodes, CLI) for end-to-end tests."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, TypeVar

import httpx

from aether.ports import free_port
from tests.support.waiting import wait_for

T = TypeVar("T")


class Cluster:
    def __init__(self, root: Path, *, lease_ttl: float = 3.0) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.api = f"http://127.0.0.1:{self.port}"
        self.server_dir = root / "server"
        self.lease_ttl = lease_ttl
        self.server: subprocess.Popen[bytes] | None = None
        self.nodes: dict[str, subprocess.Popen[bytes]] = {}
        self.router_ports: dict[str, int] = {}
        self.env = {
            **os.environ,
            "XDG_CACHE_HOME": str(root / "cache"),
            "XDG_CONFIG_HOME": str(root / "config"),
            "AETHER_LEASE_TTL": str(lease_ttl),
            "AETHER_TASK_LEASE": "3",
            # the tests' model and tool servers listen on loopback
            "AETHER_EGRESS_ALLOW": "127.0.0.0/8",
        }

    def _spawn(
        self, args: list[str], log: str, source: Path | None = None
    ) -> subprocess.Popen[bytes]:
        """``aether ARGS`` logging to ``log``; ``source``: a checkout whose ``src`` is
        imported instead of this one's (an older release's worktree, with this venv)."""
        out = (self.root / log).open("ab")
        env = self.env if source is None else {**self.env, "PYTHONPATH": str(source / "src")}
        return subprocess.Popen(
            [sys.executable, "-m", "aether", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )

    @property
    def admin_token(self) -> str:
        return (self.server_dir / "admin.token").read_text().strip()

    @property
    def join_token(self) -> str:
        return (self.server_dir / "join.token").read_text().strip()

    def start_server(self, source: Path | None = None) -> None:
        self.server = self._spawn(
            ["server", "--data-dir", str(self.server_dir), "--port", str(self.port)],
            "server.log",
            source,
        )
        wait_for(lambda: httpx.get(f"{self.api}/readyz").status_code == 200, 30, "server ready")
        self.env["AETHER_SERVER"] = self.api
        self.env["AETHER_TOKEN"] = self.admin_token

    def start_node(
        self,
        name: str,
        *extra: str,
        token: str | None = None,
        wait: bool = True,
        source: Path | None = None,
    ) -> None:
        """Start node ``name`` (``extra``: more ``aether node`` arguments; ``source``:
        an older checkout's code, see ``_spawn``)."""
        port = self.router_ports.setdefault(name, free_port())
        self.nodes[name] = self._spawn(
            [
                "node",
                "--server",
                self.api,
                "--join-token",
                token or self.join_token,
                "--data-dir",
                str(self.root / name),
                "--router-port",
                str(port),
                "--id",
                name,
                *extra,
            ],
            f"{name}.log",
            source,
        )
        if wait:
            wait_for(lambda: self.node_state(name) == "ready", 30, f"node {name} ready")

    def node_client(self, name: str, token: str | None = None) -> httpx.Client:
        """A client that calls as node ``name`` does: to a server's node port, over mutual
        TLS with the node's own certificate, with ``token`` (default: its credential)."""
        from aether.trust import tls

        data = self.root / name
        authorities = (data / "cluster-ca.pem").read_text()
        context = tls.client_context(
            [authorities], (data / "node.crt").read_text(), (data / "node.key").read_text()
        )
        credential = token or (data / "node.credential").read_text().strip()
        return httpx.Client(
            base_url=json.loads((data / "servers.json").read_text())[0],
            verify=context,
            headers={"Authorization": f"Bearer {credential}"},
            timeout=10,
        )

    def router(self, name: str) -> str:
        return f"http://127.0.0.1:{self.router_ports[name]}"

    def api_get(self, path: str) -> Any:
        response = httpx.get(
            f"{self.api}/api/v1{path}",
            headers={"Authorization": f"Bearer {self.admin_token}"},
            timeout=10,
        )
        response.raise_for_status()
        return response.json()

    def node_state(self, name: str) -> str | None:
        for node in self.api_get("/nodes"):
            if node["id"] == name:
                return str(node["state"])
        return None

    def active(self, app: str) -> list[dict[str, Any]]:
        return [i for i in self.api_get(f"/instances?app={app}") if i["state"] == "ACTIVE"]

    def cli(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "aether", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"aether {' '.join(args)} exited {result.returncode}\n"
                f"stdout: {result.stdout}\nstderr: {result.stderr}"
            )
        return result

    def cli_json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "--format", "json").stdout)

    @staticmethod
    def kill(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGKILL) -> None:
        if proc is not None and proc.poll() is None:
            try:
                os.kill(proc.pid, sig)
            except ProcessLookupError:
                return
            if sig in (signal.SIGKILL, signal.SIGTERM):
                proc.wait(timeout=15)

    def kill_node(self, name: str) -> None:
        self.kill(self.nodes.pop(name))

    def kill_server(self) -> None:
        self.kill(self.server)
        self.server = None

    def stop(self) -> None:
        for proc in [*self.nodes.values(), self.server]:
            if proc is not None and proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                    proc.wait(timeout=10)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
            for p in sorted(self.root.glob("*.log"))
        )
