"""Watching the cluster: reconnecting to the next member, idle probes, compaction."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx

from aether.store.base import (
    CompactedError,
    Event,
    EventType,
    StoreError,
    StoreUnavailableError,
)
from aether.store.etcd.transport import EtcdTransport
from aether.store.etcd.wire import (
    _DEADLINE_EXCEEDED,
    _TOKEN_REFUSED,
    _UNAVAILABLE,
    EtcdAuthError,
    _b64,
    _credentials_needed,
    _describe,
    _End,
    _TokenRefused,
)

__all__ = ["EtcdWatch"]

log = logging.getLogger("aether.store.etcd")


class EtcdWatch(EtcdTransport):
    """Watch streams over the transport."""

    _watch_idle: float
    _watches: set[asyncio.Task[None]]

    async def watch(self, prefix: str, from_revision: int) -> AsyncIterator[Event]:
        """Events from an etcd watch stream, fed through a queue by a reader task.

        The task lets :meth:`close` end a watch whose consumer is waiting.
        """
        self._check_open()
        queue: asyncio.Queue[list[Event] | BaseException | _End] = asyncio.Queue()
        task = asyncio.create_task(
            self._watch_loop(prefix, max(from_revision, 1), queue), name=f"etcd watch {prefix!r}"
        )
        self._watches.add(task)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, _End):
                    return
                if isinstance(item, BaseException):
                    raise item
                for event in item:
                    yield event
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            self._watches.discard(task)

    async def _watch_loop(
        self,
        prefix: str,
        next_revision: int,
        queue: asyncio.Queue[list[Event] | BaseException | _End],
    ) -> None:
        body = self._range_body(prefix, True)
        failures: list[str] = []
        renewed = False  # a token was renewed for this connection attempt already
        try:
            while True:
                index = self._current
                endpoint = self.endpoints[index]
                if self._username and self._token is None:
                    await self._renew_token(None)
                token = self._token
                request = {
                    "create_request": {
                        "key": body["key"],
                        "range_end": body["range_end"],
                        "start_revision": str(next_revision),
                        "prev_kv": True,
                        "progress_notify": True,
                    }
                }
                try:
                    async for events in self._watch_stream(index, request, token):
                        failures.clear()
                        renewed = False
                        if events:
                            next_revision = events[-1].kv.mod_revision + 1
                            queue.put_nowait(events)
                    failures.append(f"{endpoint}: watch stream ended")
                except _TokenRefused as refused:
                    if not self._username:
                        raise _credentials_needed(refused) from None
                    if renewed:
                        raise EtcdAuthError(
                            f"etcd refused a fresh token for user {self._username!r} on a "
                            f"watch: {refused.message}"
                        ) from None
                    await self._renew_token(token)
                    renewed = True
                    continue  # the same member, with the new token
                except (
                    httpx.TransportError,
                    ssl.SSLError,
                    StoreUnavailableError,
                    TimeoutError,
                ) as e:
                    failures.append(f"{endpoint}: {_describe(e)}")
                # this member is gone, frozen or cut us off: resume on the next one
                self._failed(index)
                if len(failures) >= len(self.endpoints):
                    raise StoreUnavailableError("etcd watch: " + "; ".join(failures))
                if len(failures) > 1:
                    await asyncio.sleep(self._retry_interval)
        except (StoreError, ValueError) as e:
            queue.put_nowait(e)
        finally:
            queue.put_nowait(_End())

    async def _watch_stream(
        self, index: int, request: dict[str, Any], token: str | None
    ) -> AsyncIterator[list[Event]]:
        """One watch stream on one member: each response's events (``[]`` for the rest).

        Ends when the member ends the stream; raises ``StoreUnavailableError`` when
        the member stops answering (silent past the idle timeout and unable to
        answer a probe), ``_TokenRefused`` when it does not take ``token``.
        """
        endpoint = self.endpoints[index]
        headers = {"Authorization": token} if token else {}
        built = self._client.build_request(
            "POST",
            endpoint + "/v3/watch",
            json=request,
            headers=headers,
            timeout=httpx.Timeout(self._timeout, read=None),  # idle streams are normal
        )
        async with asyncio.timeout(self._timeout):  # a frozen member never answers at all
            response = await self._client.send(built, stream=True)
        lines = response.aiter_lines()
        pending: asyncio.Future[str] | None = None
        try:
            if response.status_code != 200:
                await response.aread()
                code, message = self._error(response)
                if self._refuses_token(code, message):
                    raise _TokenRefused(token, message)
                raise self._mapped(code, message)
            while True:
                pending = asyncio.ensure_future(anext(lines))
                while not (await asyncio.wait({pending}, timeout=self._watch_idle))[0]:
                    if not await self._alive(index):
                        raise StoreUnavailableError(
                            f"etcd {endpoint} stopped answering (silent watch, probe timed out)"
                        )
                try:
                    line = pending.result()
                except StopAsyncIteration:
                    return
                finally:
                    pending = None
                if not line.strip():
                    continue
                self._answered[index] = time.monotonic()
                result = self._decode(endpoint, line)
                compacted = int(result.get("compact_revision", 0))
                if compacted:
                    start = int(request["create_request"]["start_revision"])
                    raise CompactedError(start, compacted)
                if result.get("canceled"):
                    reason = str(result.get("cancel_reason", ""))
                    if any(text in reason for text in _TOKEN_REFUSED):
                        raise _TokenRefused(token, reason)
                    if "permission denied" in reason:
                        raise EtcdAuthError(
                            f"etcd watch refused: {reason} (the etcd user needs read on the "
                            "key prefix)"
                        )
                    raise StoreError(f"etcd watch canceled: {reason}")
                yield [self._event(e) for e in result.get("events") or []]
        finally:
            if pending is not None:
                pending.cancel()
                await asyncio.gather(pending, return_exceptions=True)
            await response.aclose()

    async def _alive(self, index: int) -> bool:
        """Whether the member answers at all (recently, or to a short probe now)."""
        answered = self._answered.get(index)
        if answered is not None and time.monotonic() - answered < self._watch_idle:
            return True
        endpoint = self.endpoints[index]
        body = {"key": _b64(self._prefix or b"\0"), "count_only": True}
        try:
            response = await self._client.post(
                endpoint + "/v3/kv/range",
                json=body,
                headers=self._headers(),
                timeout=min(self._timeout, self._watch_idle),
            )
        except (httpx.TransportError, ssl.SSLError):
            return False
        if response.status_code == 200:
            self._answered[index] = time.monotonic()
            return True
        code, _ = self._error(response)  # any answer but "unavailable" shows a working member
        return code not in (_UNAVAILABLE, _DEADLINE_EXCEEDED) and response.status_code < 500

    def _event(self, data: dict[str, Any]) -> Event:
        kind = EventType.DELETE if data.get("type") == "DELETE" else EventType.PUT
        kv = self._kv(data.get("kv") or {})
        prev = data.get("prev_kv")
        return Event(kind, kv, self._kv(prev) if prev else None)
