"""The model client: its pure parsing without a network, then over HTTP against the
scripted model server (a real OpenAI-compatible server on loopback)."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from aether.agents.llm import (
    ChatResult,
    ContentDelta,
    Done,
    FinishDelta,
    ModelClient,
    ModelEndpoint,
    SseDecoder,
    StreamAssembler,
    ToolCall,
    ToolCallDelta,
    Usage,
    UsageDelta,
    chunk_deltas,
    events,
    parse_completion,
    parse_embeddings,
)
from aether.errors import BadGatewayError
from tests.support.model_server import call, call_tools, embed, fail, model_server, say

SEARCH = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "search the docs",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string"}},
            "required": ["query"],
        },
    },
}

# -- pure parsing ----------------------------------------------------------------------


def test_a_completion_with_text_tool_calls_and_usage() -> None:
    body = {
        "choices": [
            {
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "search", "arguments": '{"query": "x"}'},
                        }
                    ],
                },
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17},
    }
    assert parse_completion("m", body) == ChatResult(
        content="",
        tool_calls=[ToolCall(id="c1", name="search", arguments={"query": "x"})],
        finish_reason="tool_calls",
        usage=Usage(prompt_tokens=12, completion_tokens=5),
    )


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"object": "list"}, "not a chat completion"),
        ({"choices": []}, "not a chat completion"),
        ({"choices": [{"message": {"content": 3}}]}, "not text"),
        (
            {"choices": [{"message": {"tool_calls": [{"function": {"arguments": "{}"}}]}}]},
            "without a function name",
        ),
        (
            {
                "choices": [
                    {"message": {"tool_calls": [{"function": {"name": "f", "arguments": "{"}}]}}
                ]
            },
            "not JSON",
        ),
        (
            {
                "choices": [
                    {"message": {"tool_calls": [{"function": {"name": "f", "arguments": "[1]"}}]}}
                ]
            },
            "not a JSON object",
        ),
    ],
)
def test_a_malformed_completion_is_a_bad_answer_naming_the_model(
    body: dict[str, Any], says: str
) -> None:
    with pytest.raises(BadGatewayError) as caught:
        parse_completion("gpt", body)
    assert caught.value.code == "model_bad_answer" and caught.value.status == 502
    assert "model 'gpt'" in str(caught.value) and says in str(caught.value)


def test_sse_events_join_data_lines_and_skip_comments() -> None:
    lines = [": keep-alive", 'data: {"a": 1}', "", "event: x", "data: one", "data: two", ""]
    assert events(lines) == ['{"a": 1}', "one\ntwo"]
    decoder = SseDecoder()
    assert decoder.feed("data:[DONE]") is None
    assert decoder.finish() == "[DONE]"  # a stream that ends without its blank line
    assert decoder.finish() is None


def test_chunks_become_deltas_and_assemble_tool_calls_by_index() -> None:
    chunks = [
        {"choices": [{"delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
        {"choices": [{"delta": {"content": "Let me "}}]},
        {"choices": [{"delta": {"content": "look."}}]},
        # two calls, their fragments interleaved; id and name come once
        {
            "choices": [
                {
                    "delta": {
                        "tool_calls": [
                            {"index": 0, "id": "a", "function": {"name": "search", "arguments": ""}}
                        ]
                    }
                }
            ]
        },
        {
            "choices": [
                {
                    "delta": {
                        "tool_calls": [
                            {
                                "index": 1,
                                "id": "b",
                                "function": {"name": "read", "arguments": '{"pa'},
                            }
                        ]
                    }
                }
            ]
        },
        {
            "choices": [
                {"delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"query": '}}]}}
            ]
        },
        {
            "choices": [
                {"delta": {"tool_calls": [{"index": 1, "function": {"arguments": 'th": "/x"}'}}]}}
            ]
        },
        {
            "choices": [
                {"delta": {"tool_calls": [{"index": 0, "function": {"arguments": '"aether"}'}}]}}
            ]
        },
        {"choices": [{"delta": {}, "finish_reason": "tool_calls"}]},
        {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4}},
    ]
    deltas = [d for c in chunks for d in chunk_deltas("m", c)]
    assert deltas[:3] == [
        ContentDelta("Let me "),
        ContentDelta("look."),
        ToolCallDelta(index=0, id="a", name="search", arguments=""),
    ]
    assert deltas[-2:] == [FinishDelta("tool_calls"), UsageDelta(Usage(9, 4))]
    assembler = StreamAssembler("m")
    for delta in deltas:
        assembler.add(delta)
    assert assembler.result() == ChatResult(
        content="Let me look.",
        tool_calls=[
            ToolCall(id="a", name="search", arguments={"query": "aether"}),
            ToolCall(id="b", name="read", arguments={"path": "/x"}),
        ],
        finish_reason="tool_calls",
        usage=Usage(9, 4),
    )


def test_a_stream_with_broken_arguments_or_an_error_chunk_fails_clearly() -> None:
    assembler = StreamAssembler("m")
    assembler.add(ToolCallDelta(index=0, id="a", name="f", arguments='{"x": '))
    with pytest.raises(BadGatewayError, match="not JSON") as caught:
        assembler.result()
    assert caught.value.code == "model_bad_answer"
    with pytest.raises(BadGatewayError, match="mid-stream") as failed:
        chunk_deltas("m", {"error": {"message": "overloaded"}})
    assert failed.value.code == "model_unavailable"
    with pytest.raises(BadGatewayError, match="without a delta"):
        chunk_deltas("m", {"choices": [{"index": 0}]})


def test_embeddings_come_back_in_input_order() -> None:
    body = {"data": [{"index": 1, "embedding": [0, 1]}, {"index": 0, "embedding": [1, 0]}]}
    assert parse_embeddings("m", body, 2).vectors == [[1.0, 0.0], [0.0, 1.0]]
    with pytest.raises(BadGatewayError, match="1 embeddings for 2 inputs"):
        parse_embeddings("m", {"data": [{"embedding": [1]}]}, 2)


# -- over HTTP, against the scripted model server --------------------------------------


def _endpoint(url: str, key: str | None = "sk-test-123", **options: Any) -> ModelEndpoint:
    return ModelEndpoint(name="local", base_url=url, model_id="test-model", api_key=key, **options)


async def test_chat_sends_the_tools_and_the_key_and_parses_the_answer() -> None:
    with model_server(call_tools(call("search", query="aether")), api_key="sk-test-123") as llm:
        async with ModelClient(_endpoint(llm.url)) as client:
            messages = [{"role": "user", "content": "find aether docs"}]
            result = await client.chat(messages, tools=[SEARCH], max_tokens=50)
    assert result.tool_calls == [
        ToolCall(id="call_1_0", name="search", arguments={"query": "aether"})
    ]
    assert result.finish_reason == "tool_calls"
    assert result.usage == Usage(prompt_tokens=3, completion_tokens=2)
    (sent,) = llm.requests_to("/v1/chat/completions")
    assert sent.authorization == "Bearer sk-test-123"
    assert sent.body["tools"] == [SEARCH] and sent.body["max_tokens"] == 50
    assert sent.body["model"] == "test-model" and "stream" not in sent.body


async def test_streaming_yields_pieces_then_the_assembled_result() -> None:
    turns = [say("Hello there, streaming world"), call_tools(call("search", query="a b c"))]
    with model_server(*turns) as llm:
        async with ModelClient(_endpoint(llm.url, key=None)) as client:
            messages = [{"role": "user", "content": "hi"}]
            deltas = [d async for d in client.stream_chat(messages)]
            second = await client.chat(messages, tools=[SEARCH], stream=True)
    pieces = [d.text for d in deltas if isinstance(d, ContentDelta)]
    assert len(pieces) > 1 and "".join(pieces) == "Hello there, streaming world"
    assert isinstance(deltas[-1], Done)
    assert deltas[-1].result.content == "Hello there, streaming world"
    assert deltas[-1].result.usage == Usage(prompt_tokens=1, completion_tokens=4)
    assert second.tool_calls == [ToolCall("call_2_0", "search", {"query": "a b c"})]
    first = llm.chats[0]
    assert first["stream"] is True and first["stream_options"] == {"include_usage": True}
    assert llm.chats[0]["messages"] == [{"role": "user", "content": "hi"}]


async def test_embeddings_are_the_server_s_vectors() -> None:
    with model_server() as llm:
        async with ModelClient(_endpoint(llm.url, key=None)) as client:
            result = await client.embeddings(["red apples", "green pears"])
    assert result.vectors == [
        pytest.approx(embed("red apples")),
        pytest.approx(embed("green pears")),
    ]
    assert result.usage is not None and result.usage.prompt_tokens == 4


async def test_a_wrong_key_is_a_clear_error_that_never_shows_the_key(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    with model_server(say("never"), api_key="sk-right") as llm:
        async with ModelClient(_endpoint(llm.url, key="sk-wrong-secret")) as client:
            with pytest.raises(BadGatewayError) as caught:
                await client.chat([{"role": "user", "content": "hi"}])
            with pytest.raises(BadGatewayError) as streamed:
                await client.chat([{"role": "user", "content": "hi"}], stream=True)
    for error in (caught.value, streamed.value):
        assert error.code == "model_unauthorized"
        assert "model 'local'" in str(error) and "refused the API key" in str(error)
        assert "sk-wrong-secret" not in str(error) and "sk-wrong-secret" not in repr(error)
    assert "sk-wrong-secret" not in caplog.text
    assert "sk-wrong-secret" not in repr(_endpoint(llm.url, key="sk-wrong-secret"))
    assert llm.remaining == 1  # refused before the script


async def test_a_provider_echoing_the_key_has_it_scrubbed() -> None:
    with model_server(fail(400, "bad request for key sk-echoed-key")) as llm:
        async with ModelClient(_endpoint(llm.url, key="sk-echoed-key")) as client:
            with pytest.raises(BadGatewayError) as caught:
                await client.chat([{"role": "user", "content": "hi"}])
    assert caught.value.code == "model_rejected"
    assert "sk-echoed-key" not in str(caught.value) and "***" in str(caught.value)


@pytest.mark.parametrize(
    ("turn", "code", "says"),
    [
        (fail(503, "overloaded"), "model_unavailable", "overloaded"),
        (fail(429, "slow down"), "model_unavailable", "slow down"),
        (fail(404, "no such model"), "model_rejected", "no such model"),
        (say("x", raw="<html>oops</html>"), "model_bad_answer", "not JSON"),
        (say("x", raw=json.dumps({"choices": "no"})), "model_bad_answer", "not a chat"),
        (say("late", delay=2.0), "model_timeout", "within 0.5s"),
    ],
)
async def test_provider_failures_map_to_codes(turn: Any, code: str, says: str) -> None:
    with model_server(turn) as llm:
        async with ModelClient(_endpoint(llm.url, timeout=0.5)) as client:
            with pytest.raises(BadGatewayError) as caught:
                await client.chat([{"role": "user", "content": "hi"}])
    assert caught.value.code == code and caught.value.status == 502
    assert says in str(caught.value) and "model 'local'" in str(caught.value)


async def test_a_stream_that_stalls_times_out() -> None:
    with model_server(say("slowly now", chunk_delay=1.0)) as llm:
        async with ModelClient(_endpoint(llm.url, timeout=0.4)) as client:
            with pytest.raises(BadGatewayError) as caught:
                await client.chat([{"role": "user", "content": "hi"}], stream=True)
    assert caught.value.code == "model_timeout"


async def test_an_unreachable_base_url() -> None:
    from aether.ports import free_port

    endpoint = _endpoint(f"http://127.0.0.1:{free_port()}/v1")
    async with ModelClient(endpoint) as client:
        with pytest.raises(BadGatewayError) as caught:
            await client.chat([{"role": "user", "content": "hi"}])
    assert caught.value.code == "model_unreachable" and "cannot reach" in str(caught.value)


async def test_the_script_running_out_fails_loudly() -> None:
    with model_server(say("one")) as llm:
        async with ModelClient(_endpoint(llm.url, key=None)) as client:
            assert (await client.chat([{"role": "user", "content": "a"}])).content == "one"
            with pytest.raises(BadGatewayError, match="script ran out"):
                await client.chat([{"role": "user", "content": "b"}])


def test_the_api_client_gets_the_same_error_back() -> None:
    """An envelope with a model_* code becomes a BadGatewayError with that code; a
    proxy's bare 502 (no envelope) stays an internal error."""
    from aether.errors import InternalError, error_for

    error = error_for(502, "model_timeout", "model 'm': no answer")
    assert isinstance(error, BadGatewayError) and error.code == "model_timeout"
    bare = error_for(502, None, "HTTP 502 Bad Gateway")
    assert isinstance(bare, InternalError) and bare.code == "internal"
