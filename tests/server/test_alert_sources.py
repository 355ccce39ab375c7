"""Alerts on a real leader, from the sources the first pass left out: email through a
real local SMTP server (``aiosmtpd``), a task queue's lag, a reverted rollout, and each
transition on the cluster event stream (its tenant's only).

The rules file fires at once (``for_seconds`` 0 or short) so that nothing waits for
the built-in for-durations; nodes push telemetry the way ``aether node`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import email
import json
import ssl
import threading
import time
from collections.abc import AsyncIterator, Iterator
from email.message import Message
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

from aether.client import ApiClient
from aether.model.api import RegisterIn
from aether.model.cluster import NodeCapabilities
from aether.ports import free_port
from aether.trust import ca
from tests.server.test_events_api import of, stream
from tests.support.api import bearer, deploy, unique, upload_random
from tests.support.server import RunningServer, running_server
from tests.support.telemetry import node_sample

USER, PASSWORD = "alerts", "smtp-Secret-9f3a"


class Mailbox:
    """An SMTP handler: keeps each accepted message; a message whose subject names a
    node in ``failing`` is refused (451) that many more times (-1: always)."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.refused: list[str] = []
        self.logins: list[tuple[str, str]] = []
        self.failing: dict[str, int] = {}
        self.lock = threading.Lock()

    async def handle_DATA(self, server: SMTPServer, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or envelope.content or b""
        message = email.message_from_bytes(raw if isinstance(raw, bytes) else raw.encode())
        subject = str(message["Subject"])
        with self.lock:
            for marker, left in self.failing.items():
                if marker in subject and left != 0:
                    self.failing[marker] = left - 1 if left > 0 else left
                    self.refused.append(subject)
                    return "451 4.3.0 mailbox busy, try again"
            self.messages.append(message)
        return "250 OK"

    def authenticate(
        self, server: SMTPServer, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        if not isinstance(data, LoginPassword):
            return AuthResult(success=False)
        login, password = data.login.decode(), data.password.decode()
        self.logins.append((login, password))
        return AuthResult(success=(login, password) == (USER, PASSWORD))

    def about(self, marker: str) -> list[Message]:
        with self.lock:
            return [m for m in self.messages if marker in str(m["Subject"])]


@pytest.fixture(scope="module")
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    box = Mailbox()
    port = free_port()
    controller = Controller(
        box,
        hostname="127.0.0.1",
        port=port,
        authenticator=box.authenticate,
        auth_require_tls=False,  # loopback: the test has no certificate for STARTTLS
    )
    controller.start()
    yield box, port
    controller.stop()


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, mailbox: tuple[Mailbox, int]
) -> Iterator[RunningServer]:
    data = tmp_path_factory.mktemp("aether-alert-sources")
    rules = Path(data) / "rules.json"
    rules.write_text(
        json.dumps(
            [
                {"name": "DiskFree", "kind": "disk_free", "threshold": 0.15},
                {"name": "TaskQueueLag", "kind": "queue_lag", "threshold": 1, "for_seconds": 0.5},
                {"name": "NodeLost", "disabled": True},
            ]
        )
    )
    _, port = mailbox
    with running_server(
        data / "server",
        lease_ttl=60.0,
        alert_rules_file=rules,
        alert_interval=0.2,
        alert_smtp_host="127.0.0.1",
        alert_smtp_port=port,
        alert_smtp_from="aether@example.test",
        alert_smtp_to="ops@example.test,oncall@example.test",
        alert_smtp_username=USER,
        alert_smtp_password=PASSWORD,
    ) as running:
        yield running


@contextlib.asynccontextmanager
async def disk_of(server: RunningServer, node: str) -> AsyncIterator[dict[str, float]]:
    """A registered node pushing a sample every 0.2 s with ``used`` of 10 MiB of disk used."""
    figures = {"used": 1.0}
    pushing = True
    async with ApiClient(server.base_url, server.node_token(node)) as api:
        await api.register(
            RegisterIn(
                id=node,
                capabilities=NodeCapabilities(cpus=4, memory_mb=4096, drivers=["process"]),
                router_url="http://127.0.0.1:9",
            )
        )

        async def push() -> None:
            seq = 0
            while pushing:
                seq += 1
                await api.push_metrics(node_sample(node, seq, disk_used_mb=figures["used"]))
                await asyncio.sleep(0.2)

        task = asyncio.create_task(push())
        try:
            yield figures
        finally:
            pushing = False
            await task


async def alerts(server: RunningServer, token: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        got = await http.get("/api/v1/alerts", headers=bearer(token))
        assert got.status_code == 200, got.text
        found: list[dict[str, Any]] = got.json()
        return found


async def until(
    server: RunningServer, token: str, label: tuple[str, str], state: str, timeout: float = 20
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    seen: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        seen = [a for a in await alerts(server, token) if a["labels"].get(label[0]) == label[1]]
        if seen and seen[0]["state"] == state:
            return seen[0]
        await asyncio.sleep(0.1)
    raise AssertionError(f"{label}: never {state}; last {seen}")


async def mails(box: Mailbox, marker: str, n: int, timeout: float = 20) -> list[Message]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(found := box.about(marker)) >= n:
            return found
        await asyncio.sleep(0.1)
    raise AssertionError(f"{n} mail(s) about {marker}: got {box.about(marker)}")


# -- email ---------------------------------------------------------------------------------


async def test_a_firing_and_a_resolved_alert_are_each_mailed(
    server: RunningServer, mailbox: tuple[Mailbox, int]
) -> None:
    box, _ = mailbox
    node = unique("full")
    ops = server.token("operator")
    async with disk_of(server, node) as disk:
        disk["used"] = 9.5  # 5 % free
        await until(server, ops, ("node", node), "firing")
        [firing] = await mails(box, node, 1)
        assert str(firing["Subject"]) == f"[aether] FIRING DiskFree node={node}"
        assert firing["To"] == "ops@example.test, oncall@example.test"
        body = firing.get_payload(decode=True)
        assert isinstance(body, bytes)
        text = body.decode()
        assert "rule:      DiskFree" in text and "state:     firing" in text
        assert f"labels:    node={node}" in text and "tenant:    (cluster)" in text
        disk["used"] = 1.0
        resolved = await until(server, ops, ("node", node), "resolved")
    _, second = await mails(box, node, 2)
    assert str(second["Subject"]) == f"[aether] RESOLVED DiskFree node={node}"
    assert "state:     resolved" in str(second.get_payload())
    assert (USER, PASSWORD) in box.logins
    shown = next(
        a for a in await alerts(server, ops) if a["fingerprint"] == resolved["fingerprint"]
    )
    assert shown["notify"]["email_firing"]["attempts"] == 1
    assert shown["notify"]["email_firing"]["delivered_at"] is not None
    # the password is a secret: in no API answer, redacted from the effective config
    assert PASSWORD not in json.dumps(await alerts(server, ops))
    from aether.server.config import effective_config

    config = effective_config(server.ctx.settings)
    assert PASSWORD not in config and 'alert_smtp_password = "<redacted>"' in config


async def test_a_failing_smtp_server_is_retried_and_the_passes_go_on(
    server: RunningServer, mailbox: tuple[Mailbox, int]
) -> None:
    box, _ = mailbox
    flaky, down, other = unique("flaky"), unique("down"), unique("other")
    ops = server.token("operator")
    box.failing[flaky] = 2  # refused twice, then accepted
    box.failing[down] = -1  # refused every time
    async with disk_of(server, flaky) as a, disk_of(server, down) as b:
        a["used"] = b["used"] = 9.9
        await until(server, ops, ("node", down), "firing")
        await mails(box, flaky, 1)
        shown = await until(server, ops, ("node", flaky), "firing")
        deadline = time.monotonic() + 10
        while not (shown["notify"].get("email_firing") or {}).get("delivered_at"):
            assert time.monotonic() < deadline, shown
            await asyncio.sleep(0.1)
            shown = await until(server, ops, ("node", flaky), "firing")
        assert shown["notify"]["email_firing"]["attempts"] == 3  # 451, 451, 250
        # while the mails about `down` are still being retried, a new alert fires
        async with disk_of(server, other) as c:
            c["used"] = 9.9
            await until(server, ops, ("node", other), "firing", timeout=5)
            failing = await until(server, ops, ("node", down), "firing")
            note = failing["notify"]["email_firing"]
            assert note["attempts"] >= 2 and note["delivered_at"] is None
            assert note["error"].startswith("SMTP 451") and not note["failed"]
    assert sum(flaky in s for s in box.refused) == 2


def test_the_smtp_password_reaches_the_diagnostics_redaction(server: RunningServer) -> None:
    from aether.ops.redact import redact
    from aether.server.api.diag import _known_secrets

    known = _known_secrets(server.ctx.settings)
    assert PASSWORD in known
    assert PASSWORD not in redact(f"connecting with {PASSWORD}", known)


# -- task queue lag --------------------------------------------------------------------------


async def test_a_queue_whose_oldest_ready_task_waits_too_long_fires_and_resolves(
    server: RunningServer,
) -> None:
    tenant = unique("acme")
    queue = unique("q")
    admin = server.token("admin", tenant)
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        made = await http.post(
            "/api/v1/tasks",
            json={"type": "vm:create", "payload": {"name": "lag"}, "queue": queue},
            headers=bearer(admin),
        )
        assert made.status_code == 201, made.text
        firing = await until(server, admin, ("queue", queue), "firing")
        assert firing["labels"] == {"tenant": tenant, "queue": queue}
        assert firing["tenant"] == tenant and firing["value"] > 1
        others = await alerts(server, server.token("admin", unique("b")))
        assert all(a["labels"].get("queue") != queue for a in others)
        cancelled = await http.post(
            f"/api/v1/tasks/{made.json()['id']}/cancel", headers=bearer(admin)
        )
        assert cancelled.status_code == 200, cancelled.text
        await until(server, admin, ("queue", queue), "resolved")


# -- rollout reverted ----------------------------------------------------------------------


async def test_a_reverted_rollout_fires(server: RunningServer) -> None:
    tenant = unique("acme")
    admin = server.token("admin", tenant)
    app = unique("web")
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        digest = await upload_random(http, admin)
        made = await deploy(http, admin, app, digest)
        assert made.status_code in (200, 201, 202), made.text
        deployment = made.json()["id"]
    # what the leader's rollout step writes when it reverts a failed rollout (auto_revert)
    server.run(server.ctx.records.add_event(deployment, "reverted", "reverted to v0 (auto_revert)"))
    firing = await until(server, admin, ("app", f"{app}.{tenant}"), "firing")
    assert firing["rule"] == "RolloutReverted" and firing["tenant"] == tenant
    assert firing["value"] == 1.0


# -- the cluster event stream ----------------------------------------------------------------


async def test_alert_changes_are_on_the_event_stream_of_their_tenant_only(
    server: RunningServer,
) -> None:
    tenant, other = unique("acme"), unique("b")
    queue = unique("q")
    admin = server.token("admin", tenant)
    async with (
        stream(server, admin, [("type", "alert")]) as mine,
        stream(server, server.token("admin", other), [("type", "alert")]) as theirs,
        stream(server, server.token("operator"), [("type", "alert")]) as ops,
        httpx.AsyncClient(base_url=server.base_url) as http,
    ):
        made = await http.post(
            "/api/v1/tasks",
            json={"type": "vm:create", "payload": {"name": "lag"}, "queue": queue},
            headers=bearer(admin),
        )
        assert made.status_code == 201, made.text

        def about(state: str) -> Any:
            return lambda e: (
                of("alert", "TaskQueueLag")(e)
                and (e["labels"].get("queue") == queue and e["state"] == state)
            )

        pending = await mine.wait_for("pending", about("pending"))
        assert pending["previous"] is None
        firing = await mine.wait_for("firing", about("firing"))
        assert firing["previous"] == "pending" and firing["labels"]["tenant"] == tenant
        assert firing["fingerprint"] == pending["fingerprint"]
        stored = server.run(server.ctx.store.get(f"alerts/{firing['fingerprint']}"))
        assert stored is not None and json.loads(stored.value)["schema"] == 1
        await ops.wait_for("the cluster operators' copy", about("firing"))
        # a cluster alert (a node's disk) reaches the cluster's operators, not the tenant
        node = unique("full")
        async with disk_of(server, node) as disk:
            disk["used"] = 9.9
            await ops.wait_for("a node's alert", lambda e: e.get("node") == node)
        late = await theirs.quiet(1.0)
        assert all(e["type"] == "ping" for e in late), late
        seen = [*mine.seen, *(await mine.quiet(0.5))]
        assert all(e.get("node") != node for e in seen)
        await http.post(f"/api/v1/tasks/{made.json()['id']}/cancel", headers=bearer(admin))
        await mine.wait_for("resolved", about("resolved"))


# -- certificate expiry ----------------------------------------------------------------------


def _short_ca(directory: Path, days: int) -> tuple[ca.Authority, dict[str, Any]]:
    authority = ca.new_authority("aether", dt.datetime.now(dt.UTC), days=days)
    paths = {"ca_cert_file": str(directory / "ca.crt"), "ca_key_file": str(directory / "ca.key")}
    Path(paths["ca_cert_file"]).write_text(authority.cert_pem)
    Path(paths["ca_key_file"]).write_text(authority.key_pem)
    return authority, paths


async def test_a_cluster_ca_expiring_within_14_days_fires(tmp_path: Path) -> None:
    _, files = _short_ca(tmp_path, days=5)
    with running_server(tmp_path / "server", alert_interval=0.2, **files) as srv:
        firing = await until(srv, srv.token("operator"), ("certificate", "cluster-ca"), "firing")
        assert firing["rule"] == "CertificateExpiry" and firing["tenant"] is None
        assert 4 * 86400 < firing["value"] <= 5 * 86400
        tenant_view = await alerts(srv, srv.token("admin", unique("acme")))
        assert all(a["rule"] != "CertificateExpiry" for a in tenant_view)


async def test_the_api_certificate_counts_when_it_expires_first(tmp_path: Path) -> None:
    authority, files = _short_ca(tmp_path, days=10)
    key = ca.new_key()
    now = dt.datetime.now(dt.UTC)
    cert = ca.issue(
        authority,
        public_key=key.public_key(),
        uri=None,
        hosts=["127.0.0.1"],
        now=now,
        lifetime=dt.timedelta(days=2),
    )
    (tmp_path / "api.crt").write_text(cert)
    (tmp_path / "api.key").write_text(ca.key_pem(key))
    tls: dict[str, Any] = {
        "tls_cert": str(tmp_path / "api.crt"),
        "tls_key": str(tmp_path / "api.key"),
    }
    # the test's server is plain HTTP whatever the settings say: only the file is read here
    with running_server(tmp_path / "server", alert_interval=0.2, **files, **tls) as srv:
        firing = await until(srv, srv.token("operator"), ("certificate", "api-tls"), "firing")
        assert firing["value"] <= 2 * 86400


# -- the settings ----------------------------------------------------------------------------


def test_smtp_settings_need_a_sender_and_recipients_and_hide_the_password(
    tmp_path: Path,
) -> None:
    from pydantic import ValidationError

    from aether.server.services.alert_mail import mail_config
    from aether.server.settings import ServerSettings

    with pytest.raises(ValidationError, match="AETHER_ALERT_SMTP_FROM"):
        ServerSettings(data_dir=tmp_path, alert_smtp_host="mail.example.test")
    with pytest.raises(ValidationError, match="needs AETHER_ALERT_SMTP_USERNAME"):
        ServerSettings(data_dir=tmp_path, alert_smtp_password=PASSWORD)
    settings = ServerSettings(
        data_dir=tmp_path,
        alert_smtp_host="mail.example.test",
        alert_smtp_from="aether@example.test",
        alert_smtp_to=" a@example.test, b@example.test ,",  # type: ignore[arg-type]
        alert_smtp_username=USER,
        alert_smtp_password=PASSWORD,
    )
    config = mail_config(settings)
    assert config is not None and config.to == ("a@example.test", "b@example.test")
    assert PASSWORD not in repr(config) and config.password == PASSWORD
    assert mail_config(ServerSettings(data_dir=tmp_path)) is None


def test_starttls_and_login_through_a_real_smtp_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``send`` upgrades with STARTTLS (verifying the server's certificate) before it logs
    in; a server that has no STARTTLS is an error, never a login in the clear."""
    from aether.core.alerts import AlertState
    from aether.server.services.alert_mail import MailConfig, MailError, compose, send

    authority = ca.new_authority("aether", dt.datetime.now(dt.UTC), days=1)
    key = ca.new_key()
    cert = ca.issue(
        authority,
        public_key=key.public_key(),
        uri=None,
        hosts=["127.0.0.1"],
        now=dt.datetime.now(dt.UTC),
        lifetime=dt.timedelta(hours=1),
        backdate=dt.timedelta(minutes=5),
    )
    (tmp_path / "smtp.crt").write_text(cert)
    (tmp_path / "smtp.key").write_text(ca.key_pem(key))
    (tmp_path / "ca.crt").write_text(authority.cert_pem)
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.crt"))  # the client's trust
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(tmp_path / "smtp.crt", tmp_path / "smtp.key")
    box = Mailbox()
    port = free_port()
    controller = Controller(
        box,
        hostname="127.0.0.1",
        port=port,
        tls_context=tls,
        require_starttls=True,
        authenticator=box.authenticate,
    )
    controller.start()
    try:
        alert = AlertState(
            "fp", "NodeLost", {"node": "n1"}, None, "firing", 1.0, started_at=0, updated_at=0
        )
        config = MailConfig(
            "127.0.0.1", port, "a@example.test", ("b@example.test",), True, USER, PASSWORD
        )
        assert send(config, compose(config, alert, 0.0)) == []
        [got] = box.messages
        assert str(got["Subject"]) == "[aether] FIRING NodeLost node=n1"
        assert box.logins == [(USER, PASSWORD)]
        plain = MailConfig(
            "127.0.0.1", port, "a@example.test", ("b@example.test",), False, USER, PASSWORD
        )
        with pytest.raises(MailError):  # the server wants STARTTLS first
            send(plain, compose(plain, alert, 0.0))
        assert box.logins == [(USER, PASSWORD)]
    finally:
        controller.stop()
