"""A small Flask service: JSON greeting with the instance id, and a health route."""

import os

from flask import Flask, jsonify

app = Flask(__name__)
INSTANCE = os.environ.get("AETHER_INSTANCE_ID", "local")


@app.get("/")
def index():
    return jsonify(
        message=os.environ.get("GREETING", "Hello from Flask"),
        instance=INSTANCE,
    )


@app.get("/healthz")
def healthz():
    return "ok\n", 200, {"Content-Type": "text/plain"}


if __name__ == "__main__":
    # Flask's built-in server keeps the example dependency-free beyond Flask;
    # bind to loopback: the node's router is the only client.
    app.run(host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
