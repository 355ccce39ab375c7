"""A tiny HTTP service: answers with its greeting and instance id (stdlib only)."""

import json
import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

INSTANCE = os.environ.get("AETHER_INSTANCE_ID", "local")
GREETING = os.environ.get("GREETING", "Hello")


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/healthz":
            body = b"ok\n"
            content_type = "text/plain"
        else:
            body = json.dumps(
                {"message": GREETING, "instance": INSTANCE, "path": self.path}
            ).encode()
            content_type = "application/json"
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        sys.stdout.write(f"{self.command} {self.path} -> {args[1] if len(args) > 1 else ''}\n")
        sys.stdout.flush()


def main() -> None:
    port = int(os.environ.get("PORT", "8000"))
    ThreadingHTTPServer.request_queue_size = 128  # the default backlog of 5 drops bursts
    ThreadingHTTPServer.daemon_threads = True
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"{INSTANCE} listening on {port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
