"""A failed deploy says why: the exit code or signal, or the health check, and the output's end."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.cluster import Cluster

pytestmark = pytest.mark.e2e

BOOM = """\
for i in $(seq 1 40); do echo "starting step $i of a long and chatty start-up"; done
echo "Error: boom at startup" >&2
exit 1
"""

# listens on $PORT and accepts connections, but never answers one
SILENT = """\
import os, socket, time
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", int(os.environ["PORT"])))
server.listen(64)
held = []
print("listening, answering nothing", flush=True)
while True:
    held.append(server.accept()[0])
"""


def _app(root: Path, toml: str, files: dict[str, str]) -> Path:
    root.mkdir()
    (root / "aether.toml").write_text(toml)
    for path, text in files.items():
        (root / path).write_text(text)
    return root


def _failed_deploy(cluster: Cluster, app: Path) -> tuple[dict[str, Any], str, float]:
    """Deploy, expecting failure: the JSON error, the text message, and the seconds it took."""
    began = time.monotonic()
    result = cluster.cli("deploy", str(app), "--format", "json", check=False, timeout=300)
    took = time.monotonic() - began
    assert result.returncode == 40, result.stdout + result.stderr
    error: dict[str, Any] = json.loads(result.stdout)["error"]
    assert error["code"] == "deploy_failed"
    return error, result.stdout, took


def test_a_crashing_start_says_its_exit_code_and_last_output(
    cluster: Cluster, tmp_path: Path
) -> None:
    cluster.start_server()
    cluster.start_node("n1")
    toml = 'name = "boom"\nhealth = "/"\n'
    good = _app(tmp_path / "v1", toml + 'start = "python3 -m http.server $PORT"\n', {})
    assert cluster.cli_json("deploy", str(good))["status"] == "active"
    broken = _app(tmp_path / "v2", toml + 'start = "sh boom.sh"\n', {"boom.sh": BOOM})
    error, _, _ = _failed_deploy(cluster, broken)
    message = error["message"]
    assert message.startswith("deployment v2 failed; reverted to v1 (auto_revert)"), message
    assert "exited with code 1 before it was healthy" in message
    assert message.endswith("Error: boom at startup"), message  # the end of the output, kept
    assert "[… earlier output cut]" in message  # 40 lines of chatter: the front was cut
    details = error["details"]
    assert "exited with code 1" in details["cause"]
    assert details["cause"].endswith("Error: boom at startup")
    assert details["outcome"] == "reverted to v1 (auto_revert)"

    # the events, as the CLI reads them, carry the same cause
    deployment = cluster.api_get(f"/deployments/{details['deployment_id']}")
    assert deployment["status"] == "failed"
    events = {e["type"]: e["message"] for e in deployment["events"]}
    for kind in ("instance_failed", "rollout_failed"):
        assert "exited with code 1 before it was healthy" in events[kind]
        assert events[kind].endswith("Error: boom at startup")
    assert events["reverted"] == "reverted to v1 (auto_revert)"
    # one failed start was enough: not three in a row
    assert sum(e["type"] == "instance_failed" for e in deployment["events"]) == 1

    text = cluster.cli("deploy", str(broken), check=False)
    assert text.returncode == 40
    assert "exited with code 1 before it was healthy" in text.stderr
    assert text.stderr.rstrip().endswith("Error: boom at startup")


def test_a_silent_health_check_fails_the_deploy_within_its_deadline(
    cluster: Cluster, tmp_path: Path
) -> None:
    cluster.start_server()
    cluster.start_node("n1")
    app = _app(
        tmp_path / "silent",
        'name = "silent"\nstart = "python3 silent.py"\nhealth = "/healthz"\nhealth_timeout = 5\n',
        {"silent.py": SILENT},
    )
    error, _, took = _failed_deploy(cluster, app)
    assert "health check GET /healthz: no answer within 5 s" in error["message"]
    assert error["message"].endswith("listening, answering nothing")
    assert error["details"]["outcome"] is None  # a first deployment: nothing to revert to
    assert took < 40, f"the deploy took {took:.0f}s to fail"  # was 132 s (3 x 30 s + stops)


def test_a_start_killed_by_a_signal_says_which(cluster: Cluster, tmp_path: Path) -> None:
    cluster.start_server()
    cluster.start_node("n1")
    app = _app(
        tmp_path / "killed",
        'name = "killed"\nstart = "sh die.sh"\n',
        {"die.sh": 'echo "about to die"\nkill -KILL $$\n'},
    )
    error, _, _ = _failed_deploy(cluster, app)
    assert "killed by signal 9 (SIGKILL) before it was healthy" in error["message"]
    assert error["message"].endswith("about to die")
