"""An OpenAI-compatible model client: chat completions (with tool calls and streaming)
and embeddings, over httpx.

One protocol covers OpenAI, vLLM, Ollama, llama.cpp's server and LM Studio: ``POST
{base_url}/chat/completions`` and ``POST {base_url}/embeddings``, where ``base_url``
ends in ``/v1`` as with the OpenAI SDK.

The parsing is pure and tested without a network: :func:`parse_completion` (a whole
answer), :class:`SseDecoder` (server-sent events, line by line), :func:`chunk_deltas`
(one streamed chunk) and :class:`StreamAssembler` (the deltas back into one
:class:`ChatResult`, tool-call fragments joined by index). :class:`ModelClient` is the
thin HTTP part.

Failures are :class:`aether.errors.BadGatewayError` with a code saying which (see
:data:`CODES`) and a message naming the model. The API key never appears in a message
or a log line: it is kept out of reprs and scrubbed from what a provider answers.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx

from aether.agents.egress import EgressTransport
from aether.errors import BadGatewayError

__all__ = [
    "CODES",
    "ChatResult",
    "ContentDelta",
    "Done",
    "EmbeddingResult",
    "ModelClient",
    "ModelEndpoint",
    "SseDecoder",
    "StreamAssembler",
    "StreamDelta",
    "ToolCall",
    "ToolCallDelta",
    "Usage",
    "UsageDelta",
    "chunk_deltas",
    "parse_completion",
    "parse_embeddings",
]

#: the error codes of a failed call, and what each means
CODES = {
    "model_unauthorized": "the provider refused the API key (HTTP 401 or 403)",
    "model_rejected": "the provider refused the request (another 4xx: the model id, the input)",
    "model_unavailable": "the provider failed or is overloaded (5xx, 429)",
    "model_timeout": "the provider did not answer in time",
    "model_unreachable": "no connection to the base URL",
    "model_bad_answer": "the answer is not an OpenAI-compatible one",
}
DONE = "[DONE]"
_QUOTE = 300  # longest quotation of a provider's answer in a message


@dataclass(frozen=True)
class ModelEndpoint:
    """Where a model is and how to call it. ``api_key`` is kept out of the repr."""

    name: str  # the catalog name (model://NAME), used in messages
    base_url: str  # …/v1
    model_id: str  # what the provider calls it
    api_key: str | None = field(default=None, repr=False)
    timeout: float = 60.0  # seconds to connect, and between two bytes of the answer
    #: the egress guard: None, none (a client of the operator's own choosing); else the
    #: loopback/private CIDRs the cluster allows (``aether.agents.egress``): the base
    #: URL's addresses are checked on every call and the checked one is connected to
    allow_private: tuple[str, ...] | None = None

    def url(self, path: str) -> str:
        return self.base_url.rstrip("/") + path


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: dict[str, Any]  # parsed from the JSON text the model wrote


@dataclass(frozen=True)
class ChatResult:
    content: str
    tool_calls: list[ToolCall]
    finish_reason: str | None
    usage: Usage | None


@dataclass(frozen=True)
class ContentDelta:
    text: str


@dataclass(frozen=True)
class ToolCallDelta:
    """A fragment of the tool call at ``index``: its id and name come once, its
    arguments in pieces to concatenate."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(frozen=True)
class FinishDelta:
    reason: str


@dataclass(frozen=True)
class UsageDelta:
    usage: Usage


@dataclass(frozen=True)
class Done:
    """The last item of a stream: everything assembled."""

    result: ChatResult


StreamDelta = ContentDelta | ToolCallDelta | FinishDelta | UsageDelta | Done


@dataclass(frozen=True)
class EmbeddingResult:
    vectors: list[list[float]]  # one per input text, in order
    usage: Usage | None


# -- pure parsing ----------------------------------------------------------------------


def _bad(name: str, what: str) -> BadGatewayError:
    return BadGatewayError(f"model {name!r}: {what}", code="model_bad_answer")


def _usage(raw: Any) -> Usage | None:
    if not isinstance(raw, dict):
        return None
    prompt, completion = raw.get("prompt_tokens", 0), raw.get("completion_tokens", 0)
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    return Usage(prompt_tokens=prompt, completion_tokens=completion)


