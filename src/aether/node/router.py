"""The node's HTTP router: ``/apps/{app}/...`` and ``Host: {app}.localhost``.

Another tenant's app: ``/t/{tenant}/apps/{app}/...`` and ``Host:
{app}.{tenant}.localhost`` (``model.names``: the table is keyed by cluster name).

Round-robin over the app's ACTIVE endpoints (the table comes from the
assignment stream). No endpoint: 503 with the error envelope; an app the
cluster does not have (no blueprint: never deployed, or deleted): 404.

An instance that cannot be reached or fails to answer never costs a bare 500:

- a request that was never sent (the connection was refused or not made in
  time) is tried on the next endpoint, whatever its method;
- a GET, HEAD or OPTIONS that was sent but failed before any response byte
  (the connection reset or closed, a malformed answer) is tried once more, on
  another endpoint; any other method whose bytes were sent is not retried;
- when nothing is left to try the answer is the envelope: 502
  ``upstream_failed``, or 504 ``upstream_timeout`` when the instance sent no
  response headers within ``upstream_timeout`` seconds (not retried: the client
  already waited that long). One warning line is logged, no traceback.

A body that breaks after the response has started cannot be turned into an
envelope: the client's connection is closed without the end of the body, so
the client sees a truncated answer, not a complete one.

Stopping instances are drained, not cut off (``core.withdrawal``): the router
counts the requests it has open per instance URL, and ``on_change`` tells the
node when its table dropped an endpoint or when the last open request to a
dropped endpoint finished, so the node can say so to the server
(``withdrawn_in_flight``) and the instance stops only when every router is
done with it.

A deployed agent (one with replicas placed: ``agents/{id}`` in the assignment stream)
is served at ``/agents/{name}/{rest}`` (the ``default`` tenant's) and
``/t/{tenant}/agents/{name}/{rest}``: the request goes, with the caller's
``Authorization`` and body, to the server's ``/api/v1/agents/{id}/{rest}``, and the
answer streams back as it comes (an SSE stream is not buffered). An agent that is not
deployed answers the same 404 as one that does not exist.

Per app the router counts, for telemetry, the calls finished since the last
``take_counters`` (with errors: 5xx or no upstream, and their summed
duration) and the calls open now: plain dict updates on the event loop, no lock.

Slices (docs/slices.md) are called at ``POST /slices/{slice}/{entry}`` (the
``default`` tenant's) and ``POST /t/{tenant}/slices/{slice}/{entry}``: the JSON
body is the arguments (an object the keyword ones, an array the positional
ones), the answer the result as JSON. The call goes over ``aether.slices.wire``
to an endpoint of that entry point, this node's own instances first, round robin
among them, then the others round robin; a pool of connections per instance URL
carries the calls (multiplexed). ``X-Aether-Deadline-Ms`` (milliseconds from
now; else ``upstream_timeout``) is the call's deadline and ``traceparent`` its
trace. Errors are the envelope: 400 ``bad_request`` (with pydantic's errors in
``details``), 404 ``not_found`` (no such slice or entry point), 500 ``internal``
(the entry point raised), 503 ``no_endpoint``, 504 ``deadline_exceeded``, 502
``upstream_failed``. An instance that cannot be reached, or answers
``unavailable`` (draining), is skipped for the next; a call lost with its
connection after it was sent is retried on the next only when the entry point is
idempotent (its endpoint's schema says so). Per (slice, entry) the router counts
calls as it does per app (``take_entry_counters``).

The router serves plain HTTP, and with ``tls`` (``router_tls.TlsOptions``) the same
routes over HTTPS on a second port, with a certificate per host name chosen by SNI
and re-read when its files change (``router_tls``). At start it says what its plain
HTTP listener is: the demo's on loopback, a warning on any other address. With
``tls.redirect`` a plain HTTP request for a host name with a certificate of its own
is answered 308 to HTTPS (``/_aether/health`` excepted).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import itertools
import json
import logging
import re
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from aether import tracing
from aether.model.cluster import Endpoint
from aether.model.names import DEFAULT_TENANT, cluster_name, route_target
from aether.model.placements import AgentPlacement
from aether.node.router_tls import CertificateStore, TlsOptions
from aether.slices.wire import CallFailed, Connection

__all__ = ["CallCounter", "Router", "is_loopback", "plain_http_note", "slice_target"]

log = logging.getLogger("aether.node.router")

# Methods retried on another endpoint after their bytes were sent (RFC 9110
# 9.2.2 allows more; these are the ones that never change anything).
_RETRY_AFTER_SEND = frozenset({"GET", "HEAD", "OPTIONS"})

_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)


def _envelope(status: int, code: str, message: str, details: Any = None) -> web.Response:
    trace = uuid.uuid4().hex
    body: dict[str, Any] = {"code": code, "message": message, "trace_id": trace}
    if details is not None:
        body["details"] = details
    return web.Response(
        status=status,
        text=json.dumps(body, default=str),
        content_type="application/json",
        headers={"X-Trace-Id": trace},
    )


_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_ENTRY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
#: wire error code → (HTTP status, envelope code) of a slice call's answer
_SLICE_ERRORS = {
    "bad_request": (400, "bad_request"),
    "not_found": (404, "not_found"),
    "deadline_exceeded": (504, "deadline_exceeded"),
    "internal": (500, "internal"),
}
_POOL_MAX = 4  # connections per slice instance URL
_POOL_BUSY = 64  # calls in flight on each before another connection is opened
_CONNECT_TIMEOUT = 2.0


def is_loopback(host: str) -> bool:
    """Whether listening on ``host`` is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def plain_http_note(host: str, port: int, tls: TlsOptions | None) -> str:
    """What the router says at start about its plain HTTP listener."""
    where = f"{host}:{port}"
    if is_loopback(host) and tls is not None:
        return (
            f"router: plain HTTP on loopback {where} (this machine only), "
            f"HTTPS on {tls.host or host}:{tls.port}"
        )
    if is_loopback(host):
        return f"router: plain HTTP on loopback (demo) {where}: reachable from this machine only"
    if tls is None:
        return (
            f"router: serving plain HTTP on {where}: traffic is not encrypted; pass "
            "--tls-dir DIR --https-port PORT to serve HTTPS (DIR: HOST.crt + HOST.key per host)"
        )
    return (
        f"router: serving plain HTTP on {where} next to HTTPS on {tls.host or host}:{tls.port}: "
        f"traffic on "
        f"{where} is not encrypted"
        + ("" if tls.redirect else " (--https-redirect sends hosts with a certificate to HTTPS)")
    )


