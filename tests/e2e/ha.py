"""Several real ``aether server`` processes on one etcd cluster (the HA layout on one machine).

Three servers share the state store (a real three-member etcd) and one data
directory for the rest (the records database, artifacts): on one machine that
is a shared SQLite file and directory; across machines, PostgreSQL and S3.
Nodes and the CLI get every server's URL and fail over between them.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.cluster import Cluster, free_port, wait_for
from tests.store.etcd_cluster import EtcdCluster

__all__ = ["HaCluster"]


class HaCluster(Cluster):
    def __init__(self, root: Path, *, servers: int = 3, lease_ttl: float = 2.0) -> None:
        super().__init__(root, lease_ttl=lease_ttl)
        self.etcd = EtcdCluster(size=3)
        self.server_urls = [f"http://127.0.0.1:{free_port()}" for _ in range(servers)]
        self.server_procs: dict[int, subprocess.Popen[bytes]] = {}
        self.api = ",".join(self.server_urls)  # nodes and the CLI fail over between them

    def start_servers(self) -> None:
        self.etcd.start()
        self.env["AETHER_STATE_URL"] = self.etcd.url + "/aether"
        for index in range(len(self.server_urls)):
            self.start_server_at(index)  # one after the other: the first migrates the records
        self.env["AETHER_SERVER"] = self.api
        self.env["AETHER_TOKEN"] = self.admin_token

    def start_server_at(self, index: int) -> None:
        url = self.server_urls[index]
        port = url.rsplit(":", 1)[1]
        self.server_procs[index] = self._spawn(
            ["server", "--data-dir", str(self.server_dir), "--port", port],
            f"server{index}.log",
        )
        wait_for(lambda: httpx.get(f"{url}/readyz").status_code == 200, 30, f"server {index}")

    def kill_server_at(self, index: int) -> None:
        self.kill(self.server_procs.pop(index), signal.SIGKILL)

    def live_urls(self) -> list[str]:
        return [self.server_urls[i] for i in sorted(self.server_procs)]

    def api_get(self, path: str) -> Any:
        last: Exception | None = None
        for url in self.live_urls():
            try:
                response = httpx.get(
                    f"{url}/api/v1{path}",
                    headers={"Authorization": f"Bearer {self.admin_token}"},
                    timeout=10,
                )
                response.raise_for_status()
                return response.json()
            except httpx.HTTPError as exc:
                last = exc
        raise AssertionError(f"no server answered GET {path}: {last}")

    def leader_index(self) -> int | None:
        leader = self.api_get("/status")["leader"]
        return self.server_urls.index(leader) if leader in self.server_urls else None

    def stop(self) -> None:
        for proc in list(self.server_procs.values()):
            self.kill(proc, signal.SIGKILL)
        self.server_procs.clear()
        super().stop()
        self.etcd.stop()
