"""Several real ``aether server`` processes on one etcd cluster (the HA layout).

Three servers share the state store (a real three-member etcd). With
``engines="shared-dir"`` they also share one data directory for the rest (a
SQLite records file and the artifact directory: the `aether up --ha` layout);
with ``engines="postgres-s3"`` each server has its own data directory and the
records live on a real PostgreSQL, the artifacts in a bucket of a real
S3-compatible server (the production layout). Nodes and the CLI get every
server's URL and fail over between them.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest

from aether.ports import free_port
from tests.support.cluster import Cluster
from tests.support.etcd import EtcdCluster
from tests.support.postgres import PostgresServer
from tests.support.s3 import s3_server_process
from tests.support.waiting import wait_for

__all__ = ["HaCluster"]


class HaCluster(Cluster):
    def __init__(
        self,
        root: Path,
        *,
        servers: int = 3,
        lease_ttl: float = 2.0,
        engines: Literal["shared-dir", "postgres-s3"] = "shared-dir",
    ) -> None:
        super().__init__(root, lease_ttl=lease_ttl)
        self.engines = engines
        self._engines = contextlib.ExitStack()
        self.etcd = EtcdCluster(size=3)
        self.servers = servers
        self.server_urls: list[str] = []  # chosen once the engines listen (start_servers)
        self.server_procs: dict[int, subprocess.Popen[bytes]] = {}
        self.api = ""  # nodes and the CLI fail over between the servers' URLs

    def start_servers(self, source: Path | None = None) -> None:
        self.etcd.start()
        self.env["AETHER_STATE_URL"] = self.etcd.url + "/aether"
        if self.engines == "postgres-s3":
            postgres = self._engines.enter_context(PostgresServer.launched())
            s3 = self._engines.enter_context(s3_server_process(self.root / "s3"))
            self.env.update(
                {
                    "AETHER_RECORDS_URL": postgres.create_database("aether"),
                    "AETHER_ARTIFACTS_URL": f"s3://{s3.make_bucket('artifacts')}/aether",
                    "AETHER_S3_ENDPOINT_URL": s3.endpoint_url,
                    "AETHER_S3_ACCESS_KEY": s3.access_key,
                    "AETHER_S3_SECRET_KEY": s3.secret_key,
                    "AETHER_S3_REGION": s3.region,
                    # every server has the same secrets key (docs/production.md): it
                    # seals the cluster CA's key and the tenants' secrets
                    "AETHER_SECRETS_KEY_FILE": str(self.root / "secrets.key"),
                }
            )
        # the servers' ports are chosen after etcd and S3 listen: a port chosen earlier is
        # free but not held, and the kernel may hand it to one of them
        self.server_urls = [f"http://127.0.0.1:{free_port()}" for _ in range(self.servers)]
        self.api = ",".join(self.server_urls)
        for index in range(len(self.server_urls)):
            # one after the other: the first migrates the records
            self.start_server_at(index, source)
        self.env["AETHER_SERVER"] = self.api
        self.env["AETHER_TOKEN"] = self.admin_token

    def start_server_at(self, index: int, source: Path | None = None) -> None:
        url = self.server_urls[index]
        port = url.rsplit(":", 1)[1]
        # shared-dir: one data directory; postgres-s3: nothing shared on disk (the first
        # server's directory is where the bootstrap tokens are written)
        data = self.server_dir
        if self.engines == "postgres-s3" and index > 0:
            data = self.root / f"server{index}"
        self.server_procs[index] = self._spawn(
            ["server", "--data-dir", str(data), "--port", port],
            f"server{index}.log",
            source,
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
        self._engines.close()


@contextlib.contextmanager
def stopped_after(cluster: HaCluster, request: pytest.FixtureRequest) -> Iterator[HaCluster]:
    """``cluster``, stopped at the end; its processes' logs printed if the test failed."""
    try:
        yield cluster
    finally:
        cluster.stop()
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            print(cluster.logs())