def slice_target(path: str) -> tuple[str, str, str] | None:
    """(tenant, slice, entry) of ``/slices/{slice}/{entry}`` or
    ``/t/{tenant}/slices/{slice}/{entry}`` (a query is ignored); None for any other path."""
    parts = path.partition("?")[0].split("/")
    tenant = DEFAULT_TENANT
    if len(parts) == 6 and parts[1] == "t":
        tenant = parts[2]
        parts = ["", *parts[3:]]
    if len(parts) != 4 or parts[1] != "slices":
        return None
    name, entry = parts[2], parts[3]
    if not (_LABEL.match(tenant) and _LABEL.match(name) and _ENTRY.match(entry)):
        return None
    return tenant, name, entry


@dataclass(frozen=True, slots=True)
class _Point:
    """One endpoint of a slice's entry point."""

    url: str
    node: str
    idempotent: bool


def agent_target(path: str) -> tuple[str, str, str] | None:
    """(tenant, agent name, the rest with its query) of ``/agents/{name}/{rest}`` or
    ``/t/{tenant}/agents/{name}/{rest}``; None for any other path."""
    bare, q, query = path.partition("?")
    tenant = DEFAULT_TENANT
    if bare.startswith("/t/"):
        tenant, _, rest = bare[len("/t/") :].partition("/")
        bare = "/" + rest
    if not bare.startswith("/agents/") or not tenant:
        return None
    name, _, tail = bare[len("/agents/") :].partition("/")
    if not name:
        return None
    return tenant, name, ("/" + tail if tail else "") + q + query


@contextlib.contextmanager
def _traced(method: str, app: str, url: str, headers: dict[str, str]) -> Iterator[dict[str, str]]:
    """A ``router: METHOD APP`` span around one try, a child of the request's own
    ``traceparent``; the headers to send carry the span's (the instance's parent). Does
    nothing when tracing is off: the caller's ``traceparent`` passes through as it is."""
    if not tracing.enabled():
        yield headers
        return
    incoming = next((v for k, v in headers.items() if k.lower() == "traceparent"), None)
    attributes = {"http.method": method, "http.url": url}
    with tracing.span(
        f"router: {method} {app}", parent=incoming, kind="client", attributes=attributes
    ):
        sent = {k: v for k, v in headers.items() if k.lower() != "traceparent"}
        tracing.inject(sent)
        yield sent