def _arguments(name: str, text: str) -> dict[str, Any]:
    """A tool call's arguments: JSON text of an object (empty text: no arguments)."""
    if not text.strip():
        return {}
    try:
        parsed = json.loads(text)
    except ValueError:
        raise _bad(name, f"tool-call arguments are not JSON: {text[:_QUOTE]!r}") from None
    if not isinstance(parsed, dict):
        raise _bad(name, f"tool-call arguments are not a JSON object: {text[:_QUOTE]!r}")
    return parsed


def _tool_call(name: str, raw: Any) -> ToolCall:
    try:
        function = raw["function"]
        call_name = function["name"]
        arguments = function.get("arguments") or ""
        call_id = raw.get("id") or ""
    except (KeyError, TypeError, AttributeError):
        raise _bad(name, f"a tool call without a function name: {str(raw)[:_QUOTE]}") from None
    if not isinstance(call_name, str) or not isinstance(arguments, str | dict):
        raise _bad(name, f"a malformed tool call: {str(raw)[:_QUOTE]}")
    parsed = arguments if isinstance(arguments, dict) else _arguments(name, arguments)
    return ToolCall(id=str(call_id), name=call_name, arguments=parsed)


def parse_completion(name: str, body: Any) -> ChatResult:
    """A non-streamed chat completion (``name``: the model, for messages)."""
    try:
        choice = body["choices"][0]
        message = choice["message"]
    except (KeyError, IndexError, TypeError):
        raise _bad(name, f"not a chat completion: {str(body)[:_QUOTE]}") from None
    if not isinstance(message, dict):
        raise _bad(name, f"the message is not an object: {str(message)[:_QUOTE]}")
    content = message.get("content") or ""
    if not isinstance(content, str):
        raise _bad(name, f"the message content is not text: {str(content)[:_QUOTE]}")
    calls = message.get("tool_calls") or []
    if not isinstance(calls, list):
        raise _bad(name, f"tool_calls is not a list: {str(calls)[:_QUOTE]}")
    reason = choice.get("finish_reason")
    return ChatResult(
        content=content,
        tool_calls=[_tool_call(name, c) for c in calls],
        finish_reason=reason if isinstance(reason, str) else None,
        usage=_usage(body.get("usage")),
    )


def parse_embeddings(name: str, body: Any, count: int) -> EmbeddingResult:
    """An embeddings answer: ``count`` vectors, put back in input order by ``index``."""
    try:
        items = sorted(body["data"], key=lambda item: int(item.get("index", 0)))
        vectors = [[float(x) for x in item["embedding"]] for item in items]
    except (KeyError, TypeError, ValueError, AttributeError):
        raise _bad(name, f"not an embeddings answer: {str(body)[:_QUOTE]}") from None
    if len(vectors) != count:
        raise _bad(name, f"{len(vectors)} embeddings for {count} inputs")
    return EmbeddingResult(vectors=vectors, usage=_usage(body.get("usage")))


class SseDecoder:
    """Server-sent events, fed one line at a time (without its line ending).

    :meth:`feed` returns the data of an event when a blank line ends it (several
    ``data:`` lines joined by newlines), else None; comments and other fields are
    skipped.
    """

    def __init__(self) -> None:
        self._data: list[str] = []

    def feed(self, line: str) -> str | None:
        if not line:
            if not self._data:
                return None
            data, self._data = "\n".join(self._data), []
            return data
        if line.startswith(":"):
            return None
        fieldname, _, value = line.partition(":")
        if fieldname == "data":
            self._data.append(value[1:] if value.startswith(" ") else value)
        return None

    def finish(self) -> str | None:
        """The last event's data when the stream ended without a blank line."""
        return self.feed("")


def events(lines: Iterable[str]) -> list[str]:
    """Every event's data in ``lines`` (a whole stream at once; for tests and small
    answers)."""
    decoder = SseDecoder()
    found = [data for line in lines if (data := decoder.feed(line)) is not None]
    last = decoder.finish()
    return found + ([last] if last is not None else [])


