"""The facts ``aether doctor`` judges, gathered by trying each thing on this host.

Each probe returns :class:`~aether.ops.doctor.Check` results; where a verdict is more
than a line it is a pure function in :mod:`aether.ops.doctor`. Probes reuse what the
node reports at its handshake (:mod:`aether.node.capabilities`, the bwrap driver's own
probe) so ``doctor`` and ``aether nodes`` agree. Network probes give up after
``options.timeout`` seconds.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import fcntl
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

from aether.ops.doctor_verdicts import (
    Check,
    DirFacts,
    DoctorOptions,
    KvmFacts,
    clock_verdict,
    data_dir_verdict,
    disk_verdict,
    kvm_verdict,
    port_verdict,
)

__all__ = ["dir_facts", "kvm_facts", "plan", "skew_seconds", "tls_verdict"]

_KVM_GET_API_VERSION = 0xAE00
_KVM_CREATE_VM = 0xAE01
# the settings of a certificate and its key, as environment variables (for the fixes)
_TLS_API = ("AETHER_TLS_CERT", "AETHER_TLS_KEY")
_TLS_CA = ("AETHER_CA_CERT_FILE", "AETHER_CA_KEY_FILE")

Probe = Callable[[], list[Check]]


def plan(options: DoctorOptions) -> list[tuple[str, Probe]]:
    """The checks for ``options``' roles, named (``--skip NAME`` matches these names)."""
    s = options.settings
    steps: list[tuple[str, Probe]] = [
        ("python", _python),
        ("data dir", lambda: [data_dir_verdict(dir_facts(Path(s.data_dir)))]),
        ("disk space", lambda: [_disk(Path(s.data_dir))]),
    ]
    if "server" in options.roles:
        steps.append(("port api", lambda: [_port("api", s.host, s.port, options, api=True)]))
        if s.node_port:
            steps.append(("port node", lambda: [_port("node", s.host, s.node_port, options)]))
        steps += [
            ("tls api", lambda: _tls_pair("tls api", s.tls_cert, s.tls_key, _TLS_API)),
            ("tls ca", lambda: _tls_pair("tls ca", s.ca_cert_file, s.ca_key_file, _TLS_CA)),
            ("state store", lambda: [_state_store(options)]),
            ("records", lambda: [_records(options)]),
            ("redis", lambda: _redis(options)),
            ("artifacts", lambda: [_artifacts(options)]),
        ]
    if "node" in options.roles:
        steps += [
            ("bwrap", _bwrap),
            ("cgroup", _cgroup),
            ("criu", _criu),
            ("kvm", lambda: [kvm_verdict(kvm_facts())]),
            (
                "port router",
                lambda: [_port("router", options.router_host, options.router_port, options)],
            ),
        ]
    steps.append(("clock", lambda: _clocks(options)))
    return steps


# -- the host ---------------------------------------------------------------------------


def _python() -> list[Check]:
    """The interpreter running Aether (the package requires 3.11+, so this one has it)."""
    version = ".".join(str(n) for n in sys.version_info[:3])
    return [Check("python", "ok", f"Python {version} ({sys.executable})")]


def _bwrap() -> list[Check]:
    from aether.node.drivers.bwrap import BwrapDriver

    driver = BwrapDriver()
    if driver.available():
        return [Check("bwrap", "ok", f"a trivial sandbox ran: {driver.mode}")]
    return [
        Check(
            "bwrap",
            "fail",
            driver.reason,
            "apt-get install bubblewrap util-linux; allow user namespaces "
            "(sysctl kernel.unprivileged_userns_clone=1, "
            "kernel.apparmor_restrict_unprivileged_userns=0); or run the node with "
            "--isolation none on a trusted single-tenant machine",
        )
    ]


def _cgroup() -> list[Check]:
    from aether.node.capabilities import cgroup_version

    found = cgroup_version()
    if found == "v2":
        return [Check("cgroup", "ok", "a writable cgroup v2 hierarchy at /sys/fs/cgroup")]
    hybrid = Path("/sys/fs/cgroup/unified/cgroup.controllers").exists()
    what = {"v1": "cgroup v1", "none": "no writable cgroup hierarchy"}[found]
    extra = " (hybrid: cgroup2 only at /sys/fs/cgroup/unified)" if hybrid else ""
    return [
        Check(
            "cgroup",
            "warn",
            f"{what}{extra}: the cgroup_limits feature stays off (limits are rlimits, which "
            "work without cgroups)",
            "boot with systemd.unified_cgroup_hierarchy=1 for cgroup v2 at /sys/fs/cgroup",
        )
    ]


