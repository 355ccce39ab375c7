"""A small OpenAI-compatible chat-completions server for adviser tests.

A real HTTP server (standard library, its own thread, a free port) that answers
``POST /v1/chat/completions`` with scripted message contents, one per call and
per model; when a model's script runs out it gives the model's default answer
(``{"proposals": []}`` unless set).
Each script entry is a string (the message content), an :class:`Answer`
(status, raw body, delay) or a callable taking the request body. Every request
body is kept for the test to inspect.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["Answer", "FakeLLM", "fake_llm"]

EMPTY = '{"proposals": []}'


@dataclass(frozen=True)
class Answer:
    content: str = EMPTY
    status: int = 200
    raw: str | None = None  # the whole response body instead of a chat completion
    delay: float = 0.0  # seconds to wait before answering


Scripted = str | Answer | Callable[[dict[str, Any]], "str | Answer"]


@dataclass
class FakeLLM:
    url: str  # the base URL an adviser takes: http://127.0.0.1:PORT/v1
    requests: list[dict[str, Any]] = field(default_factory=list)
    scripts: dict[str, deque[Scripted]] = field(default_factory=lambda: defaultdict(deque))
    defaults: dict[str, Scripted] = field(default_factory=dict)  # when a script runs out
    no_json_mode: set[str] = field(default_factory=set)  # models that reject response_format
    lock: threading.Lock = field(default_factory=threading.Lock)

    def script(self, model: str, *answers: Scripted) -> None:
        with self.lock:
            self.scripts[model].extend(answers)

    def requests_for(self, model: str) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.requests if r.get("model") == model]

    def _next(self, body: dict[str, Any]) -> Answer:
        model = str(body.get("model", ""))
        with self.lock:
            self.requests.append(body)
            if model in self.no_json_mode and "response_format" in body:
                return Answer(
                    status=400,
                    raw=json.dumps({"error": {"message": "response_format is not supported"}}),
                )
            queue = self.scripts[model]
            item: Scripted = queue.popleft() if queue else self.defaults.get(model, EMPTY)
        if callable(item):
            item = item(body)
        return item if isinstance(item, Answer) else Answer(content=item)


def _handler(llm: FakeLLM) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return

        def do_POST(self) -> None:
            if self.path != "/v1/chat/completions":
                self._send(404, json.dumps({"error": {"message": f"no route {self.path}"}}))
                return
            length = int(self.headers.get("content-length", "0"))
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
            except ValueError:
                self._send(400, json.dumps({"error": {"message": "body is not JSON"}}))
                return
            body["_authorization"] = self.headers.get("authorization")
            answer = llm._next(body)
            if answer.delay:
                time.sleep(answer.delay)
            raw = answer.raw
            if raw is None:
                raw = json.dumps(
                    {
                        "id": "chatcmpl-test",
                        "object": "chat.completion",
                        "model": body.get("model"),
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": answer.content},
                                "finish_reason": "stop",
                            }
                        ],
                    }
                )
            self._send(answer.status, raw)

        def _send(self, status: int, text: str) -> None:
            data = text.encode()
            with contextlib.suppress(OSError):  # the client may have given up (timeout tests)
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

    return Handler


@contextlib.contextmanager
def fake_llm() -> Iterator[FakeLLM]:
    llm = FakeLLM(url="")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(llm))
    server.daemon_threads = True
    llm.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    thread = threading.Thread(target=server.serve_forever, name="fake-llm", daemon=True)
    thread.start()
    try:
        yield llm
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
