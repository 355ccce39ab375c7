"""Which node a diagnostics bundle still waits for (services/diag.py)."""

from __future__ import annotations

import asyncio

from aether.server.services.diag import DiagRequests


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