def _criu() -> list[Check]:
    from aether.node.capabilities import criu_check

    usable, detail = criu_check(timeout=10.0)
    if usable:
        return [Check("criu", "ok", f"criu check passed: {detail}")]
    if shutil.which("criu") is None:
        fix = "apt-get install criu (without it, snapshots of stateful apps are cooperative only)"
    else:
        fix = "run `criu check --all` as the node's user and fix what it names (kernel options, "
        fix += "capabilities: the node needs root or CAP_CHECKPOINT_RESTORE)"
    detail = detail.removesuffix(" (apt-get install criu)")
    return [Check("criu", "fail", f"CRIU unusable: {detail}", fix)]


def kvm_facts() -> KvmFacts:
    """Open /dev/kvm and ask for its API version and a VM, as QEMU would."""
    from aether.node.drivers.microvm import missing_prerequisites

    cpu_virt = not any("VT-x" in m for m in missing_prerequisites("kvm"))
    pvm = Path("/sys/module/kvm_pvm").exists()
    if not os.path.exists("/dev/kvm"):
        return KvmFacts(exists=False, cpu_virt=cpu_virt, pvm=pvm)
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return KvmFacts(
            exists=True, open_error=exc.strerror or str(exc), cpu_virt=cpu_virt, pvm=pvm
        )
    try:
        version = fcntl.ioctl(fd, _KVM_GET_API_VERSION)
        try:
            vm = fcntl.ioctl(fd, _KVM_CREATE_VM, 0)
        except OSError as exc:
            return KvmFacts(True, "", version, exc.strerror or str(exc), cpu_virt, pvm)
        os.close(vm)
        return KvmFacts(True, "", version, "", cpu_virt, pvm)
    finally:
        os.close(fd)


def dir_facts(path: Path) -> DirFacts:
    uid = os.geteuid()
    shown = str(path.resolve())
    try:
        st = path.stat()
    except FileNotFoundError:
        ancestor = path.resolve().parent
        while not ancestor.exists():
            ancestor = ancestor.parent
        return DirFacts(
            shown,
            exists=False,
            uid=uid,
            ancestor=str(ancestor),
            ancestor_writable=os.access(ancestor, os.W_OK | os.X_OK),
        )
    return DirFacts(
        shown,
        exists=True,
        is_dir=path.is_dir(),
        mode=st.st_mode,
        owner=st.st_uid,
        uid=uid,
        writable=os.access(path, os.W_OK | os.X_OK),
    )


def _disk(path: Path) -> Check:
    where = path.resolve()
    while not where.exists():
        where = where.parent
    usage = shutil.disk_usage(where)
    return disk_verdict(str(where), usage.free, usage.total)


def _port(what: str, host: str, port: int, options: DoctorOptions, *, api: bool = False) -> Check:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    error = ""
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind((host, port))
            sock.listen(1)
        except OSError as exc:
            error = os.strerror(exc.errno) if exc.errno else str(exc)
            if exc.errno == errno.EADDRNOTAVAIL:
                error += f" ({host} is not an address of this host)"
    aether = bool(error) and api and _answers_healthz(host, port, options)
    return port_verdict(what, host, port, error, aether)


def _answers_healthz(host: str, port: int, options: DoctorOptions) -> bool:
    import httpx

    target = "127.0.0.1" if host in ("0.0.0.0", "") else host
    for scheme in ("http", "https"):
        try:
            r = httpx.get(f"{scheme}://{target}:{port}/healthz", timeout=1.0, verify=False)
            if r.status_code == 200 and r.json() == {"status": "ok"}:
                return True
        except Exception:  # any answer but Aether's means "not Aether"
            continue
    return False


# -- TLS files ----------------------------------------------------------------------------


def _tls_pair(name: str, cert_file: str, key_file: str, env: tuple[str, str]) -> list[Check]:
    """``env``: the two settings' environment names, for the fix."""
    if not cert_file and not key_file:
        return [Check(name, "skip", "not configured")]
    if not cert_file or not key_file:
        return [
            Check(
                name,
                "fail",
                "a certificate needs both files: "
                + ("the key" if cert_file else "the certificate")
                + " is missing",
                f"set both {env[0]} and {env[1]}",
            )
        ]
    return [tls_verdict(name, Path(cert_file), Path(key_file), datetime.now(UTC))]


