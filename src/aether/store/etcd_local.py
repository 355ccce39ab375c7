"""A real etcd cluster of local members on loopback ports: `aether up --ha`, tests, benchmarks.

Uses Debian's ``etcd-server`` (``/usr/bin/etcd``). Data lives on tmpfs when
available so each raft write's fsync is cheap; ``stop``/``start`` of one member
let chaos tests kill a member and bring it back with its data, ``freeze``/``thaw``
SIGSTOP and SIGCONT one.

``tls=True`` serves the client port over HTTPS with certificates made for the
occasion (:func:`make_pki`: a CA, a server certificate for 127.0.0.1/localhost,
a client certificate); ``client_cert_auth=True`` also requires the client
certificate (mutual TLS). :meth:`EtcdCluster.enable_auth` turns on etcd's
authentication with a ``root`` user through ``etcdctl`` (Debian's ``etcd-client``).
"""

from __future__ import annotations

import datetime
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from aether.ports import free_port
from aether.trust.ca import CA_KEY_USAGE, host_names

__all__ = ["EtcdCluster", "Pki", "etcd_binary", "etcdctl_binary", "make_pki"]

INSTALL_HINT = "install with: apt-get install -y etcd-server etcd-client"


def etcd_binary() -> str:
    """The etcd server binary; raises RuntimeError with the install hint if missing."""
    path = shutil.which("etcd") or ("/usr/bin/etcd" if os.path.exists("/usr/bin/etcd") else None)
    if path is None:
        raise RuntimeError(f"etcd not found; {INSTALL_HINT}")
    return path


def etcdctl_binary() -> str:
    """The etcdctl binary; raises RuntimeError with the install hint if missing."""
    path = shutil.which("etcdctl") or (
        "/usr/bin/etcdctl" if os.path.exists("/usr/bin/etcdctl") else None
    )
    if path is None:
        raise RuntimeError(f"etcdctl not found; {INSTALL_HINT}")
    return path


@dataclass(frozen=True)
class Pki:
    """PEM files made by :func:`make_pki` (keys are unencrypted, mode 0600)."""

    ca_file: Path
    ca_key_file: Path
    server_cert_file: Path
    server_key_file: Path
    client_cert_file: Path
    client_key_file: Path


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _certificate(
    name: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    *,
    usages: tuple[x509.ObjectIdentifier, ...] = (),
    hosts: tuple[str, ...] = (),
) -> x509.Certificate:
    issuer_name, issuer_key = issuer if issuer is not None else (name, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
    if hosts:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(host_names(hosts)), critical=False
        )
    if issuer is None:
        builder = builder.add_extension(CA_KEY_USAGE, critical=True)
    return builder.sign(issuer_key, hashes.SHA256())


def make_pki(directory: Path, *, name: str = "aether-etcd") -> Pki:
    """A fresh CA, a server certificate for 127.0.0.1/localhost and a client certificate.

    The server certificate is also good for client authentication (etcd's gateway
    dials its own gRPC port with it under ``--client-cert-auth``), and the client
    certificate has no Common Name: with authentication on, etcd's gateway refuses
    a client certificate that names one (it would be taken for an etcd user).
    """
    directory.mkdir(parents=True, exist_ok=True)

    def cn(text: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate(cn(f"{name} CA"), ca_key, None)
    issuer = (ca.subject, ca_key)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _certificate(
        cn(f"{name} server"),
        server_key,
        issuer,
        usages=(ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH),
        hosts=("127.0.0.1", "localhost"),
    )
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = _certificate(
        x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"{name} client")]),
        client_key,
        issuer,
        usages=(ExtendedKeyUsageOID.CLIENT_AUTH,),
    )
    pki = Pki(
        ca_file=directory / "ca.pem",
        ca_key_file=directory / "ca-key.pem",
        server_cert_file=directory / "server.pem",
        server_key_file=directory / "server-key.pem",
        client_cert_file=directory / "client.pem",
        client_key_file=directory / "client-key.pem",
    )
    pem = serialization.Encoding.PEM
    pki.ca_file.write_bytes(ca.public_bytes(pem))
    _write_key(pki.ca_key_file, ca_key)
    pki.server_cert_file.write_bytes(server.public_bytes(pem))
    _write_key(pki.server_key_file, server_key)
    pki.client_cert_file.write_bytes(client.public_bytes(pem))
    _write_key(pki.client_key_file, client_key)
    return pki


@dataclass
class _Member:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    scheme: str = "http"

    @property
    def client_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"


