"""Which node a diagnostics bundle still waits for (services/diag.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from aether.client import ApiClient
from aether.server.services.diag import (
    PREFIX,
    DiagRequests,
    decode,
    follow,
    publish,
    published_without,
    withdraw,
)
from aether.store.sqlite import SqliteStateStore


def test_each_node_is_asked_until_it_answers_and_the_request_ends_when_all_have() -> None:
    async def scenario() -> None:
        requests = DiagRequests()
        ask = requests.ask({"n1", "n2"}, 600)
        assert requests.wanted("n1") == {"id": ask.id, "since": 600}
        assert requests.wanted("n3") is None
        assert not requests.answer(ask.id, "n3", {"log.txt": ""})  # not asked
        assert not requests.answer("unknown", "n1", {"log.txt": ""})
        assert requests.answer(ask.id, "n1", {"log.txt": "a"})
        assert requests.wanted("n1") is None and not ask.done.is_set()
        assert requests.answer(ask.id, "n2", {"log.txt": "b"})
        assert ask.done.is_set()
        requests.close(ask)
        assert requests.wanted("n2") is None
        assert not requests.answer(ask.id, "n2", {})  # too late: closed
        assert requests.ask(set(), 60).done.is_set()  # no node to wait for

    asyncio.run(scenario())


async def _until(check: Callable[[], bool], what: str) -> None:
    async with asyncio.timeout(5):
        while not check():
            await asyncio.sleep(0.01)
    assert check(), what


def test_every_server_sharing_the_store_asks_its_nodes_until_they_have_answered(
    tmp_path: Path,
) -> None:
    """Two servers on one state store: the one building the bundle publishes the request,
    the other asks its own nodes for their parts (to be sent to the builder), stops asking
    a node once the builder has its part, and forgets the request when it is withdrawn."""

    async def scenario() -> None:
        store = await SqliteStateStore.open(tmp_path / "state.db")
        builder, other = DiagRequests(), DiagRequests()
        await store.put(PREFIX + "garbled", b"not json")  # an unreadable key is skipped
        followers = [asyncio.create_task(follow(store, r)) for r in (builder, other)]
        try:
            ask = builder.ask({"n1", "n2"}, 600, "https://builder:7001")
            await publish(store, ask, 30)
            assert ask.lease and ask.unshared is None
            stored = await store.get(PREFIX + ask.id)
            assert stored is not None and json.loads(stored.value)["schema"] == 1
            newer = {**json.loads(stored.value), "schema": 2}  # a newer server's: skipped
            assert decode(PREFIX + "x", json.dumps(newer).encode()) is None
            wanted = {"id": ask.id, "since": 600, "to": "https://builder:7001"}
            await _until(lambda: other.wanted("n2") == wanted, "the other server asks n2")
            assert other.wanted("n1") == wanted and other.wanted("n3") is None
            assert not other.answer(ask.id, "n2", {"log.txt": ""})  # not built there

            assert builder.answer(ask.id, "n1", {"log.txt": "a"})
            await published_without(store, ask, "n1")
            await _until(lambda: other.wanted("n1") is None, "n1 is no longer asked")
            assert other.wanted("n2") == wanted
            assert builder.wanted("n1") is None  # the builder's own copy, at once

            builder.close(ask)
            await withdraw(store, ask)
            await _until(lambda: other.wanted("n2") is None, "the request is withdrawn")
            assert (await store.get(PREFIX + ask.id)) is None
            assert set(other.asked) == set(builder.asked) == set()
        finally:
            for task in followers:
                task.cancel()
            await asyncio.gather(*followers, return_exceptions=True)
            await store.close()

    asyncio.run(scenario())


def test_a_request_the_store_cannot_take_is_still_asked_by_its_builder(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = await SqliteStateStore.open(tmp_path / "state.db")
        await store.close()  # every call now fails as an unreachable store does
        requests = DiagRequests()
        ask = requests.ask({"n1"}, 60, "https://builder:7001")
        await publish(store, ask, 30)
        assert ask.unshared and "could not be shared" in ask.unshared
        assert requests.wanted("n1") == {"id": ask.id, "since": 60, "to": "https://builder:7001"}
        await withdraw(store, ask)  # nothing to withdraw: no error

    asyncio.run(scenario())


def test_a_node_sends_its_part_to_another_server_over_tls_only() -> None:
    """``to`` comes from a heartbeat answer: the node's credential never goes over
    plain HTTP to it (nothing is sent; the node logs the error and is listed missing)."""

    async def scenario() -> None:
        async with ApiClient("http://127.0.0.1:9", "ae_node_credential") as client:
            with pytest.raises(ValueError, match="over TLS only"):
                await client.send_diag_part("n1", "abc", {"log.txt": ""}, "http://127.0.0.1:9")

    asyncio.run(scenario())
