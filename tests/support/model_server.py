"""A deterministic model: a real OpenAI-compatible HTTP server that answers from a script.

There is no model to download here, so agent tests talk to this server over TCP as
they would to OpenAI, vLLM or Ollama. It speaks the protocol for real:

* ``POST /v1/chat/completions``: a whole ``chat.completion``, or with ``"stream":
  true`` server-sent ``chat.completion.chunk`` events (content in pieces, each tool
  call as an id-and-name fragment then its arguments in pieces, the finish reason,
  the usage when ``stream_options.include_usage``) and ``data: [DONE]``;
* ``POST /v1/embeddings``: deterministic vectors (a hashed bag of words: :func:`embed`);
* ``GET /v1/models``: the model ids it serves.

Each chat call takes the next :class:`Turn` of the script (``say``, ``call_tools``,
``fail``; or a function of the request body returning one); when the script runs out
the server answers ``default`` (None: HTTP 500 "the script ran out", so a test that
calls more than it scripted fails loudly). A turn may wait (``delay``, or
``chunk_delay`` between streamed chunks) or fail with an HTTP error.

Every request is recorded (:attr:`ModelServer.requests`): path, headers and JSON body,
so a test can assert what Aether sent (the tools' schemas, ``Authorization: Bearer
<key>``). With ``api_key`` set, a request without that bearer key gets OpenAI's 401
(and no turn is used)::

    with model_server(api_key="sk-test") as llm:
        llm.script(say("Hello"), call_tools(call("search", query="aether")))
        ... # point a model at llm.url
        assert llm.chats[0]["tools"][0]["function"]["name"] == "search"
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import re
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from aether.ports import free_port

__all__ = [
    "Call",
    "ModelServer",
    "Recorded",
    "Turn",
    "call",
    "call_tools",
    "embed",
    "fail",
    "model_server",
    "say",
]

DIMENSIONS = 64  # of the embeddings


@dataclass(frozen=True)
class Call:
    """A tool call the model makes."""

    name: str
    arguments: dict[str, Any]
    id: str | None = None  # default: call_<turn>_<index>


@dataclass(frozen=True)
class Turn:
    """One answer of the model."""

    text: str = ""
    calls: tuple[Call, ...] = ()
    delay: float = 0.0  # seconds before answering
    chunk_delay: float = 0.0  # seconds between two streamed chunks
    status: int = 200  # >= 400: an OpenAI-style error with ``error`` as its message
    error: str = ""
    raw: str | None = None  # the whole body, as is (a malformed answer)
    usage: tuple[int, int] | None = None  # (prompt, completion); default: words counted
    finish_reason: str | None = None  # default: "tool_calls" with calls, else "stop"


Scripted = Turn | Callable[[dict[str, Any]], Turn]


def say(text: str, **options: Any) -> Turn:
    """The model answers ``text``."""
    return Turn(text=text, **options)


def call(name: str, /, **arguments: Any) -> Call:
    """A call of tool ``name`` with ``arguments``."""
    return Call(name=name, arguments=arguments)


def call_tools(*calls: Call, text: str = "", **options: Any) -> Turn:
    """The model calls tools (and may say ``text`` too)."""
    return Turn(text=text, calls=tuple(calls), **options)


def fail(status: int, message: str = "scripted failure", **options: Any) -> Turn:
    """The provider answers HTTP ``status`` with an OpenAI-style error."""
    return Turn(status=status, error=message, **options)


@dataclass(frozen=True)
class Recorded:
    """One request the server got."""

    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: Any  # the JSON body (None for a GET)

    @property
    def authorization(self) -> str | None:
        return self.headers.get("authorization")


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def embed(text: str, dimensions: int = DIMENSIONS) -> list[float]:
    """The server's vector of ``text``: each word hashed to a signed dimension, the sum
    normalized (texts sharing words point alike; no words: the zero vector)."""
    vector = [0.0] * dimensions
    for word in _words(text):
        digest = hashlib.sha256(word.encode()).digest()
        vector[int.from_bytes(digest[:4], "big") % dimensions] += 1.0 if digest[4] & 1 else -1.0
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector] if norm else vector


def _prompt_words(body: dict[str, Any]) -> int:
    count = 0
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            count += len(_words(content))
    return count


@dataclass
class ModelServer:
    url: str = ""  # the base URL a model takes: http://127.0.0.1:PORT/v1
    api_key: str | None = None  # when set, every request must carry it as a bearer token
    models: tuple[str, ...] = ("test-model",)
    default: Scripted | None = None  # the answer once the script runs out
    requests: list[Recorded] = field(default_factory=list)
    _script: deque[Scripted] = field(default_factory=deque)
    _turns: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def script(self, *turns: Scripted) -> None:
        """Append turns: each chat call takes the next one."""
        with self._lock:
            self._script.extend(turns)

    def reset(self) -> None:
        """Forget the turns not used yet (a test that ended mid-run leaves some)."""
        with self._lock:
            self._script.clear()

    @property
    def remaining(self) -> int:
        """Turns not used yet."""
        with self._lock:
            return len(self._script)

    @property
    def chats(self) -> list[dict[str, Any]]:
        """The bodies of the chat-completion requests, in order."""
        return [r.body for r in self.requests_to("/v1/chat/completions")]

    def requests_to(self, path: str) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def _record(self, recorded: Recorded) -> None:
        with self._lock:
            self.requests.append(recorded)

    def _next(self, body: dict[str, Any]) -> tuple[int, Turn]:
        with self._lock:
            self._turns += 1
            number = self._turns
            item = self._script.popleft() if self._script else self.default
        if item is None:
            return number, fail(500, "model server: the script ran out of turns")
        return number, item(body) if callable(item) else item


# -- answers ---------------------------------------------------------------------------


def _error(status: int, message: str, code: str | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse(
        {"error": {"message": message, "type": kind, "code": code}}, status_code=status
    )


def _tool_calls(number: int, turn: Turn) -> list[dict[str, Any]]:
    return [
        {
            "id": c.id or f"call_{number}_{i}",
            "type": "function",
            "function": {"name": c.name, "arguments": json.dumps(c.arguments)},
        }
        for i, c in enumerate(turn.calls)
    ]


def _usage(body: dict[str, Any], turn: Turn) -> dict[str, int]:
    if turn.usage is not None:
        prompt, completion = turn.usage
    else:
        prompt = _prompt_words(body)
        arguments = " ".join(json.dumps(c.arguments) for c in turn.calls)
        completion = len(_words(turn.text)) + len(_words(arguments))
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _finish(turn: Turn) -> str:
    return turn.finish_reason or ("tool_calls" if turn.calls else "stop")


def _completion(body: dict[str, Any], number: int, turn: Turn) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": turn.text or None}
    if turn.calls:
        message["tool_calls"] = _tool_calls(number, turn)
    return {
        "id": f"chatcmpl-{number}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model"),
        "choices": [{"index": 0, "message": message, "finish_reason": _finish(turn)}],
        "usage": _usage(body, turn),
    }


def _pieces(text: str, size: int = 7) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def _chunks(body: dict[str, Any], number: int, turn: Turn) -> list[dict[str, Any]]:
    """The streamed chunks of a turn (without the final [DONE])."""
    base = {
        "id": f"chatcmpl-{number}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": body.get("model"),
    }

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    chunks = [chunk({"role": "assistant", "content": ""})]
    chunks += [chunk({"content": piece}) for piece in _pieces(turn.text)]
    for index, raw in enumerate(_tool_calls(number, turn)):
        opening = {"index": index, "id": raw["id"], "type": "function"}
        opening["function"] = {"name": raw["function"]["name"], "arguments": ""}
        chunks.append(chunk({"tool_calls": [opening]}))
        for piece in _pieces(raw["function"]["arguments"], 5):
            fragment = {"index": index, "function": {"arguments": piece}}
            chunks.append(chunk({"tool_calls": [fragment]}))
    chunks.append(chunk({}, _finish(turn)))
    if (body.get("stream_options") or {}).get("include_usage"):
        chunks.append({**base, "choices": [], "usage": _usage(body, turn)})
    return chunks


def _app(server: ModelServer) -> Starlette:
    async def body_of(request: Request) -> tuple[Any, Response | None]:
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            body = await request.json() if request.method == "POST" else None
        except ValueError:
            body = None
        server._record(Recorded(request.method, request.url.path, headers, body))
        if server.api_key is not None and headers.get("authorization") != (
            f"Bearer {server.api_key}"
        ):
            return body, _error(401, "Incorrect API key provided", "invalid_api_key")
        if request.method == "POST" and not isinstance(body, dict):
            return body, _error(400, "the body is not a JSON object")
        return body, None

    async def chat(request: Request) -> Response:
        body, refused = await body_of(request)
        if refused is not None:
            return refused
        number, turn = server._next(body)
        if turn.delay:
            await asyncio.sleep(turn.delay)
        if turn.status >= 400:
            return _error(turn.status, turn.error or "error")
        if turn.raw is not None:
            return Response(turn.raw, media_type="application/json")
        if not body.get("stream"):
            return JSONResponse(_completion(body, number, turn))
        return StreamingResponse(
            _sse(_chunks(body, number, turn), turn.chunk_delay), media_type="text/event-stream"
        )

    async def embeddings(request: Request) -> Response:
        body, refused = await body_of(request)
        if refused is not None:
            return refused
        texts = body.get("input")
        texts = [texts] if isinstance(texts, str) else texts
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            return _error(400, "input must be a string or a list of strings")
        tokens = sum(len(_words(t)) for t in texts)
        return JSONResponse(
            {
                "object": "list",
                "model": body.get("model"),
                "data": [
                    {"object": "embedding", "index": i, "embedding": embed(t)}
                    for i, t in enumerate(texts)
                ],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    async def models(request: Request) -> Response:
        _, refused = await body_of(request)
        if refused is not None:
            return refused
        data = [{"id": m, "object": "model", "owned_by": "test"} for m in server.models]
        return JSONResponse({"object": "list", "data": data})

    return Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/embeddings", embeddings, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
        ]
    )


async def _sse(chunks: list[dict[str, Any]], delay: float) -> AsyncIterator[str]:
    for chunk in chunks:
        if delay:
            await asyncio.sleep(delay)
        yield f"data: {json.dumps(chunk)}\n\n"
    yield "data: [DONE]\n\n"


def _wait_ready(url: str, thread: threading.Thread, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not thread.is_alive():
            raise RuntimeError("the model server thread died during start-up")
        with contextlib.suppress(httpx.TransportError):
            httpx.get(f"{url}/models", timeout=1.0)
            return
        time.sleep(0.05)
    raise RuntimeError(f"the model server at {url} did not start in {timeout}s")


@contextlib.contextmanager
def model_server(
    *turns: Scripted,
    api_key: str | None = None,
    default: Scripted | None = None,
    models: tuple[str, ...] = ("test-model",),
) -> Iterator[ModelServer]:
    """A model server on a free loopback port, answering ``turns`` first (more with
    :meth:`ModelServer.script`), stopped on exit."""
    server = ModelServer(api_key=api_key, models=models, default=default)
    server.script(*turns)
    port = free_port()
    server.url = f"http://127.0.0.1:{port}/v1"
    config = uvicorn.Config(
        _app(server), host="127.0.0.1", port=port, log_level="warning", lifespan="off"
    )
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, name="model-server", daemon=True)
    thread.start()
    try:
        _wait_ready(server.url, thread)
        # the readiness probe is not part of what the test sees
        with server._lock:
            server.requests.clear()
        yield server
    finally:
        uv.should_exit = True
        thread.join(timeout=10)
