"""One poll of the newest event ids per server, however many streams wait on it."""

from __future__ import annotations

import asyncio

import pytest

from aether.server.services.event_heads import EventHeads, Heads, passed


def test_passed_looks_only_at_the_sources_a_stream_waits_on() -> None:
    assert passed((1, 2, 3, 4), (1, 2, 3, 3))
    assert not passed((1, 2, 3, 4), (1, 2, 3, None))
    assert passed((5, 0, 0, 0), (4, None, None, None))
    assert not passed((5, 9, 9, 9), (5, None, None, None))


async def test_many_waiters_share_one_reader_and_all_wake_on_a_new_row() -> None:
    heads: list[Heads] = [(1, 1, 1, 1)]
    reads = 0

    async def read() -> Heads:
        nonlocal reads
        reads += 1
        return heads[-1]

    shared = EventHeads(interval=0.05)
    waiters = [asyncio.create_task(shared.wait_past(read, (1, 1, 1, None))) for _ in range(50)]
    await asyncio.sleep(0.5)
    assert not any(w.done() for w in waiters)
    # fifty idle streams for half a second: about ten reads, not five hundred
    assert reads <= 15, reads
    heads.append((1, 2, 1, 1))  # a new decision
    await asyncio.wait_for(asyncio.gather(*waiters), 2)
    await asyncio.sleep(0.2)
    after = reads
    await asyncio.sleep(0.3)
    assert reads == after  # no one waits: the reader stopped


async def test_a_failed_read_ends_every_waiter() -> None:
    async def read() -> Heads:
        raise ConnectionError("records database unreachable")

    shared = EventHeads(interval=0.05)
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(shared.wait_past(read, (0, 0, 0, 0)), 2)
