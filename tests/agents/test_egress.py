"""The egress guard: hosts by name and glob, every resolved address checked, the
cluster's allowed CIDRs, and the transport that connects to the checked address (and
checks each redirect), against a real server on loopback."""

from __future__ import annotations

import datetime
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from aether.agents.egress import (
    EgressTransport,
    address_refusal,
    check_url,
    host_allowed,
    parse_networks,
)
from aether.errors import EgressDeniedError, ForbiddenError
from tests.support.tool_server import ToolServer, serving, tool_server

LOOPBACK = ["127.0.0.0/8"]


@pytest.fixture
def web() -> Iterator[ToolServer]:
    with tool_server() as server:
        yield server


def test_hosts_match_exactly_or_by_glob_and_an_empty_list_allows_none() -> None:
    assert host_allowed("api.example.com", ["api.example.com"])
    assert host_allowed("API.Example.com.", ["api.example.com"])
    assert host_allowed("a.b.example.com", ["*.example.com"])
    assert not host_allowed("example.com", ["*.example.com"])
    assert not host_allowed("example.com.evil.net", ["*.example.com"])
    assert not host_allowed("api.example.com", [])
    assert host_allowed("anything.net", ["*"])


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("fe80::1%eth0", "link-local"),
        ("10.0.0.5", "private"),
        ("172.16.3.4", "private"),
        ("192.168.1.1", "private"),
        ("fd00::1", "private"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("100.100.100.200", "non-public"),  # shared address space (a metadata address)
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
        ("8.8.8.8", None),
        ("2001:4860:4860::8888", None),
    ],
)
def test_what_each_address_is(address: str, kind: str | None) -> None:
    assert address_refusal(address, []) == kind


def test_the_cluster_s_cidrs_allow_private_addresses() -> None:
    allowed = ["127.0.0.0/8", "10.1.0.0/16"]
    assert address_refusal("127.0.0.1", allowed) is None
    assert address_refusal("10.1.2.3", allowed) is None
    assert address_refusal("10.2.0.1", allowed) == "private"
    assert address_refusal("169.254.169.254", allowed) == "link-local"
    with pytest.raises(ValueError, match="not-a-cidr"):
        parse_networks(["not-a-cidr"])


async def test_check_url_refuses_a_host_not_listed_and_any_non_public_address() -> None:
    with pytest.raises(EgressDeniedError, match="not among the policy's egress hosts") as info:
        await check_url("https://8.8.8.8/x", allowed_hosts=["api.example.com"], allow_private=[])
    assert isinstance(info.value, ForbiddenError) and info.value.code == "egress_denied"
    assert info.value.status == 403
    with pytest.raises(EgressDeniedError, match="none"):
        await check_url("https://8.8.8.8/x", allowed_hosts=[], allow_private=[])
    for url in (
        "http://169.254.169.254/latest/meta-data",
        "http://127.0.0.1:9/",
        "http://localhost:9/",  # a name: what it resolves to counts
        "http://[::1]:9/",
        "http://10.0.0.1/",
    ):
        with pytest.raises(EgressDeniedError, match="address"):
            await check_url(url, allowed_hosts=["*"], allow_private=[])
    await check_url("https://8.8.8.8/x", allowed_hosts=["8.8.8.8"], allow_private=[])
    await check_url("http://127.0.0.1:9/", allowed_hosts=["127.0.0.1"], allow_private=LOOPBACK)
    with pytest.raises(EgressDeniedError, match="http"):
        await check_url("file:///etc/passwd", allowed_hosts=["*"], allow_private=[])
    with pytest.raises(EgressDeniedError, match="does not resolve"):
        await check_url("http://no-such-host.invalid/", allowed_hosts=["*"], allow_private=[])


class _Recording(httpx.AsyncBaseTransport):
    """The real transport, remembering what it was asked to connect to."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.sent: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(request)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_the_transport_connects_to_the_checked_address_keeping_the_host(
    web: ToolServer,
) -> None:
    port = web.url.rsplit(":", 1)[1]
    recording = _Recording()
    transport = EgressTransport(["localhost"], LOOPBACK, inner=recording)
    async with httpx.AsyncClient(transport=transport) as client:
        answer = await client.get(f"http://localhost:{port}/hello")
    assert answer.status_code == 200
    [sent] = recording.sent
    assert sent.url.host in ("127.0.0.1", "::1")  # the IP it checked, not the name
    assert sent.headers["host"] == f"localhost:{port}"
    assert sent.extensions["sni_hostname"] == "localhost"
    assert web.requests[0].headers["host"] == f"localhost:{port}"
    assert str(answer.request.url) == f"http://localhost:{port}/hello"


async def test_a_redirect_is_followed_only_to_a_target_that_passes(web: ToolServer) -> None:
    transport = EgressTransport(["127.0.0.1"], LOOPBACK)
    async with httpx.AsyncClient(transport=transport, follow_redirects=True) as client:
        fine = await client.get(f"{web.url}/redirect", params={"to": f"{web.url}/there"})
        assert fine.status_code == 200 and fine.json()["path"] == "/there"
        with pytest.raises(EgressDeniedError, match=r"169\.254\.169\.254"):
            await client.get(f"{web.url}/redirect", params={"to": "http://169.254.169.254/"})
    assert [r.path for r in web.requests] == ["/redirect", "/there", "/redirect"]


async def test_the_transport_refuses_before_connecting(web: ToolServer) -> None:
    async with httpx.AsyncClient(transport=EgressTransport(["*"], [])) as client:
        with pytest.raises(EgressDeniedError, match="loopback"):
            await client.get(f"{web.url}/x")
    assert web.requests == []


def _certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for the name ``localhost`` only (not its IP)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    start = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


async def test_https_to_the_pinned_address_checks_the_certificate_of_the_name(
    tmp_path: Path,
) -> None:
    cert_file, key_file = _certificate(tmp_path)
    server = ToolServer()
    trusting = ssl.create_default_context(cafile=str(cert_file))
    with serving(server, tls=(cert_file, key_file)) as url:
        port = url.rsplit(":", 1)[1]
        inner = httpx.AsyncHTTPTransport(verify=trusting)
        transport = EgressTransport(["localhost"], LOOPBACK, inner=inner)
        async with httpx.AsyncClient(transport=transport) as client:
            answer = await client.get(f"https://localhost:{port}/tls")
            assert answer.status_code == 200 and answer.json()["path"] == "/tls"
        # the certificate names localhost, not 127.0.0.1: verified against the name
        ip_only = EgressTransport(
            ["127.0.0.1"], LOOPBACK, inner=httpx.AsyncHTTPTransport(verify=trusting)
        )
        async with httpx.AsyncClient(transport=ip_only) as client:
            with pytest.raises(httpx.ConnectError, match=r"(?i)certificate|hostname|IP address"):
                await client.get(f"https://127.0.0.1:{port}/tls")
