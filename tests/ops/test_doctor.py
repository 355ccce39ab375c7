"""``aether doctor`` on this host: the real command, real backends, real files and ports."""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Iterator
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from aether.node.capabilities import criu_check, kvm_usable
from aether.ops.doctor import Check, DoctorOptions, run_checks
from aether.ports import free_port
from aether.server.settings import ServerSettings
from tests.support.certs import TestCA
from tests.support.cli import run_aether
from tests.support.etcd import EtcdCluster
from tests.support.postgres import PostgresServer
from tests.support.redis import redis_server
from tests.support.s3 import s3_server_process

SERVER_ONLY = ("bwrap", "cgroup", "criu", "kvm", "port router", "clock")


def _doctor(home: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, Any]:
    done = run_aether(
        home,
        "doctor",
        "--data-dir",
        str(home / "data"),
        "--port",
        str(free_port()),
        "--router-port",
        str(free_port()),
        *args,
        env=env,
        timeout=60,
    )
    assert not done.stderr.strip() or "Traceback" not in done.stderr, done.stderr
    return done.returncode, done.stdout


def _by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


def _server_checks(tmp_path: Path, **settings: Any) -> dict[str, Check]:
    """The server role's checks for these settings, with no port clash and no node checks."""
    data = tmp_path / "data"
    data.mkdir(mode=0o700, exist_ok=True)
    options = DoctorOptions(
        settings=ServerSettings(data_dir=data, port=free_port(), **settings),
        roles=("server",),
        skip=SERVER_ONLY,
    )
    return _by_name(run_checks(options))


# -- the acceptance: this machine -------------------------------------------------------


def test_this_machine_criu_and_kvm_fail_with_reasons_the_rest_pass(tmp_path: Path) -> None:
    code, out = _doctor(tmp_path, "--format", "json")
    report = json.loads(out)
    checks = {c["name"]: c for c in report["checks"]}
    criu_ok, _ = criu_check()
    kvm_ok = kvm_usable()
    # CRIU and KVM are judged as the node's handshake judges them, with reasons
    assert checks["criu"]["status"] == ("ok" if criu_ok else "fail")
    assert checks["kvm"]["status"] == ("ok" if kvm_ok else "fail")
    for name in ("criu", "kvm"):
        if checks[name]["status"] == "fail":
            assert checks[name]["detail"] and checks[name]["fix"], checks[name]
    if not kvm_ok and os.path.exists("/dev/kvm"):
        assert "/dev/kvm" in checks["kvm"]["detail"]  # it was opened and asked, not just seen
    # everything else passes (or is skipped: no backends configured; cgroup v1 warns)
    others = {n: c["status"] for n, c in checks.items() if n not in ("criu", "kvm")}
    assert "fail" not in others.values(), others
    for name in ("python", "data dir", "disk space", "port api", "bwrap", "port router"):
        assert others[name] == "ok", checks[name]
    for name in ("state store", "records", "redis", "artifacts", "tls api", "clock"):
        assert others[name] == "skip", checks[name]
    assert report["ok"] is (criu_ok and kvm_ok)
    assert code == (0 if report["ok"] else 1)


def test_exit_code_and_text_output(tmp_path: Path) -> None:
    code, out = _doctor(tmp_path, "--skip", "criu", "--skip", "kvm")
    assert code == 0, out
    lines = out.splitlines()
    assert any(line.startswith("ok") and "python" in line for line in lines)
    assert any(line.startswith("skip") and "kvm" in line and "--skip" in line for line in lines)
    assert "0 fail" in lines[-1]

    code, out = _doctor(tmp_path, "--role", "server", "--format", "json")
    names = {c["name"] for c in json.loads(out)["checks"]}
    assert "kvm" not in names and "records" in names
    assert code == 0

    code, _ = _doctor(tmp_path, "--role", "server", env={"AETHER_LEASE_TTL": "nope"})
    assert code == 2  # an invalid setting is a usage error, as for `aether server`

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        code, out = _doctor(
            tmp_path,
            "--role",
            "node",
            "--format",
            "json",
            "--router-port",
            str(port),
            "--skip",
            "criu",
            "--skip",
            "kvm",
        )
    checks = {c["name"]: c for c in json.loads(out)["checks"]}
    assert code == 1
    assert checks["port router"]["status"] == "fail"
    assert (
        f":{port}" in checks["port router"]["detail"] and "ss -ltnp" in checks["port router"]["fix"]
    )


# -- backends ------------------------------------------------------------------------------


def test_postgres_reachable_ok_and_closed_port_fails(tmp_path: Path) -> None:
    with PostgresServer.launched() as pg:
        checks = _server_checks(tmp_path, records_url=pg.url())
        assert checks["records"].status == "ok", checks["records"]
        assert "PostgreSQL" in checks["records"].detail
    closed = f"postgresql+psycopg://aether@127.0.0.1:{free_port()}/x"
    check = _server_checks(tmp_path, records_url=closed)["records"]
    assert check.status == "fail" and "AETHER_RECORDS_URL" in check.fix


def test_redis_reachable_ok_and_closed_port_fails(tmp_path: Path) -> None:
    with redis_server(tmp_path) as url:
        checks = _server_checks(tmp_path, queue_url=url)
        assert checks["redis queue"].status == "ok", checks["redis queue"]
    check = _server_checks(tmp_path, queue_url=f"redis://127.0.0.1:{free_port()}/0")["redis queue"]
    assert check.status == "fail" and "AETHER_QUEUE_URL" in check.fix