def _reason(exc: BaseException) -> str:
    """A short, address-free account of an upstream failure (for the envelope)."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return "connecting timed out"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "connection refused" if exc.errno == errno.ECONNREFUSED else "could not connect"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "connection closed before an answer"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "response body broken off"
    if isinstance(exc, aiohttp.ClientResponseError):
        return "malformed response"
    if isinstance(exc, OSError) and exc.errno == errno.ECONNRESET:
        return "connection reset"
    return "connection failed"


def _bound_port(site: web.TCPSite) -> int:
    """The port a site listening on port 0 got."""
    server = site._server
    assert server is not None
    sockets = getattr(server, "sockets", None)
    assert sockets
    return int(sockets[0].getsockname()[1])


class _Sent(Exception):
    """A request that failed after its bytes were sent (retried only if safe)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class CallCounter:
    """Calls of one app through this router in one telemetry interval."""

    __slots__ = ("calls", "errors", "total_ms")

    def __init__(self) -> None:
        self.calls = 0
        self.errors = 0  # 5xx answers, no endpoint to send to, answers broken off midway
        self.total_ms = 0.0


class Router:
    def __init__(
        self,
        host: str,
        port: int,
        *,
        upstream_timeout: float = 60.0,
        api_url: str | None = None,
        tls: TlsOptions | None = None,
    ) -> None:
        """``upstream_timeout``: seconds an instance has to send its response headers;
        ``api_url``: the server deployed agents' requests go to (None: none served);
        ``tls``: serve HTTPS too (``router_tls``; None: plain HTTP only)."""
        self.host = host
        self.port = port
        self.tls = tls
        self.https_port: int | None = None  # once started with ``tls``
        self.certificates = CertificateStore(tls.directory) if tls is not None else None
        self._watch: asyncio.Task[None] | None = None
        self.upstream_timeout = upstream_timeout
        self.api_url = api_url.rstrip("/") if api_url else None
        self._agents: dict[tuple[str, str], str] = {}  # (tenant, agent name) → agent id
        self._table: dict[str, list[str]] = {}
        self._known: frozenset[str] | None = None  # apps with a blueprint (None: unknown)
        self._cycles: dict[str, Iterator[int]] = {}
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._counters: dict[str, CallCounter] = {}
        self._in_flight: dict[str, int] = {}
        self._urls: frozenset[str] = frozenset()  # every URL in the table
        self.node: str | None = None  # this router's node: its slice instances go first
        self._slices: dict[tuple[str, str], list[_Point]] = {}  # (slice, entry) → endpoints
        self._slice_names: frozenset[str] = frozenset()  # slices with an ACTIVE endpoint
        self._slice_cycles: dict[tuple[str, str], Iterator[int]] = {}
        self._pools: dict[str, list[Connection]] = {}  # slice instance URL → connections
        self._entry_counters: dict[tuple[str, str], CallCounter] = {}
        self._entry_in_flight: dict[tuple[str, str], int] = {}
        self._closing: set[asyncio.Future[None]] = set()
        self._open: dict[str, int] = {}  # URL → requests sent to it and not yet answered
        # called when the table dropped a URL, or a dropped URL's last open request ended
        self.on_change: Callable[[], None] | None = None
        # an endpoint this node must not serve now (its own stateful instance while the
        # node's lease may have expired: see NodeDaemon.withheld)
        self.withhold: Callable[[str], bool] = lambda url: False

    def take_counters(self) -> tuple[dict[str, CallCounter], dict[str, int]]:
        """The counters since the previous take (then reset), and the calls open now."""
        taken, self._counters = self._counters, {}
        return taken, {app: n for app, n in self._in_flight.items() if n}

    def take_entry_counters(
        self,
    ) -> tuple[dict[tuple[str, str], CallCounter], dict[tuple[str, str], int]]:
        """Per (slice cluster name, entry point): the counters since the previous take
        (then reset), and the calls open now."""
        taken, self._entry_counters = self._entry_counters, {}
        return taken, {key: n for key, n in self._entry_in_flight.items() if n}

    def update(self, endpoints: Iterable[Endpoint], apps: Iterable[str] | None = None) -> None:
        """Serve ``endpoints``; ``apps`` (the apps that exist) turns 503 into 404 for others."""
        self._known = None if apps is None else frozenset(apps)
        table: dict[str, list[str]] = defaultdict(list)
        slices: dict[tuple[str, str], list[_Point]] = defaultdict(list)
        for ep in endpoints:
            if ep.is_slice:  # a slice's entry point: called over the wire, not HTTP
                slices[(ep.app, ep.entry)].append(_Point(ep.url, ep.node, ep.idempotent))
            else:
                table[ep.app].append(ep.url)
        new = {app: sorted(urls) for app, urls in table.items()}
        for app in set(new) | set(self._table):
            if new.get(app) != self._table.get(app):
                self._cycles[app] = itertools.count()
        self._table = new
        new_slices = {key: sorted(points, key=lambda p: p.url) for key, points in slices.items()}
        for key in set(new_slices) | set(self._slices):
            if new_slices.get(key) != self._slices.get(key):
                self._slice_cycles[key] = itertools.count()
        self._slices = new_slices
        self._slice_names = frozenset(app for app, _ in new_slices)
        urls = frozenset(url for app_urls in new.values() for url in app_urls) | frozenset(
            p.url for points in new_slices.values() for p in points
        )
        dropped = self._urls - urls
        self._urls = urls
        for url in dropped:
            self._close_pool(url)
        if dropped and self.on_change is not None:
            self.on_change()

    def update_agents(self, placements: Iterable[AgentPlacement]) -> None:
        """Serve the agents with replicas placed (the others answer 404)."""
        self._agents = {(p.tenant, p.name): p.agent_id for p in placements if p.nodes}

    def withdrawn_in_flight(self) -> dict[str, int]:
        """Requests open to URLs no longer in the table (URL → count)."""
        return {url: n for url, n in self._open.items() if url not in self._urls}

    @contextlib.contextmanager
    def _opened(self, url: str) -> Iterator[None]:
        """Count a request open to ``url`` while the block runs (relay included)."""
        self._open[url] = self._open.get(url, 0) + 1
        try:
            yield
        finally:
            left = self._open[url] - 1
            if left:
                self._open[url] = left
            else:
                del self._open[url]
                if url not in self._urls:
                    self._close_pool(url)
                    if self.on_change is not None:
                        self.on_change()  # the last request to a withdrawn endpoint ended

    def endpoints(self, app: str) -> list[str]:
        return list(self._table.get(app, []))

    def serving(self, app: str) -> list[str]:
        """The endpoints a request for ``app`` may go to now (none withheld)."""
        return [url for url in self._table.get(app, []) if not self.withhold(url)]

    async def start(self) -> None:
        app = web.Application(client_max_size=64 << 20)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self._session = aiohttp.ClientSession(
            # An idle connection is dropped after 4 s, before the instance's own
            # server drops it (5 s for uvicorn and Node): a POST is not retried
            # once sent, so it should not be sent on a connection about to close.
            connector=aiohttp.TCPConnector(limit=0, limit_per_host=256, keepalive_timeout=4.0),
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=2),
        )
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        if self.port == 0:
            self.port = _bound_port(site)
        log.warning("%s", plain_http_note(self.host, self.port, self.tls))
        if self.tls is not None and self.certificates is not None:
            self.certificates.reload()
            if not self.certificates.names:
                log.warning(
                    "router TLS: no HOST.crt + HOST.key pair in %s: every HTTPS handshake "
                    "fails until one is there",
                    self.tls.directory,
                )
            secure = web.TCPSite(
                self._runner,
                self.tls.host or self.host,
                self.tls.port,
                ssl_context=self.certificates.server_context,
                reuse_address=True,
            )
            await secure.start()
            self.https_port = self.tls.port or _bound_port(secure)
            log.info(
                "router: HTTPS on %s:%d for %s",
                self.tls.host or self.host,
                self.https_port,
                ", ".join(self.certificates.names) or "no host yet",
            )
            self._watch = asyncio.create_task(self._watch_certificates(), name="router-tls")

    def reload_certificates(self) -> None:
        """Read the changed certificate files now (SIGHUP), not at the next check."""
        if self.certificates is not None:
            self.certificates.reload()

    async def _watch_certificates(self) -> None:
        assert self.tls is not None
        while True:
            await asyncio.sleep(self.tls.reload_seconds)
            self.reload_certificates()

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
            self._watch = None
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()
        for url in list(self._pools):
            for conn in self._pools.pop(url):
                await conn.close()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.path == "/_aether/health":
            return web.json_response({"status": "ok", "apps": sorted(self._table)})
        secure = self._secure_url(request)
        if secure is not None:
            raise web.HTTPPermanentRedirect(secure)
        target = route_target(request.host, request.path_qs)
        agent = agent_target(request.path_qs) if target is None else None
        if agent is not None:
            return await self._forward_agent(request, *agent)
        called = slice_target(request.path_qs) if target is None else None
        if called is not None:
            return await self._call_slice(request, *called)
        if target is None:
            return _envelope(
                404,
                "not_found",
                "no app in this request: use /apps/{app}/... or Host: {app}.localhost "
                "(another tenant's app: /t/{tenant}/apps/{app}/... or Host: "
                "{app}.{tenant}.localhost); a slice: POST /slices/{slice}/{entry}",
            )
        app, path = target
        started = time.perf_counter()
        self._in_flight[app] = self._in_flight.get(app, 0) + 1
        status = 500
        try:
            response, broken = await self._forward(request, app, path)
            status = 502 if broken else response.status
            return response
        except asyncio.CancelledError:
            status = 499  # the client went away: not the app's failure
            raise
        finally:
            self._in_flight[app] -= 1
            counter = self._counters.get(app)
            if counter is None:
                counter = self._counters[app] = CallCounter()
            counter.calls += 1
            counter.total_ms += (time.perf_counter() - started) * 1000.0
            if status >= 500:
                counter.errors += 1

    def _secure_url(self, request: web.Request) -> str | None:
        """The HTTPS URL a plain HTTP request is redirected to (``--https-redirect``), if any:
        only for a host name with a certificate of its own."""
        if self.tls is None or not self.tls.redirect or request.secure:
            return None
        assert self.certificates is not None and self.https_port is not None
        host = request.host.rpartition(":")[0] if request.host.count(":") == 1 else request.host
        if not self.certificates.has_own(host):
            return None
        port = "" if self.https_port == 443 else f":{self.https_port}"
        return f"https://{host.lower()}{port}{request.path_qs}"

    async def _forward(
        self, request: web.Request, app: str, path: str
    ) -> tuple[web.StreamResponse, bool]:
        """The answer to ``request``, and whether its body broke off after it started."""
        if self._known is not None and app not in self._known:
            return _envelope(404, "not_found", f"no app {app!r} in this cluster"), False
        urls = self.serving(app)
        if not urls:
            return _envelope(
                503, "service_unavailable", f"app {app!r} has no ACTIVE endpoints"
            ), False
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        headers["X-Forwarded-Host"] = request.host
        headers["X-Forwarded-For"] = request.remote or ""
        headers["X-Forwarded-Proto"] = request.scheme
        start = next(self._cycles.setdefault(app, itertools.count()))
        method = request.method.upper()
        resend = method in _RETRY_AFTER_SEND  # one retry left after a sent request failed
        failure: BaseException | None = None
        for attempt in range(len(urls)):
            url = urls[(start + attempt) % len(urls)]
            with self._opened(url):
                answer = await self._attempt(request, app, path, method, url, headers, body)
            if isinstance(answer, tuple):
                return answer
            failure = answer
            if isinstance(failure, _Sent):
                failure = failure.error
                if not resend:
                    break
                resend = False
        assert failure is not None
        return _envelope(
            502, "upstream_failed", f"app {app!r} did not answer: {_reason(failure)}"
        ), False

    # -- slices ----------------------------------------------------------------

    async def _call_slice(
        self, request: web.Request, tenant: str, name: str, entry: str
    ) -> web.Response:
        app = cluster_name(name, tenant)
        key = (app, entry)
        started = time.perf_counter()
        self._entry_in_flight[key] = self._entry_in_flight.get(key, 0) + 1
        status = 500
        try:
            response = await self._slice_answer(request, app, name, entry)
            status = response.status
            return response
        except asyncio.CancelledError:
            status = 499  # the client went away
            raise
        finally:
            self._entry_in_flight[key] -= 1
            if not self._entry_in_flight[key]:
                del self._entry_in_flight[key]
            counter = self._entry_counters.get(key)
            if counter is None:
                counter = self._entry_counters[key] = CallCounter()
            counter.calls += 1
            counter.total_ms += (time.perf_counter() - started) * 1000.0
            if status >= 500:
                counter.errors += 1

    def _slice_points(self, app: str, entry: str) -> list[_Point]:
        """The endpoints to try, in order: this node's (round robin), then the others'."""
        points = [p for p in self._slices.get((app, entry), []) if not self.withhold(p.url)]
        if len(points) < 2:
            return points
        start = next(self._slice_cycles.setdefault((app, entry), itertools.count()))
        local = [p for p in points if p.node == self.node]
        remote = [p for p in points if p.node != self.node]
        return [
            *(local[(start + i) % len(local)] for i in range(len(local))),
            *(remote[(start + i) % len(remote)] for i in range(len(remote))),
        ]

    async def _slice_answer(
        self, request: web.Request, app: str, name: str, entry: str
    ) -> web.Response:
        if request.method.upper() != "POST":
            return _envelope(405, "method_not_allowed", "call a slice's entry point with POST")
        points = self._slice_points(app, entry)
        if not points:
            if app in self._slice_names:
                return _envelope(404, "not_found", f"slice {name!r} has no entry point {entry!r}")
            if app in self._table:
                return _envelope(404, "not_found", f"{name!r} is an app, not a slice")
            if self._known is not None and app not in self._known:
                return _envelope(404, "not_found", f"no slice {name!r} in this cluster")
            return _envelope(503, "no_endpoint", f"slice {name!r} has no ACTIVE instance")
        raw = await request.read()
        try:
            body = json.loads(raw) if raw.strip() else {}
        except ValueError as exc:
            return _envelope(400, "bad_request", f"the body is not JSON: {exc}")
        if not isinstance(body, dict | list):
            return _envelope(
                400,
                "bad_request",
                "the body must be a JSON object (keyword arguments) "
                "or array (positional arguments)",
            )
        args, kwargs = (body, None) if isinstance(body, list) else (None, body)
        deadline_ms = request.headers.get("X-Aether-Deadline-Ms")
        if deadline_ms is None:
            deadline = time.time() + self.upstream_timeout
        else:
            try:
                milliseconds = float(deadline_ms)
                if not 0 <= milliseconds < 1e10:
                    raise ValueError
            except ValueError:
                return _envelope(
                    400, "bad_request", "X-Aether-Deadline-Ms must be milliseconds from now"
                )
            deadline = time.time() + milliseconds / 1000.0
        trace = request.headers.get("traceparent")
        label = f"{name}.{entry}"
        reason = "no instance answered"
        for point in points:
            if time.time() >= deadline:
                return _envelope(504, "deadline_exceeded", f"{label}: no answer by the deadline")
            with self._opened(point.url):
                try:
                    conn = await self._connection(point.url)
                except (OSError, TimeoutError, ValueError) as exc:
                    log.warning("router: slice %s at %s: cannot connect: %s", label, point.url, exc)
                    reason = "could not connect"
                    continue  # never sent
                try:
                    result = await conn.call(entry, args, kwargs, deadline=deadline, trace=trace)
                except CallFailed as exc:
                    if exc.code != "unavailable":
                        status, code = _SLICE_ERRORS.get(exc.code, (502, "upstream_failed"))
                        return _envelope(status, code, f"{label}: {exc.message}", exc.details)
                    # answered "unavailable" on a live connection: not run (draining);
                    # lost with its connection after it was sent: it may have run
                    maybe_ran = exc.sent and conn.closed
                    log.warning("router: slice %s at %s: %s", label, point.url, exc.message)
                    reason = "connection lost" if maybe_ran else "instance unavailable"
                    if maybe_ran and not point.idempotent:
                        break
                    continue
            return web.json_response(result, dumps=lambda v: json.dumps(v, default=str))
        return _envelope(502, "upstream_failed", f"{label} did not answer: {reason}")

    async def _connection(self, url: str) -> Connection:
        """A pooled connection to the slice instance at ``url`` (the least busy one)."""
        pool = [c for c in self._pools.get(url, []) if not c.closed]
        self._pools[url] = pool
        best = min(pool, key=lambda c: c.in_flight, default=None)
        if best is not None and (best.in_flight < _POOL_BUSY or len(pool) >= _POOL_MAX):
            return best
        where = urlsplit(url)
        if where.hostname is None or where.port is None:
            raise ValueError(f"not an instance URL: {url!r}")
        conn = await Connection.open(where.hostname, where.port, timeout=_CONNECT_TIMEOUT)
        self._pools.setdefault(url, []).append(conn)
        return conn

    def _close_pool(self, url: str) -> None:
        """Close the connections to a withdrawn URL once no call is open on them."""
        if self._open.get(url):
            return  # its open calls end first (the last one closes it)
        for conn in self._pools.pop(url, []):
            task = asyncio.ensure_future(conn.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def _forward_agent(
        self, request: web.Request, tenant: str, name: str, rest: str
    ) -> web.StreamResponse:
        """A deployed agent's request, to the server's API as the caller."""
        agent_id = self._agents.get((tenant, name))
        if agent_id is None or self.api_url is None:
            return _envelope(404, "not_found", f"no agent {name!r} in this cluster")
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        headers["X-Forwarded-Host"] = request.host
        headers["X-Forwarded-For"] = request.remote or ""
        headers["X-Forwarded-Proto"] = request.scheme
        method = request.method.upper()
        path = f"/api/v1/agents/{agent_id}{rest}"
        label = f"agent {name}"
        answer = await self._attempt(request, label, path, method, self.api_url, headers, body)
        if isinstance(answer, tuple):
            return answer[0]
        failure = answer.error if isinstance(answer, _Sent) else answer
        return _envelope(502, "upstream_failed", f"{label} did not answer: {_reason(failure)}")

    async def _attempt(
        self,
        request: web.Request,
        app: str,
        path: str,
        method: str,
        url: str,
        headers: dict[str, str],
        body: bytes,
    ) -> tuple[web.StreamResponse, bool] | BaseException:
        """One try on ``url``: the answer, or the failure (``_Sent`` once bytes went out)."""
        with _traced(method, app, url + path, headers) as headers:
            assert self._session is not None
            try:
                async with asyncio.timeout(self.upstream_timeout):
                    upstream = await self._session.request(
                        method, url + path, headers=headers, data=body, allow_redirects=False
                    )
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
                # Never sent: any method may go to the next endpoint.
                log.warning("router: %s %s%s: cannot connect: %s", method, url, path, exc)
                return exc
            except TimeoutError:
                log.warning(
                    "router: %s %s%s: no answer within %gs",
                    method,
                    url,
                    path,
                    self.upstream_timeout,
                )
                return _envelope(
                    504,
                    "upstream_timeout",
                    f"app {app!r} did not answer within {self.upstream_timeout:g} s",
                ), False
            except (aiohttp.ClientError, OSError) as exc:
                # Sent, and failed before any response byte.
                log.warning(
                    "router: %s %s%s failed before an answer: %s: %s",
                    method,
                    url,
                    path,
                    type(exc).__name__,
                    exc,
                )
                return _Sent(exc)
            return await self._relay(request, upstream, app, url + path)

    async def _relay(
        self, request: web.Request, upstream: aiohttp.ClientResponse, app: str, target: str
    ) -> tuple[web.StreamResponse, bool]:
        async with upstream:
            headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP}
            if upstream.content_length is not None and upstream.content_length < (1 << 20):
                try:
                    async with asyncio.timeout(self.upstream_timeout):
                        data = await upstream.read()
                except TimeoutError:
                    log.warning(
                        "router: %s: body not complete within %gs", target, self.upstream_timeout
                    )
                    return _envelope(
                        504,
                        "upstream_timeout",
                        f"app {app!r} did not finish its answer within {self.upstream_timeout:g} s",
                    ), False
                except (aiohttp.ClientError, OSError) as exc:
                    log.warning(
                        "router: %s: answer broken: %s: %s", target, type(exc).__name__, exc
                    )
                    return _envelope(
                        502, "upstream_failed", f"app {app!r} did not answer: {_reason(exc)}"
                    ), False
                return web.Response(status=upstream.status, headers=headers, body=data), False
            response = web.StreamResponse(status=upstream.status, headers=headers)
            await response.prepare(request)
            while True:
                try:
                    chunk = await upstream.content.read(1 << 16)
                except (aiohttp.ClientError, OSError) as exc:
                    # Too late for an envelope: end the client's connection without
                    # the end of the body, so the answer reads as truncated.
                    log.warning(
                        "router: %s: answer broken after it started: %s: %s",
                        target,
                        type(exc).__name__,
                        exc,
                    )
                    if request.transport is not None:
                        request.transport.close()
                    return response, True
                if not chunk:
                    break
                await response.write(chunk)
            await response.write_eof()
            return response, False