def chunk_deltas(name: str, chunk: Any) -> list[StreamDelta]:
    """The deltas of one streamed chunk (``chat.completion.chunk``), in order: content,
    tool-call fragments, the finish reason, the usage (the last chunk, with
    ``stream_options.include_usage``, has usage and no choices)."""
    if not isinstance(chunk, dict):
        raise _bad(name, f"a stream chunk is not an object: {str(chunk)[:_QUOTE]}")
    if "error" in chunk:
        raise BadGatewayError(
            f"model {name!r}: the provider failed mid-stream: {str(chunk['error'])[:_QUOTE]}",
            code="model_unavailable",
        )
    found: list[StreamDelta] = []
    for choice in chunk.get("choices") or []:
        found += _choice_deltas(name, choice)
    usage = _usage(chunk.get("usage"))
    if usage is not None:
        found.append(UsageDelta(usage))
    return found


def _choice_deltas(name: str, choice: Any) -> list[StreamDelta]:
    delta = choice.get("delta") if isinstance(choice, dict) else None
    if not isinstance(delta, dict):
        raise _bad(name, f"a stream choice without a delta: {str(choice)[:_QUOTE]}")
    found: list[StreamDelta] = []
    content = delta.get("content")
    if isinstance(content, str) and content:
        found.append(ContentDelta(content))
    for raw in delta.get("tool_calls") or []:
        found.append(_tool_call_delta(name, raw))
    reason = choice.get("finish_reason")
    if isinstance(reason, str):
        found.append(FinishDelta(reason))
    return found


def _tool_call_delta(name: str, raw: Any) -> ToolCallDelta:
    try:
        index = int(raw.get("index", 0))
        function = raw.get("function") or {}
        arguments = function.get("arguments") or ""
    except (AttributeError, TypeError, ValueError):
        raise _bad(name, f"a malformed tool-call fragment: {str(raw)[:_QUOTE]}") from None
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments)
    return ToolCallDelta(
        index=index, id=raw.get("id"), name=function.get("name"), arguments=arguments
    )


@dataclass
class _Call:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


