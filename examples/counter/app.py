"""A stateful counter (stdlib only): GET / shows the count, POST /inc adds one.

The count lives in memory. The app loads it from $AETHER_STATE_DIR/count at
start, and writes it there on SIGUSR1 (then touches $AETHER_CHECKPOINT_ACK,
telling the node the state is on disk) and on SIGTERM. That is the whole
cooperative checkpoint protocol: the node packs the state directory and the
instance that replaces this one starts from it, on any node.
"""

import json
import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

INSTANCE = os.environ.get("AETHER_INSTANCE_ID", "local")
STATE_DIR = Path(os.environ.get("AETHER_STATE_DIR", "data"))
STATE_FILE = STATE_DIR / "count"
ACK = os.environ.get("AETHER_CHECKPOINT_ACK")

lock = threading.Lock()
count = 0


def load() -> int:
    try:
        return int(STATE_FILE.read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


def flush() -> None:
    """Write the count atomically: a crash mid-write never leaves half a number."""
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    with lock:
        value = count
    tmp = STATE_FILE.with_suffix(".tmp")
    tmp.write_text(f"{value}\n")
    os.replace(tmp, STATE_FILE)


def on_checkpoint(*_: object) -> None:
    flush()
    if ACK:
        Path(ACK).touch()
    print(f"{INSTANCE}: checkpointed count={count}", flush=True)


def on_term(*_: object) -> None:
    flush()
    sys.exit(0)


class Handler(BaseHTTPRequestHandler):
    def _answer(self, status: int, body: dict[str, object]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._answer(200, {"status": "ok"})
        else:
            self._answer(200, {"count": count, "instance": INSTANCE})

    def do_POST(self) -> None:
        global count
        if self.path.rstrip("/") != "/inc":
            self._answer(404, {"error": "POST /inc adds one"})
            return
        with lock:
            count += 1
            value = count
        self._answer(200, {"count": value, "instance": INSTANCE})

    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> None:
    global count
    count = load()
    port = int(os.environ.get("PORT", "8000"))
    ThreadingHTTPServer.daemon_threads = True
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    signal.signal(signal.SIGUSR1, on_checkpoint)
    signal.signal(signal.SIGTERM, on_term)
    print(f"{INSTANCE} listening on {port} with count={count}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