@dataclass
class EtcdCluster:
    """``size`` etcd members; start with :meth:`start`, end with :meth:`stop`."""

    size: int = 3
    heartbeat_ms: int = 50
    election_ms: int = 500
    members: list[_Member] = field(default_factory=list)
    # where the members keep their data; None: a new directory on tmpfs, deleted by stop()
    root: Path | None = None
    # fixed ports (client base+2i, peer base+2i+1), so a kept data dir restarts; None: free ones
    base_port: int | None = None
    # HTTPS on the client port with certificates from make_pki (in ROOT/pki); see self.pki
    tls: bool = False
    # with tls: members also require a client certificate signed by the CA (mutual TLS)
    client_cert_auth: bool = False
    # etcd's --auth-token ("simple" or "jwt,...") and --auth-token-ttl (seconds); None: etcd's
    auth_token: str | None = None
    auth_token_ttl: int | None = None
    pki: Pki | None = None
    # set by enable_auth: the root user's password, which etcdctl then needs
    root_password: str | None = None
    _root: Path | None = None
    _owned: bool = False

    def __post_init__(self) -> None:
        if self.root is None:
            base = (
                "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
            )
            self._root = Path(tempfile.mkdtemp(prefix="aether-etcd-", dir=base))
            self._owned = True
        else:
            self._root = self.root
            self._root.mkdir(parents=True, exist_ok=True)
        token = "aether-" + self._root.name
        if self.client_cert_auth and not self.tls:
            raise ValueError("client_cert_auth needs tls=True")
        if self.tls and self.pki is None:
            self.pki = make_pki(self._root / "pki")
        for i in range(self.size):
            self.members.append(
                _Member(
                    name=f"m{i}",
                    client_port=free_port() if self.base_port is None else self.base_port + 2 * i,
                    peer_port=free_port() if self.base_port is None else self.base_port + 2 * i + 1,
                    data_dir=self._root / f"m{i}",
                    log_path=self._root / f"m{i}.log",
                    scheme="https" if self.tls else "http",
                )
            )
        self._initial_cluster = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        self._token = token

    @property
    def endpoints(self) -> list[str]:
        return [m.client_url for m in self.members]

    @property
    def url(self) -> str:
        """An ``etcd://`` (``etcds://`` with TLS) state store URL naming every member."""
        scheme = "etcds" if self.tls else "etcd"
        return f"{scheme}://" + ",".join(f"127.0.0.1:{m.client_port}" for m in self.members)

    def _verify(self) -> ssl.SSLContext | bool:
        """What a client of the members passes as httpx's ``verify``."""
        if self.pki is None:
            return True
        context = ssl.create_default_context(cafile=str(self.pki.ca_file))
        if self.client_cert_auth:
            context.load_cert_chain(self.pki.client_cert_file, self.pki.client_key_file)
        return context

    def start(self, timeout: float = 20.0) -> EtcdCluster:
        binary = etcd_binary()
        for member in self.members:
            self._spawn(binary, member)
        self.wait_healthy(timeout)
        return self

    def command(self, index: int) -> list[str]:
        """The command line that starts member ``index`` (on its data, if it has some)."""
        return self._args(etcd_binary(), self.members[index])

    def _args(self, binary: str, member: _Member) -> list[str]:
        state = "existing" if member.data_dir.exists() else "new"
        args = [
            binary,
            "--name", member.name,
            "--data-dir", str(member.data_dir),
            "--listen-client-urls", member.client_url,
            "--advertise-client-urls", member.client_url,
            "--listen-peer-urls", member.peer_url,
            "--initial-advertise-peer-urls", member.peer_url,
            "--initial-cluster", self._initial_cluster,
            "--initial-cluster-state", state,
            "--initial-cluster-token", self._token,
            "--heartbeat-interval", str(self.heartbeat_ms),
            "--election-timeout", str(self.election_ms),
            "--logger", "zap",
            "--log-level", "warn",
            "--bcrypt-cost", "4",  # only passwords of local test clusters are hashed here
        ]  # fmt: skip
        if self.pki is not None:
            args += [
                "--cert-file", str(self.pki.server_cert_file),
                "--key-file", str(self.pki.server_key_file),
            ]  # fmt: skip
            if self.client_cert_auth:
                args += ["--client-cert-auth", "--trusted-ca-file", str(self.pki.ca_file)]
        if self.auth_token is not None:
            args += ["--auth-token", self.auth_token]
        if self.auth_token_ttl is not None:
            args += ["--auth-token-ttl", str(self.auth_token_ttl)]
        return args

    def _spawn(self, binary: str, member: _Member) -> None:
        args = self._args(binary, member)
        log = member.log_path.open("ab")
        try:
            member.process = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        finally:
            log.close()

    def wait_healthy(self, timeout: float = 20.0, members: list[_Member] | None = None) -> None:
        """Block until every (running) member reports health with a leader."""
        deadline = time.monotonic() + timeout
        pending = [m for m in (members or self.members) if m.process is not None]
        verify = self._verify()
        while pending:
            member = pending[0]
            if member.process is not None and member.process.poll() is not None:
                raise RuntimeError(
                    f"etcd member {member.name} exited with {member.process.returncode}:\n"
                    + member.log_path.read_text(errors="replace")[-4000:]
                )
            try:
                r = httpx.get(f"{member.client_url}/health", timeout=1.0, verify=verify)
                if r.status_code == 200 and r.json().get("health") == "true":
                    pending.pop(0)
                    continue
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"etcd member {member.name} not healthy after {timeout}s")
            time.sleep(0.05)

    def kill(self, index: int) -> None:
        """``kill -9`` one member (its data stays for :meth:`restart`)."""
        member = self.members[index]
        if member.process is not None and member.process.poll() is None:
            member.process.send_signal(signal.SIGKILL)
            member.process.send_signal(signal.SIGCONT)  # a frozen member dies too
            member.process.wait()
        member.process = None

    def freeze(self, index: int) -> None:
        """SIGSTOP one member: its connections stay open but it answers nothing."""
        member = self.members[index]
        if member.process is None or member.process.poll() is not None:
            raise RuntimeError(f"etcd member {member.name} is not running")
        member.process.send_signal(signal.SIGSTOP)

    def thaw(self, index: int) -> None:
        """SIGCONT a member :meth:`freeze` stopped (harmless on a running one)."""
        member = self.members[index]
        if member.process is not None and member.process.poll() is None:
            member.process.send_signal(signal.SIGCONT)

    def etcdctl(self, *args: str, user: str | None = None) -> str:
        """Run ``etcdctl`` against every member (TLS and, once enabled, root auth applied)."""
        argv = [etcdctl_binary(), "--endpoints", ",".join(self.endpoints)]
        if self.pki is not None:
            argv += ["--cacert", str(self.pki.ca_file)]
            if self.client_cert_auth:
                argv += [
                    "--cert", str(self.pki.client_cert_file),
                    "--key", str(self.pki.client_key_file),
                ]  # fmt: skip
        if user is not None:
            argv += ["--user", user]
        elif self.root_password is not None:
            argv += ["--user", f"root:{self.root_password}"]
        env = {**os.environ, "ETCDCTL_API": "3"}
        result = subprocess.run(
            [*argv, *args], capture_output=True, text=True, env=env, timeout=30, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"etcdctl {' '.join(args)} failed ({result.returncode}): "
                + (result.stderr or result.stdout).strip()
            )
        return result.stdout

    def enable_auth(self, password: str) -> None:
        """Create the ``root`` user with ``password`` and turn etcd's authentication on."""
        self.etcdctl("user", "add", f"root:{password}")
        self.etcdctl("auth", "enable")
        self.root_password = password

    def restart(self, index: int, timeout: float = 20.0, *, wait: bool = True) -> None:
        """Start a killed member again on its old data (``wait``: until it is healthy)."""
        member = self.members[index]
        self._spawn(etcd_binary(), member)
        if wait:
            self.wait_healthy(timeout, [member])

    def respawn(self, index: int) -> subprocess.Popen[bytes]:
        """Start member ``index`` again without waiting (a supervisor's restart); its process."""
        member = self.members[index]
        self._spawn(etcd_binary(), member)
        assert member.process is not None
        return member.process

    def leader(self) -> int:
        """The index of the current raft leader (asks the running members)."""
        verify = self._verify()
        for member in self.members:
            if member.process is None:
                continue
            try:
                r = httpx.post(
                    f"{member.client_url}/v3/maintenance/status", json={}, timeout=2, verify=verify
                )
                status = r.json()
            except (httpx.HTTPError, ValueError):
                continue
            leader = status.get("leader")
            for i, m in enumerate(self.members):
                if m.process is None:
                    continue
                r = httpx.post(
                    f"{m.client_url}/v3/maintenance/status", json={}, timeout=2, verify=verify
                )
                if r.json().get("header", {}).get("member_id") == leader:
                    return i
        raise RuntimeError("no etcd leader found")

    def stop(self) -> None:
        """Kill every member; a temporary data directory (no ``root`` given) is deleted too."""
        for index in range(len(self.members)):
            self.kill(index)
        if self._root is not None and self._owned:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None

    def __enter__(self) -> EtcdCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