class StreamAssembler:
    """Deltas back into one :class:`ChatResult`: content concatenated, tool-call
    fragments joined by their index (id and name from whichever fragment has them)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._content: list[str] = []
        self._calls: dict[int, _Call] = {}
        self._finish: str | None = None
        self._usage: Usage | None = None

    def add(self, delta: StreamDelta) -> None:
        if isinstance(delta, ContentDelta):
            self._content.append(delta.text)
        elif isinstance(delta, ToolCallDelta):
            call = self._calls.setdefault(delta.index, _Call())
            call.id = delta.id or call.id
            call.name = delta.name or call.name
            call.arguments.append(delta.arguments)
        elif isinstance(delta, FinishDelta):
            self._finish = delta.reason
        elif isinstance(delta, UsageDelta):
            self._usage = delta.usage

    def result(self) -> ChatResult:
        calls = []
        for index in sorted(self._calls):
            call = self._calls[index]
            if not call.name:
                raise _bad(self.name, f"tool call {index} never got a name")
            arguments = _arguments(self.name, "".join(call.arguments))
            calls.append(ToolCall(id=call.id, name=call.name, arguments=arguments))
        return ChatResult(
            content="".join(self._content),
            tool_calls=calls,
            finish_reason=self._finish,
            usage=self._usage,
        )


# -- HTTP ------------------------------------------------------------------------------


def _scrub(text: str, secret: str | None) -> str:
    """``text`` without ``secret`` in it (a provider may echo the key it refused)."""
    return text.replace(secret, "***") if secret else text


def _status_error(endpoint: ModelEndpoint, status: int, text: str) -> BadGatewayError:
    said = _scrub(_provider_message(text), endpoint.api_key)[:_QUOTE]
    where = f"HTTP {status} from {endpoint.base_url}"
    if status in (401, 403):
        what, code = f"the provider refused the API key ({where})", "model_unauthorized"
    elif status == 429 or status >= 500:
        what, code = f"the provider failed ({where})", "model_unavailable"
    else:
        what, code = f"the provider refused the request ({where})", "model_rejected"
    return BadGatewayError(f"model {endpoint.name!r}: {what}: {said}", code=code)


def _provider_message(text: str) -> str:
    """The message of an OpenAI-style error body, else the text itself."""
    try:
        error = json.loads(text).get("error")
    except (ValueError, AttributeError):
        return text.strip() or "(no details)"
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])
    return str(error) if error else text.strip()


def _transport_error(
    endpoint: ModelEndpoint, exc: httpx.TransportError | httpx.InvalidURL
) -> BadGatewayError:
    where = endpoint.base_url
    if isinstance(exc, httpx.TimeoutException):
        return BadGatewayError(
            f"model {endpoint.name!r}: no answer from {where} within {endpoint.timeout:g}s",
            code="model_timeout",
        )
    detail = _scrub(str(exc), endpoint.api_key)[:_QUOTE] or type(exc).__name__
    return BadGatewayError(
        f"model {endpoint.name!r}: cannot reach {where}: {detail}", code="model_unreachable"
    )


class ModelClient:
    """Calls one model endpoint. Use as ``async with ModelClient(endpoint) as llm``."""

    def __init__(
        self, endpoint: ModelEndpoint, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.endpoint = endpoint
        headers = {"Authorization": f"Bearer {endpoint.api_key}"} if endpoint.api_key else {}
        if endpoint.allow_private is not None:
            transport = EgressTransport(["*"], endpoint.allow_private, inner=transport)
        self._http = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(endpoint.timeout, connect=min(endpoint.timeout, 5.0)),
            transport=transport,
            trust_env=endpoint.allow_private is None,  # a proxy would bypass the guard
        )

    async def __aenter__(self) -> ModelClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    def _body(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, max_tokens: int
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.endpoint.model_id,
            "messages": messages,
            "max_tokens": max_tokens,
        }
        if tools:
            body["tools"] = tools
        return body

    async def chat(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        *,
        max_tokens: int = 1024,
        stream: bool = False,
    ) -> ChatResult:
        """One completion. ``tools``: OpenAI tool definitions (``{"type": "function",
        "function": {"name", "description", "parameters"}}``). ``stream``: ask for a
        streamed answer and assemble it (the read timeout then applies per chunk)."""
        if stream:
            async for delta in self.stream_chat(messages, tools, max_tokens=max_tokens):
                if isinstance(delta, Done):
                    return delta.result
            raise _bad(self.endpoint.name, "the stream ended without a result")
        body = self._body(messages, tools, max_tokens)
        answer = await self._post_json("/chat/completions", body)
        return parse_completion(self.endpoint.name, answer)

    async def stream_chat(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        *,
        max_tokens: int = 1024,
    ) -> AsyncIterator[StreamDelta]:
        """The completion as it comes: content pieces, tool-call fragments, the finish
        reason, the usage, and last :class:`Done` with everything assembled."""
        body = self._body(messages, tools, max_tokens)
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
        name = self.endpoint.name
        assembler = StreamAssembler(name)
        try:
            async with self._http.stream(
                "POST", self.endpoint.url("/chat/completions"), json=body
            ) as response:
                if response.status_code >= 400:
                    text = (await response.aread()).decode(errors="replace")
                    raise _status_error(self.endpoint, response.status_code, text)
                async for data in _stream_events(response):
                    if data.strip() == DONE:
                        break
                    for delta in chunk_deltas(name, _json(name, data)):
                        assembler.add(delta)
                        yield delta
        except (httpx.TransportError, httpx.InvalidURL) as exc:  # a URL stored before checks
            raise _transport_error(self.endpoint, exc) from None
        yield Done(assembler.result())

    async def embeddings(self, texts: list[str]) -> EmbeddingResult:
        """One vector per text (``POST {base_url}/embeddings``)."""
        body = {"model": self.endpoint.model_id, "input": texts}
        answer = await self._post_json("/embeddings", body)
        return parse_embeddings(self.endpoint.name, answer, len(texts))

    async def _post_json(self, path: str, body: dict[str, Any]) -> Any:
        try:
            response = await self._http.post(self.endpoint.url(path), json=body)
        except (httpx.TransportError, httpx.InvalidURL) as exc:  # a URL stored before checks
            raise _transport_error(self.endpoint, exc) from None
        if response.status_code >= 400:
            raise _status_error(self.endpoint, response.status_code, response.text)
        return _json(self.endpoint.name, response.text)


async def _stream_events(response: httpx.Response) -> AsyncIterator[str]:
    decoder = SseDecoder()
    async for line in response.aiter_lines():
        data = decoder.feed(line.rstrip("\r"))
        if data is not None:
            yield data
    last = decoder.finish()
    if last is not None:
        yield last


def _json(name: str, text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        raise _bad(name, f"the answer is not JSON: {text[:_QUOTE]!r}") from None