def test_etcd_reachable_ok_and_closed_port_fails(tmp_path: Path) -> None:
    with EtcdCluster(size=1) as cluster:
        check = _server_checks(tmp_path, state_url=cluster.url)["state store"]
        assert check.status == "ok", check
    check = _server_checks(tmp_path, state_url=f"etcd://127.0.0.1:{free_port()}")["state store"]
    assert check.status == "fail" and "AETHER_STATE_URL" in check.fix


def test_etcd_over_tls_needs_its_ca(tmp_path: Path) -> None:
    with EtcdCluster(size=1, tls=True) as cluster:
        assert cluster.pki is not None
        ca = str(cluster.pki.ca_file)
        check = _server_checks(tmp_path, state_url=cluster.url, etcd_ca_file=ca)["state store"]
        assert check.status == "ok", check
        check = _server_checks(tmp_path, state_url=cluster.url)["state store"]  # system CAs
        assert check.status == "fail" and "certificate" in check.detail.lower(), check


def test_s3_bucket_ok_missing_bucket_and_closed_port_fail(tmp_path: Path) -> None:
    with s3_server_process(tmp_path / "s3") as s3:
        keys = {
            "s3_endpoint_url": s3.endpoint_url,
            "s3_access_key": s3.access_key,
            "s3_secret_key": s3.secret_key,
        }
        s3.make_bucket("artifacts")
        check = _server_checks(tmp_path, artifacts_url="s3://artifacts/aether/", **keys)
        assert check["artifacts"].status == "ok", check["artifacts"]
        check = _server_checks(tmp_path, artifacts_url="s3://nobucket", **keys)
        assert check["artifacts"].status == "fail", check["artifacts"]
        assert "nobucket" in check["artifacts"].detail
    keys["s3_endpoint_url"] = f"http://127.0.0.1:{free_port()}"
    check = _server_checks(tmp_path, artifacts_url="s3://artifacts", **keys)
    assert (
        check["artifacts"].status == "fail" and "AETHER_S3_ENDPOINT_URL" in check["artifacts"].fix
    )


# -- files -----------------------------------------------------------------------------------


def test_data_dir_writable_by_others_or_owned_by_another_uid_fails(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o777)
    code, out = _doctor(tmp_path, "--role", "server", "--format", "json")
    check = {c["name"]: c for c in json.loads(out)["checks"]}["data dir"]
    assert code == 1 and check["status"] == "fail"
    assert "0777" in check["detail"] and check["fix"] == f"chmod 700 {data.resolve()}"
    data.chmod(0o700)
    if os.geteuid() == 0:  # only root can give a directory away
        os.chown(data, 65534, 65534)
        code, out = _doctor(tmp_path, "--role", "server", "--format", "json")
        check = {c["name"]: c for c in json.loads(out)["checks"]}["data dir"]
        assert check["status"] == "fail" and "uid 65534" in check["detail"]
        assert check["fix"].startswith("chown")


def test_tls_files(tmp_path: Path) -> None:
    ca = TestCA(tmp_path / "ca")
    ca.issue(tmp_path, "api", "localhost")
    ca.issue(tmp_path, "other", "localhost")
    cert, key = tmp_path / "api.crt", tmp_path / "api.key"
    key.chmod(0o644)
    check = _server_checks(tmp_path, tls_cert=str(cert), tls_key=str(key))["tls api"]
    assert check.status == "fail" and check.fix == f"chmod 600 {key}"
    key.chmod(0o600)
    (tmp_path / "other.key").chmod(0o600)
    wrong = _server_checks(tmp_path, tls_cert=str(cert), tls_key=str(tmp_path / "other.key"))
    assert wrong["tls api"].status == "fail" and "does not match" in wrong["tls api"].detail
    good = _server_checks(tmp_path, tls_cert=str(cert), tls_key=str(key))["tls api"]
    assert good.status == "warn" and "expires in" in good.detail  # the test CA's: 1 day


# -- the clock -------------------------------------------------------------------------------


@pytest.fixture
def dated_server() -> Iterator[tuple[str, list[float]]]:
    """A real HTTP server whose Date header is off by ``offset[0]`` seconds."""
    offset = [0.0]

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            import time

            body = b'{"status": "ok"}'
            self.send_response_only(200)
            self.send_header("Date", formatdate(time.time() + offset[0], usegmt=True))
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", offset
    finally:
        server.shutdown()
        server.server_close()


def test_api_port_held_by_an_aether_server_warns(
    tmp_path: Path, dated_server: tuple[str, list[float]]
) -> None:
    url, _ = dated_server  # it answers /healthz as Aether does
    port = int(url.rsplit(":", 1)[1])
    code, out = _doctor(tmp_path, "--role", "server", "--format", "json", "--port", str(port))
    check = {c["name"]: c for c in json.loads(out)["checks"]}["port api"]
    assert check["status"] == "warn" and "already running" in check["detail"]
    assert code == 0


def test_clock_skew_against_the_server(
    tmp_path: Path, dated_server: tuple[str, list[float]]
) -> None:
    url, offset = dated_server
    for skew, status in ((0.0, "ok"), (5.0, "warn"), (-120.0, "fail")):
        offset[0] = skew
        code, out = _doctor(tmp_path, "--role", "server", "--format", "json", "--server", url)
        check = {c["name"]: c for c in json.loads(out)["checks"]}[f"clock {url}"]
        assert check["status"] == status, check
        assert code == (1 if status == "fail" else 0)
    code, out = _doctor(
        tmp_path,
        "--role",
        "server",
        "--format",
        "json",
        "--server",
        f"http://127.0.0.1:{free_port()}",
    )
    clocks = [c for c in json.loads(out)["checks"] if c["name"].startswith("clock ")]
    assert code == 1 and clocks[0]["status"] == "fail" and clocks[0]["fix"]
