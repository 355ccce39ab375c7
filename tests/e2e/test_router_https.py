"""``aether node --https-port --tls-dir``: a real node's router serves HTTPS per host name."""

from __future__ import annotations

import signal
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

from aether.ports import free_port
from tests.support.certs import TestCA
from tests.support.cluster import Cluster
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hello-python"
HOST = "hello-python.localhost"


def _get(port: int, server_name: str, ca: Path, path: str = "/") -> tuple[int, int, bytes]:
    """(certificate serial, status, body) of one HTTPS GET with ``Host: server_name``."""
    context = ssl.create_default_context(cafile=ca)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=server_name) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        serial = x509.load_der_x509_certificate(der).serial_number
        tls.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {server_name}\r\nConnection: close\r\n\r\n".encode()
        )
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return serial, int(head.split()[1]), body


def test_a_node_serves_https_per_host_and_reloads_on_sighup(
    cluster: Cluster, tmp_path: Path
) -> None:
    ca = TestCA(tmp_path / "ca")
    certs = tmp_path / "tls"
    first = ca.issue(certs, HOST, HOST)
    https = free_port()
    cluster.start_server()
    tls = ["--https-port", str(https), "--tls-dir", str(certs), "--https-host", "127.0.0.1"]
    cluster.start_node("n1", *tls)
    cluster.cli_json("deploy", str(EXAMPLE), "--instances", "1")

    def answered() -> tuple[int, int, bytes] | None:
        got = _get(https, HOST, ca.ca_path)
        return got if got[1] == 200 else None

    serial, _, body = wait_for(answered, 60, "the app over HTTPS")
    assert serial == first and b"hello-python" in body.lower()

    renewed = ca.issue(certs, HOST, HOST)
    cluster.nodes["n1"].send_signal(signal.SIGHUP)  # read now, not at the next check
    wait_for(lambda: _get(https, HOST, ca.ca_path)[0] == renewed, 10, "the renewed certificate")
    assert cluster.nodes["n1"].poll() is None  # SIGHUP did not stop the node

    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        _get(https, "other.localhost", ca.ca_path)
    log = (cluster.root / "n1.log").read_text()
    assert f"plain HTTP on loopback 127.0.0.1:{cluster.router_ports['n1']}" in log
    assert "handshake refused for 'other.localhost'" in log


def test_https_needs_both_flags(tmp_path: Path) -> None:
    node = ["node", "--server", "http://127.0.0.1:9", "--join-token", "x"]
    node += ["--data-dir", str(tmp_path / "n"), "--https-port", "8443"]
    result = subprocess.run(
        [sys.executable, "-m", "aether", *node],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "--https-port PORT and --tls-dir DIR" in result.stderr
