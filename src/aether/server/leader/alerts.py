"""Alerts on the leader: every ``alert_interval`` seconds, evaluate the rules.

Each pass reads what the leader already has -- the telemetry hub's per-second app
figures (calls, 5xx, latency, restart counters) and node samples (disk, staleness),
the cluster CA's and the API certificate's expiry, the task queue's ready tasks
(``ready_lag``) and the deployments' automatic reverts -- and the silences from the
records, then applies ``aether.core.alerts.step`` to the previous states. States are
written to the records (``alerts``) when they change, so a new leader starts from
them; each change of state is also put in the state store (``alerts/{fingerprint}``),
where the cluster event stream sees it (``alert`` events).

A firing or resolved alert that no silence mutes is POSTed as JSON to
``alert_webhook_url`` (when set) and mailed through ``alert_smtp_host`` (when set):
each in the background, up to ``MAX_ATTEMPTS`` attempts with exponential backoff,
each attempt recorded on the alert (``notify``: attempts, the last error, when it was
delivered), so ``aether alerts ls`` shows a failing receiver.

A rule with a runbook submits a ``vm:execute`` task (as the runbook's tenant, in
its sandbox, the alert's labels in ``ALERT_*`` variables) when its alert fires;
when the task ends its output (truncated to ``RUNBOOK_OUTPUT_MAX``) is attached to
the alert.

The rules are the built-in ones changed by ``alert_rules_file`` (JSON), read again
when the file changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

import httpx

from aether.core.alerts import (
    DEFAULT_RULES,
    MAX_ATTEMPTS,
    AlertState,
    AppWindow,
    Notification,
    Observed,
    QueueLag,
    Revert,
    Rule,
    Silence,
    backoff,
    observe,
    parse_rules,
    step,
)
from aether.model.alerts import AlertRecord
from aether.model.names import split_cluster_name
from aether.model.tasks import TaskIn
from aether.model.trust import issuing
from aether.server.services.alert_mail import MailConfig, MailError, compose, mail_config
from aether.server.services.alert_mail import send as send_mail
from aether.server.services.tasks import submit_task
from aether.store.election import Leadership
from aether.store.records.base import Principal
from aether.store.records.schema import AlertRow, AlertSilenceRow
from aether.trust import ca

if TYPE_CHECKING:
    from aether.server.context import ServerContext

__all__ = ["AlertEngine", "alert_json", "load_rules", "silence_of", "state_of"]

log = logging.getLogger("aether.alerts")

RUNBOOK_OUTPUT_MAX = 8192
ALERT_KEY = "alerts/"  # the state store's alerts/{fingerprint}: the latest change, for the stream
_STATE_COLUMNS = (
    "rule",
    "labels",
    "tenant",
    "state",
    "severity",
    "value",
    "started_at",
    "updated_at",
    "fired_at",
    "resolved_at",
    "silenced",
)


class _Undelivered(Exception):
    """One delivery attempt failed; the text says why (recorded on the alert)."""


def load_rules(ctx: ServerContext) -> list[Rule]:
    """The built-in rules, with ``alert_rules_file``'s changes (a bad file fails the pass
    loudly in the log and the built-in rules apply)."""
    path = ctx.settings.alert_rules_file
    if path is None:
        return list(DEFAULT_RULES)
    try:
        return parse_rules(json.loads(path.read_text()))
    except (OSError, ValueError) as exc:
        log.error("alert rules file %s: %s; using the built-in rules", path, exc)
        return list(DEFAULT_RULES)


def state_of(row: AlertRow) -> AlertState:
    return AlertState(
        fingerprint=row.fingerprint,
        rule=row.rule,
        labels=dict(row.labels),
        tenant=row.tenant,
        state=row.state,  # type: ignore[arg-type]
        value=row.value,
        started_at=row.started_at,
        updated_at=row.updated_at,
        fired_at=row.fired_at,
        resolved_at=row.resolved_at,
        silenced=row.silenced,
        severity=row.severity,
    )


def silence_of(row: AlertSilenceRow) -> Silence:
    return Silence(
        id=row.id,
        matchers={str(k): str(v) for k, v in row.matchers.items()},
        ends_at=row.ends_at,
        starts_at=row.starts_at,
        tenant=row.tenant,
    )


def alert_json(alert: AlertState) -> dict[str, Any]:
    """What the webhook receives."""
    return {
        "fingerprint": alert.fingerprint,
        "rule": alert.rule,
        "labels": dict(alert.labels),
        "tenant": alert.tenant,
        "state": alert.state,
        "severity": alert.severity,
        "value": alert.value,
        "started_at": alert.started_at,
        "fired_at": alert.fired_at,
        "resolved_at": alert.resolved_at,
    }


def _row(alert: AlertState) -> dict[str, Any]:
    values = {k: getattr(alert, k) for k in _STATE_COLUMNS}
    values["labels"] = dict(alert.labels)
    return {"fingerprint": alert.fingerprint, **values}


class AlertEngine:
    def __init__(self, ctx: ServerContext, *, interval: float | None = None) -> None:
        self.ctx = ctx
        self.interval = interval if interval is not None else ctx.settings.alert_interval
        self.rules: list[Rule] = load_rules(ctx)
        self._rules_stamp = self._stamp()
        self.passes = 0
        self._states: dict[str, AlertState] = {}
        self._loaded = False
        self._runbooks: dict[str, str] = {}  # fingerprint -> the task it runs
        self._sending: set[asyncio.Task[bool]] = set()
        self._apps_seen: dict[str, float] = {}  # app -> when last in a sample
        self._lock = asyncio.Lock()  # a pass of a run that lost the lead may still be going
        # (channel, fingerprint, state, started_at) of the notifications already started
        self._sent: set[tuple[str, str, str, float]] = set()
        self._notes_lock = asyncio.Lock()
        self._tls_cert: tuple[float, float] | None = None  # the API certificate: mtime, not_after
        self._tenant_names: dict[str, str] = {}  # tenant id -> name
        self._seen_reverts: dict[int, Revert] = {}  # deployment event id ->
        self._revert_cursor = 0

    async def run(self, leadership: Leadership) -> None:
        # another leader may have moved the states on; deliveries under way finish
        # (bounded by their retries), so a notification is not lost with the lead
        self._loaded = False
        while not leadership.lost.is_set():
            try:
                await self.evaluate(time.time())
            except Exception:
                log.exception("alert pass failed; trying again")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await leadership.lost.wait()

    async def observed(self, now: float) -> Observed:
        hub = self.ctx.telemetry
        latest = hub.latest()
        window = max((r.window for r in self.rules), default=300.0)
        apps: dict[str, AppWindow] = {}
        disk_free: dict[str, float] = {}
        lost: list[str] = []
        if latest is not None:
            # an app between two lives of a crashing instance is missing from the latest
            # second: every app seen within the window is looked at
            for name in latest.apps:
                self._apps_seen[name] = now
            self._apps_seen = {a: ts for a, ts in self._apps_seen.items() if now - ts <= window}
            for name in self._apps_seen:
                points = hub.app_history(name, window)
                apps[name] = AppWindow(
                    tenant=split_cluster_name(name)[1],
                    ts=[p.ts for p in points],
                    calls_per_s=[p.calls_per_s for p in points],
                    errors_per_s=[p.errors_per_s for p in points],
                    latency_ms=[p.latency_ms for p in points],
                    restarts=[p.restarts for p in points],
                )
            disk_free = {n: 1.0 - s.disk_fraction for n, s in latest.nodes.items() if not s.stale}
            lost = sorted(n for n, s in latest.nodes.items() if s.stale)
        kinds = {r.kind for r in self.rules}
        return Observed(
            apps=apps,
            disk_free=disk_free,
            lost_nodes=lost,
            certificates=self.certificates(now) if "cert_expiry" in kinds else {},
            queues=await self._queues(now) if "queue_lag" in kinds else [],
            reverts=await self._reverts(now, window) if "rollout_reverted" in kinds else [],
        )

    def certificates(self, now: float) -> dict[str, float]:
        """Seconds left per certificate: the cluster CA's (the one signing node
        certificates now) and, when the API serves TLS from a file, that file's."""
        left: dict[str, float] = {}
        record = self.ctx.trust.record
        if record is not None:
            ca_cert = ca.load_certificate(issuing(record, now).cert)
            left["cluster-ca"] = ca_cert.not_valid_after_utc.timestamp() - now
        path = self.ctx.settings.tls_cert
        if path:
            try:
                stamp = os.stat(path).st_mtime
                if self._tls_cert is None or self._tls_cert[0] != stamp:
                    with open(path, "rb") as fh:
                        cert = ca.load_certificate(fh.read())
                    self._tls_cert = (stamp, cert.not_valid_after_utc.timestamp())
                left["api-tls"] = self._tls_cert[1] - now
            except (OSError, ValueError) as exc:
                log.warning("alerts: cannot read the API certificate %s: %s", path, exc)
        return left

    async def _queues(self, now: float) -> list[QueueLag]:
        lags = await self.ctx.queue.ready_lag(now)
        if any(lag.tenant_id not in self._tenant_names for lag in lags):
            await self._read_tenants()
        return [
            QueueLag(
                tenant=self._tenant_names.get(lag.tenant_id, lag.tenant_id),
                queue=lag.queue,
                oldest_wait=max(0.0, now - lag.oldest_ready_at),
                ready=lag.ready,
            )
            for lag in lags
        ]

    async def _reverts(self, now: float, window: float) -> list[Revert]:
        """The automatic reverts of the window: read once from the records, then only
        those after the newest seen (by id)."""
        for row in await self.ctx.records.reverts_after(self._revert_cursor):
            self._seen_reverts[row.id] = Revert(row.app, row.tenant, row.at)
            self._revert_cursor = max(self._revert_cursor, row.id)
        self._seen_reverts = {
            i: r for i, r in self._seen_reverts.items() if now - r.at <= max(window, 3600.0)
        }
        return list(self._seen_reverts.values())

    def _stamp(self) -> float | None:
        path = self.ctx.settings.alert_rules_file
        try:
            return path.stat().st_mtime if path is not None else None
        except OSError:
            return None

    async def evaluate(self, now: float) -> dict[str, AlertState]:
        async with self._lock:
            return await self._evaluate(now)

    async def _evaluate(self, now: float) -> dict[str, AlertState]:
        records = self.ctx.records
        stamp = self._stamp()
        if stamp != self._rules_stamp:  # the rules file changed: read again
            self._rules_stamp = stamp
            self.rules = load_rules(self.ctx)
        if not self._loaded:
            rows = await records.list_alerts(None, cluster=True)
            self._states = {row.fingerprint: state_of(row) for row in rows}
            self._runbooks = {r.fingerprint: r.runbook_task for r in rows if r.runbook_task}
            self._loaded = True
        silences = [silence_of(row) for row in await records.list_silences(None)]
        facts = observe(self.rules, await self.observed(now), now)
        states, notes = step(self.rules, facts, self._states, silences, now)
        changed = [_row(a) for fp, a in states.items() if self._states.get(fp) != a]
        gone = [fp for fp in self._states if fp not in states]
        if changed or gone:
            await records.save_alerts(changed, gone)
        await self._publish(states, gone)
        self._states = states
        for fp in gone:
            self._runbooks.pop(fp, None)
        for note in notes:
            self._notify(note)
            if note.alert.state == "firing":
                await self._start_runbook(note.alert)
        await self._collect_runbooks()
        self.passes += 1
        return dict(states)

    # -- the cluster event stream ------------------------------------------------------

    async def _publish(self, states: dict[str, AlertState], gone: list[str]) -> None:
        """Each state change as ``alerts/{fingerprint}`` in the state store, which the
        event stream watches (``alert`` events); a dropped alert's key is deleted."""
        try:
            for fp, alert in states.items():
                old = self._states.get(fp)
                if old is not None and old.state == alert.state:
                    continue
                record = AlertRecord(
                    **alert_json(alert),
                    previous=old.state if old is not None else None,
                    silenced=alert.silenced,
                    tenant_id=await self._tenant_id(alert.tenant),
                )
                await self.ctx.store.put(ALERT_KEY + fp, record.model_dump_json().encode())
            for fp in gone:
                await self.ctx.store.delete(ALERT_KEY + fp)
        except Exception:
            log.exception("alerts: could not put the alerts' changes on the event stream")

    async def _tenant_id(self, name: str | None) -> str | None:
        if name is None:
            return None
        if name not in self._tenant_names.values():
            await self._read_tenants()
        return next((i for i, known in self._tenant_names.items() if known == name), None)

    async def _read_tenants(self) -> None:
        """The tenants' names again (one the engine has not seen yet appeared)."""
        self._tenant_names = {t.id: t.name for t in await self.ctx.records.list_tenants()}

    # -- notifications ----------------------------------------------------------------

    def _notify(self, note: Notification) -> None:
        """Start each configured notifier's delivery of ``note`` (in the background: a
        slow or failing receiver never holds up a pass)."""
        url = self.ctx.settings.alert_webhook_url
        mail = mail_config(self.ctx.settings)
        channels: list[tuple[str, Callable[[AlertState], Coroutine[Any, Any, bool]]]] = []
        if url:
            channels.append(("webhook", lambda alert: self.deliver(url, alert)))
        if mail is not None:
            channels.append(("email", lambda alert: self.deliver_mail(mail, alert)))
        for channel, deliver in channels:
            key = (channel, note.alert.fingerprint, note.alert.state, note.alert.started_at)
            if key in self._sent:
                continue  # this very notification is already on its way
            self._sent.add(key)
            if len(self._sent) > 10_000:
                self._sent = {key}
            task = asyncio.create_task(deliver(note.alert), name=f"alert-{channel}")
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def deliver(self, url: str, alert: AlertState) -> bool:
        """POST ``alert`` to ``url``, retrying with backoff; every attempt is recorded."""
        body = alert_json(alert)
        async with httpx.AsyncClient(timeout=10.0) as client:

            async def post() -> str:
                try:
                    response = await client.post(url, json=body)
                except httpx.HTTPError as exc:
                    raise _Undelivered(f"{type(exc).__name__}: {exc}") from None
                if response.status_code >= 300:
                    raise _Undelivered(f"HTTP {response.status_code}")
                return ""

            return await self._with_retries(alert, alert.state, "webhook", post)

    async def deliver_mail(self, config: MailConfig, alert: AlertState) -> bool:
        """Mail ``alert`` through the SMTP server, retrying with backoff; every attempt
        is recorded under ``email_firing``/``email_resolved``."""
        message = compose(config, alert, time.time())

        async def mail() -> str:
            try:
                refused = await asyncio.to_thread(send_mail, config, message)
            except MailError as exc:
                raise _Undelivered(str(exc)) from None
            return f"recipients refused: {', '.join(refused)}" if refused else ""

        return await self._with_retries(alert, f"email_{alert.state}", "email", mail)

    async def _with_retries(
        self, alert: AlertState, key: str, what: str, attempt_once: Callable[[], Awaitable[str]]
    ) -> bool:
        """Up to ``MAX_ATTEMPTS`` attempts, ``backoff`` apart, each recorded on the alert's
        ``notify[key]``; True once one is accepted."""
        error = ""
        attempt = 0
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                warning = await attempt_once()
            except _Undelivered as exc:
                error = str(exc)
            else:
                await self._note_delivery(alert, key, attempt, warning, time.time())
                return True
            await self._note_delivery(alert, key, attempt, error, None)
            if attempt < MAX_ATTEMPTS:
                await asyncio.sleep(backoff(attempt))
        log.warning("alert %s %s: %s failed %d times: %s", alert.rule, key, what, attempt, error)
        return False

    async def _note_delivery(
        self, alert: AlertState, key: str, attempts: int, error: str, delivered: float | None
    ) -> None:
        notify = {
            key: {
                "attempts": attempts,
                "error": error,
                "delivered_at": delivered,
                "failed": not delivered and attempts >= MAX_ATTEMPTS,
            }
        }
        async with self._notes_lock:  # the webhook's and the email's notes: one at a time
            rows = await self.ctx.records.list_alerts(alert.tenant, cluster=alert.tenant is None)
            for row in rows:
                if row.fingerprint == alert.fingerprint:
                    notify = {**row.notify, **notify}
            await self.ctx.records.note_alert(alert.fingerprint, notify=notify)

    # -- runbooks -----------------------------------------------------------------------

    async def _start_runbook(self, alert: AlertState) -> None:
        rule = next((r for r in self.rules if r.name == alert.rule), None)
        if rule is None or rule.runbook is None:
            return
        book = rule.runbook
        tenant = await self.ctx.records.find_tenant(book.tenant)
        if tenant is None:
            await self.ctx.records.note_alert(
                alert.fingerprint, runbook_output=f"runbook: no tenant {book.tenant!r}"
            )
            return
        env = {"ALERT_RULE": alert.rule, "ALERT_STATE": alert.state}
        env.update({f"ALERT_{k.upper()}": v for k, v in alert.labels.items()})
        caller = Principal(tenant_id=tenant.id, tenant=tenant.name, role="operator", token_id="")
        body = TaskIn(
            type="vm:execute",
            payload={
                "sandbox_id": book.sandbox_id,
                "command": book.command,
                "args": list(book.args),
                "env": env,
            },
            max_retry=0,
        )
        try:
            task = await submit_task(self.ctx, caller, body)
        except Exception as exc:
            await self.ctx.records.note_alert(
                alert.fingerprint, runbook_output=f"runbook not started: {exc}"
            )
            return
        self.ctx.task_submitted.set()
        self._runbooks[alert.fingerprint] = task.id
        await self.ctx.records.note_alert(
            alert.fingerprint, runbook_task=task.id, runbook_output=None
        )

    async def _collect_runbooks(self) -> None:
        for fp, task_id in list(self._runbooks.items()):
            try:
                task = await self.ctx.queue.get(task_id)
            except Exception:
                self._runbooks.pop(fp, None)
                continue
            if task.state not in ("succeeded", "failed", "cancelled", "dead"):
                continue
            self._runbooks.pop(fp, None)
            await self.ctx.records.note_alert(fp, runbook_output=runbook_output(task.model_dump()))


def runbook_output(task: dict[str, Any]) -> str:
    """A finished task's output for the alert: exit code, stdout, stderr (truncated)."""
    result = task.get("result") or {}
    parts: Sequence[str] = [
        f"task {task.get('id')} {task.get('state')}"
        + (f" (exit {result['exit_code']})" if "exit_code" in result else ""),
        str(result.get("stdout", "")),
        str(result.get("stderr", "")),
        str(task.get("error") or ""),
    ]
    text = "\n".join(p for p in parts if p)
    return text[:RUNBOOK_OUTPUT_MAX]
