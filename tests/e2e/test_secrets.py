"""Issue 20: a tenant's secrets reach the instances that reference them (env and a
0400 file), with real server and node processes, and nowhere else: not the API's
answers, the event stream, the server's or the nodes' logs. Only the node running an
instance gets its values; a secret that is not set fails the instance with a clear
reason; a key rotation leaves every secret opening."""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.cluster import Cluster
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

DB_PASSWORD = "pw-7f3a9c1e-never-shown"
CREDS = '{"user": "svc", "token": "tok-5b2d8e44-never-shown"}'
VALUES = (DB_PASSWORD, "tok-5b2d8e44-never-shown")

APP = """
import hashlib, json, os, sys
from http.server import BaseHTTPRequestHandler, HTTPServer

def digest(data):
    return hashlib.sha256(data).hexdigest()

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        path = os.path.join(os.getcwd(), "config", "creds.json")
        st = os.stat(path)
        with open(path, "rb") as fh:
            content = fh.read()
        secret = os.environ.get("DB_PASSWORD", "").encode()
        body = json.dumps({
            "env_len": len(secret), "env_sha256": digest(secret),
            "file_sha256": digest(content), "file_mode": oct(st.st_mode & 0o777),
            "file_uid": st.st_uid, "my_uid": os.getuid(),
        }).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

print("listening", flush=True)
HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""


def _app(root: Path, name: str, secret: str) -> Path:
    root.mkdir(parents=True)
    (root / "app.py").write_text(APP)
    (root / "config").mkdir()
    (root / "aether.toml").write_text(
        f'name = "{name}"\nstart = "python3 app.py"\nhealth = "/"\n\n'
        f'[secrets]\nDB_PASSWORD = "{secret}"\n\n'
        '[secrets.files]\n"config/creds.json" = "creds"\n'
    )
    return root


@contextlib.contextmanager
def _event_stream(cluster: Cluster) -> Iterator[list[str]]:
    """Every line of the cluster event stream while the block runs."""
    lines: list[str] = []
    client = httpx.Client(headers={"Authorization": f"Bearer {cluster.admin_token}"}, timeout=None)

    def read() -> None:
        with (
            contextlib.suppress(Exception),
            client.stream("GET", f"{cluster.api}/api/v1/events") as stream,
        ):
            lines.extend(stream.iter_lines())

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    try:
        yield lines
    finally:
        client.close()
        thread.join(5)


def test_secrets_reach_their_instances_and_nothing_else(cluster: Cluster, tmp_path: Path) -> None:
    cluster.start_server()
    cluster.start_node("n1")
    answers: list[str] = []
    (tmp_path / "pw").write_text(DB_PASSWORD + "\n")
    (tmp_path / "creds").write_text(CREDS)
    with _event_stream(cluster) as events:
        for name, file in (("db-password", "pw"), ("creds", "creds")):
            made = cluster.cli("secrets", "set", name, "--from-file", str(tmp_path / file))
            answers.append(made.stdout + made.stderr)
        app = _app(tmp_path / "vault-app", "vault-app", "db-password")
        deployed = cluster.cli_json("deploy", str(app))
        assert deployed["status"] == "active", deployed
        seen = httpx.get(deployed["url"], timeout=5).json()
        assert seen["env_len"] == len(DB_PASSWORD)
        assert seen["env_sha256"] == hashlib.sha256(DB_PASSWORD.encode()).hexdigest()
        assert seen["file_sha256"] == hashlib.sha256(CREDS.encode()).hexdigest()
        assert seen["file_mode"] == "0o400" and seen["file_uid"] == seen["my_uid"]

        listed = cluster.cli_json("secrets", "ls")
        used = {s["name"]: s["used_by"] for s in listed["secrets"]}
        assert used == {"creds": ["vault-app"], "db-password": ["vault-app"]}
        answers.append(str(listed))

        # the node route: only the node's own credential (over mutual TLS with its
        # certificate, as the node calls), only for what it runs
        cluster.start_node("n2")
        route = "/api/v1/nodes/%s/instances/vault-app@1/0/secrets"

        def get(node: str, caller: str, token: str | None = None) -> httpx.Response:
            with cluster.node_client(caller, token) as http:
                return http.get(route % node)

        mine = get("n1", "n1")
        assert mine.status_code == 200, mine.text
        assert mine.json() == {
            "schema": 1,
            "env": {"DB_PASSWORD": DB_PASSWORD},
            "files": {"config/creds.json": CREDS},
        }
        assert mine.headers["cache-control"] == "no-store"
        for response, status in (
            (get("n2", "n2"), 404),  # n2's own route, but the instance is not on n2
            (get("n1", "n2"), 403),  # n2 acting as n1
            (get("n1", "n1", cluster.admin_token), 403),  # a user's token
        ):
            assert response.status_code == status, response.text
            answers.append(response.text)

        # a task's sandbox gets the secret in its env; the task shows the name only
        job = "import os, hashlib; v = os.environ['DB_PASSWORD'].encode(); " + (
            "print(len(v), hashlib.sha256(v).hexdigest())"
        )
        ran = cluster.cli_json(
            *("task", "submit", "-type", "job:run", "-app", "vault-app", "-cmd", "python3"),
            *("-args", f"-c {job!r}", "--secret", "DB_PASSWORD=db-password", "--wait"),
        )
        assert ran["state"] == "succeeded", ran
        assert ran["payload"]["secrets"] == {"DB_PASSWORD": "db-password"}
        digest = hashlib.sha256(DB_PASSWORD.encode()).hexdigest()
        assert ran["result"]["stdout"].split() == [str(len(DB_PASSWORD)), digest]
        answers.append(str(ran))
        with cluster.node_client("n1") as http:
            late = http.get(
                f"/api/v1/tasks/{ran['id']}/secrets", params={"node": "n1", "attempt": 1}
            )
        assert late.status_code == 404, late.text  # finished: no longer the node's to read
        lacking_task = cluster.cli_json(
            *("task", "submit", "-type", "job:run", "-app", "vault-app", "-cmd", "true"),
            *("--secret", "DB_PASSWORD=not-set-yet", "--wait"),
        )
        assert lacking_task["state"] in ("failed", "dead"), lacking_task
        assert "secret not-set-yet is not set" in (lacking_task["error"] or ""), lacking_task

        # a secret that is not set: the instance fails saying which, no crash loop
        missing = _app(tmp_path / "lacking", "lacking", "not-set-yet")
        cluster.cli("deploy", str(missing), "--no-wait")

        def failed_for_want() -> str | None:
            """The instance's failure as the deployment recorded it (a failed instance is
            soon replaced, so its own record may be gone by the time it is read)."""
            for deployment in cluster.api_get("/apps/lacking/deployments"):
                for event in cluster.api_get(f"/deployments/{deployment['id']}/events"):
                    if event["type"] == "instance_failed" and "not-set-yet" in event["message"]:
                        return str(event["message"])
            return None

        failed = wait_for(failed_for_want, 90, "the instance lacking its secret FAILED")
        assert "secret not-set-yet is not set" in failed, failed
        assert {cluster.node_state("n1"), cluster.node_state("n2")} == {"ready"}

        # rotation: every secret still opens; a new instance gets the same values
        rotated = cluster.cli_json("secrets", "rotate-key")
        # the two secrets set above, and the cluster CA's key (sealed by the same key)
        assert rotated["rewrapped"] == 2 + 1 and rotated["remaining"] == {}, rotated
        assert rotated["key_id"] not in rotated["previous"]
        keyring = (cluster.server_dir / "secrets.key").read_bytes().split()
        assert len(keyring) == 1 and (cluster.server_dir / "secrets.key.old").exists()
        cluster.cli("scale", "vault-app=2")
        wait_for(lambda: len(cluster.active("vault-app")) == 2, 60, "a second instance ACTIVE")
        router = f"{cluster.router('n1')}/apps/vault-app/"
        hashes = {httpx.get(router, timeout=5).json()["env_sha256"] for _ in range(8)}
        assert hashes == {hashlib.sha256(DB_PASSWORD.encode()).hexdigest()}

        for api_path in (
            "/apps",
            "/apps/vault-app",
            "/instances",
            "/secrets",
            "/audit",
            f"/deployments/{deployed['deployment_id']}/events",
        ):
            answers.append(str(cluster.api_get(api_path)))
        answers.append(cluster.cli("logs", "vault-app").stdout)
    everything = "\n".join(answers + events).encode()
    scanned: list[str] = []
    # every file of the server and the nodes: logs, shipped app logs, records, state store
    for found in cluster.root.rglob("*"):
        if "app" in found.parts or found.name in ("pw", "creds"):
            continue  # the instances' trees (the secret file is there, as it should be)
        if found.is_file():
            everything += found.read_bytes()
            scanned.append(found.name)
    assert {"server.log", "n1.log", "n2.log", "records.db"} <= set(scanned), scanned
    assert any("vault-app" in line for line in events), "the event stream missed the app"
    for value in VALUES:
        assert value.encode() not in everything, f"a secret value leaked: {value}"