def tls_verdict(name: str, cert_file: Path, key_file: Path, now: datetime) -> Check:
    """The pair is readable, the key private (0600), the certificate in date and the key's."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        PublicFormat,
        load_pem_private_key,
    )

    for path in (cert_file, key_file):
        if not path.is_file():
            return Check(name, "fail", f"{path}: no such file", "point the setting at the file")
    mode = key_file.stat().st_mode & 0o777
    if mode & 0o077:
        return Check(
            name,
            "fail",
            f"the private key {key_file} has mode {mode:04o}: others can read it",
            f"chmod 600 {key_file}",
        )
    try:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    except (ValueError, OSError) as exc:
        return Check(
            name,
            "fail",
            f"{cert_file} is not a PEM certificate: {exc}",
            "point the setting at the PEM certificate (-----BEGIN CERTIFICATE-----)",
        )
    try:
        key = load_pem_private_key(key_file.read_bytes(), password=None)
    except (ValueError, TypeError, OSError) as exc:
        return Check(
            name,
            "fail",
            f"{key_file} is not an unencrypted PEM private key: {exc}",
            f"openssl pkey -in {key_file} -out KEY.pem (decrypt it), then chmod 600",
        )
    spki = (Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    if cert.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        return Check(
            name,
            "fail",
            f"the key {key_file} does not match the certificate {cert_file}",
            "use the key the certificate was issued for (compare openssl x509 -pubkey and "
            "openssl pkey -pubout)",
        )
    left = (cert.not_valid_after_utc - now).total_seconds()
    subject = cert.subject.rfc4514_string() or "the certificate"
    if left <= 0:
        return Check(
            name,
            "fail",
            f"{subject}: expired {cert.not_valid_after_utc:%Y-%m-%d}",
            "renew the certificate",
        )
    if cert.not_valid_before_utc > now:
        return Check(
            name,
            "fail",
            f"{subject}: not valid before {cert.not_valid_before_utc}",
            "check this host's clock, or reissue the certificate",
        )
    if left < 14 * 86400:
        return Check(
            name, "warn", f"{subject}: expires in {left / 86400:.1f} days", "renew the certificate"
        )
    return Check(
        name, "ok", f"{subject}, key matches, valid until {cert.not_valid_after_utc:%Y-%m-%d}"
    )


# -- backends (checked only when configured) ------------------------------------------


def _state_store(options: DoctorOptions) -> Check:
    s = options.settings
    url = s.state_url or ""
    if not url.startswith(("etcd://", "etcds://")):
        return Check("state store", "skip", "SQLite in the data dir (no etcd configured)")

    from aether.store.etcd.settings import etcd_tls_context, parse_etcd_url

    parsed = parse_etcd_url(url)
    verify: Any = True
    if url.startswith("etcds://"):
        try:
            verify = etcd_tls_context(s.etcd_ca_file, s.etcd_cert_file, s.etcd_key_file)
        except ValueError as exc:
            return Check(
                "state store", "fail", str(exc), "fix AETHER_ETCD_CA_FILE/CERT_FILE/KEY_FILE"
            )
    healthy: list[str] = []
    broken: list[str] = []
    for endpoint in parsed.endpoints:
        problem = _etcd_member(endpoint, verify, options.timeout)
        if problem:
            broken.append(f"{endpoint} ({problem})")
        else:
            healthy.append(endpoint)
    fix = "start etcd or fix AETHER_STATE_URL; check firewalls between this host and the members"
    if not healthy:
        return Check("state store", "fail", "no etcd member is healthy: " + "; ".join(broken), fix)
    if broken:
        return Check(
            "state store",
            "warn",
            f"etcd {len(healthy)}/{len(parsed.endpoints)} healthy; down: " + "; ".join(broken),
            fix,
        )
    return Check("state store", "ok", f"etcd healthy at {', '.join(healthy)}")


def _etcd_member(endpoint: str, verify: Any, timeout: float) -> str:
    """Why the member at ``endpoint`` is not healthy ("" when its /health says so)."""
    import httpx

    try:
        r = httpx.get(f"{endpoint}/health", timeout=timeout, verify=verify)
        if r.status_code == 200 and str(r.json().get("health")) == "true":
            return ""
        return f"HTTP {r.status_code}: {r.text[:80]}"
    except Exception as exc:
        return _describe(exc)


def _records(options: DoctorOptions) -> Check:
    url = options.settings.records_url or ""
    if not url.startswith("postgresql"):
        return Check("records", "skip", "SQLite in the data dir (no PostgreSQL configured)")
    import psycopg
    from sqlalchemy.engine import make_url

    u = make_url(url)
    where = f"{u.host or 'localhost'}:{u.port or 5432}/{u.database}"
    try:
        with psycopg.connect(
            host=u.host or "localhost",
            port=u.port or 5432,
            user=u.username,
            password=u.password,
            dbname=u.database,
            connect_timeout=max(2, int(options.timeout)),
        ) as conn:
            version = conn.execute("SHOW server_version").fetchone()
    except Exception as exc:
        return Check(
            "records",
            "fail",
            f"PostgreSQL at {where} does not answer: {_describe(exc)}",
            "start PostgreSQL or fix AETHER_RECORDS_URL (host, port, user, password, database)",
        )
    return Check("records", "ok", f"PostgreSQL {version[0] if version else '?'} at {where}")


def _redis(options: DoctorOptions) -> list[Check]:
    s = options.settings
    urls = {"queue": s.queue_url or "", "rate limit": s.rate_limit_url or ""}
    configured = {what: u for what, u in urls.items() if u.startswith(("redis://", "rediss://"))}
    if not configured:
        return [Check("redis", "skip", "not configured (the queue lives in the records DB)")]
    if configured.get("rate limit") == configured.get("queue"):
        del configured["rate limit"]
    import redis

    checks = []
    for what, url in configured.items():
        name = f"redis {what}"
        shown = _without_password(url)
        try:
            client = redis.Redis.from_url(
                url, socket_connect_timeout=options.timeout, socket_timeout=options.timeout
            )
            try:
                client.ping()
            finally:
                client.close()
        except Exception as exc:
            env = "AETHER_QUEUE_URL" if what == "queue" else "AETHER_RATE_LIMIT_URL"
            checks.append(
                Check(
                    name,
                    "fail",
                    f"{shown} does not answer PING: {_describe(exc)}",
                    f"start redis-server or fix {env}",
                )
            )
            continue
        checks.append(Check(name, "ok", f"{shown} answers PING"))
    return checks


def _artifacts(options: DoctorOptions) -> Check:
    s = options.settings
    if not s.artifacts_url:
        return Check("artifacts", "skip", "the local directory DATA/artifacts (no S3 configured)")
    from aether.artifacts.s3 import S3ArtifactRegistry

    registry = s.s3_registry()
    config = dataclasses.replace(
        registry.config,
        connect_timeout=options.timeout,
        read_timeout=options.timeout,
        max_attempts=1,
    )
    quick = S3ArtifactRegistry(config)

    async def probe() -> None:
        await quick.open()
        await quick.aclose()

    where = f"bucket {config.bucket!r} at {config.endpoint_url or 'AWS'}"
    try:
        asyncio.run(probe())
    except Exception as exc:
        return Check(
            "artifacts",
            "fail",
            f"S3 {where} does not answer: {_describe(exc)}",
            "check AETHER_ARTIFACTS_URL, AETHER_S3_ENDPOINT_URL and the S3 keys",
        )
    return Check("artifacts", "ok", f"S3 {where} answers")


# -- the servers' clocks ------------------------------------------------------------------


def _clocks(options: DoctorOptions) -> list[Check]:
    if not options.servers:
        return [Check("clock", "skip", "no server configured (--server, AETHER_SERVER, login)")]
    return [_clock(url.rstrip("/"), options) for url in options.servers]


def _clock(url: str, options: DoctorOptions) -> Check:
    import httpx

    verify: Any = options.server_tls if options.server_tls is not None else True
    try:
        before = time.time()
        r = httpx.get(f"{url}/healthz", timeout=options.timeout, verify=verify)
        after = time.time()
        date = r.headers.get("date")
        if not date:
            return clock_verdict(url, None, "the answer has no Date header")
        server = parsedate_to_datetime(date).timestamp()
    except Exception as exc:
        return clock_verdict(url, None, _describe(exc))
    return clock_verdict(url, skew_seconds(before, after, server))


def skew_seconds(before: float, after: float, server_date: float) -> float:
    """Our clock minus the server's, from a request sent at ``before`` and answered at
    ``after`` whose Date header (whole seconds, truncated) says ``server_date``: 0 when
    the two can agree, else the distance to the nearest time they could."""
    middle = (before + after) / 2
    half = (after - before) / 2
    low, high = server_date - half, server_date + 1 + half
    if middle < low:
        return middle - low
    if middle > high:
        return middle - high
    return 0.0


# -- helpers -------------------------------------------------------------------------------


def _describe(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]


def _without_password(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not at:
        return url
    return f"{scheme}{sep}{userinfo.partition(':')[0]}:***@{host}" if ":" in userinfo else url
