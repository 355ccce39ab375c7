"""Tasks and sandboxes against real processes: parallel clones, crashes, job:run."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from aether.ports import free_port
from tests.support.cluster import Cluster
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hello-python"


def _need_bwrap() -> None:
    if shutil.which("bwrap") is None:
        pytest.fail("bubblewrap is needed: apt-get install bubblewrap (make test does it)")


def _task(cluster: Cluster, task_id: str) -> dict[str, Any]:
    data: dict[str, Any] = cluster.api_get(f"/tasks/{task_id}")
    return data


def _wait_final(cluster: Cluster, task_id: str, timeout: float = 60) -> dict[str, Any]:
    def final() -> dict[str, Any] | None:
        task = _task(cluster, task_id)
        return task if task["state"] in ("succeeded", "failed", "dead", "cancelled") else None

    return wait_for(final, timeout, f"task {task_id} to finish")


def _git_repo(root: Path) -> tuple[Path, str]:
    repo = root / "repos" / "demo.git"
    work = root / "work"
    work.mkdir(parents=True)
    env = {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@x",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@x",
        "HOME": str(root),
        "PATH": "/usr/bin:/bin",
    }
    subprocess.run(["git", "init", "-q", "-b", "main", str(work)], check=True, env=env)
    (work / "README").write_text("hello\n")
    subprocess.run(["git", "-C", str(work), "add", "."], check=True, env=env)
    subprocess.run(["git", "-C", str(work), "commit", "-qm", "first"], check=True, env=env)
    commit = subprocess.run(
        ["git", "-C", str(work), "rev-parse", "HEAD"],
        check=True,
        env=env,
        capture_output=True,
        text=True,
    ).stdout.strip()
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(repo)], check=True, env=env)
    return repo.parent, commit


def test_three_sandboxes_clone_in_parallel(cluster: Cluster, tmp_path: Path) -> None:
    _need_bwrap()
    if shutil.which("git") is None:
        pytest.fail("git is needed: apt-get install git")
    base, commit = _git_repo(tmp_path)
    port = free_port()
    daemon = subprocess.Popen(
        [
            "git",
            "daemon",
            "--reuseaddr",
            "--export-all",
            f"--base-path={base}",
            "--listen=127.0.0.1",
            f"--port={port}",
            str(base),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        cluster.start_server()
        cluster.start_node("n1")
        creates = [
            cluster.cli_json(
                "task",
                "submit",
                "-type",
                "vm:create",
                "-name",
                f"cloner-{i}",
                "-memory",
                "512",
                "-network",
            )
            for i in range(3)
        ]
        vms = [_wait_final(cluster, c["id"])["result"]["vm_id"] for c in creates]
        assert len(set(vms)) == 3
        # the clone holds for a second so the overlap of the three runs is observable
        script = (
            f"git clone -q git://127.0.0.1:{port}/demo.git repo && sleep 1 && "
            "git -C repo rev-parse HEAD"
        )

        def submit(vm: str) -> dict[str, Any]:
            out: dict[str, Any] = cluster.cli_json(
                "task",
                "submit",
                "-type",
                "vm:execute",
                "-vm-id",
                vm,
                "-cmd",
                "sh",
                "-args",
                f"-c '{script}'",
            )
            return out

        with ThreadPoolExecutor(3) as pool:
            runs = list(pool.map(submit, vms))
        results = [_wait_final(cluster, r["id"]) for r in runs]
        for result in results:
            assert result["state"] == "succeeded", result
            assert result["result"]["exit_code"] == 0, result["result"]
            assert result["result"]["stdout"].strip() == commit
        # the clones ran at once: their executions overlap in time
        spans = [(r["result"]["started_at"], r["result"]["finished_at"]) for r in results]
        assert max(s for s, _ in spans) < min(f for _, f in spans)
        listed = cluster.cli_json("task", "list", "--type", "vm:execute")["tasks"]
        assert {t["id"] for t in listed} >= {r["id"] for r in runs}
        for vm in vms:
            executions = cluster.api_get(f"/sandboxes/{vm}/executions")
            assert [e["stdout"].strip() for e in executions] == [commit]
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(10)


def test_killed_node_task_runs_again_and_is_recorded_once(cluster: Cluster) -> None:
    _need_bwrap()
    cluster.start_server()
    cluster.start_node("n1")
    vm = cluster.cli_json("vm", "create", "long-runner")["id"]
    submitted = cluster.cli_json(
        "task",
        "submit",
        "-type",
        "vm:execute",
        "-vm-id",
        vm,
        "-cmd",
        "sh",
        "-args",
        "-c 'echo start >> runs.log; sleep 3; echo done'",
    )
    wait_for(lambda: _task(cluster, submitted["id"])["state"] == "active", 20, "the task to start")
    time.sleep(0.5)
    cluster.kill_node("n1")  # kill -9 mid-task
    cluster.start_node("n1")  # same id and data dir: its sandbox is still there
    final = _wait_final(cluster, submitted["id"], 60)
    summary = {k: final[k] for k in ("state", "attempts", "error", "claimed_by")}
    assert final["state"] == "succeeded", summary
    assert final["attempts"] == 2, (summary, cluster.logs())
    assert final["result"]["stdout"].strip() == "done"
    executions = cluster.api_get(f"/sandboxes/{vm}/executions")
    assert len(executions) == 1  # recorded once
    log = cluster.cli("vm", "exec", vm, "--", "cat", "runs.log").stdout
    assert log.split() == ["start", "start"]  # it really ran twice


def _queued_tasks_survive_a_server_kill(cluster: Cluster, count: int) -> None:
    """Tasks queued while no node can run them outlive ``kill -9`` of the server."""
    cluster.start_server()
    cluster.start_node("n1")
    vm = cluster.cli_json("vm", "create", "queue-box")["id"]
    cluster.kill_node("n1")  # nothing can run: the tasks stay queued
    ids = [
        cluster.cli_json(
            "task",
            "submit",
            "-type",
            "vm:execute",
            "-vm-id",
            vm,
            "-cmd",
            "echo",
            "-args",
            str(i),
            "--priority",
            str(i % 3),
        )["id"]
        for i in range(count)
    ]
    cluster.kill_server()
    cluster.start_server()
    queued = {t["id"] for t in cluster.api_get("/tasks?limit=1000") if t["type"] == "vm:execute"}
    assert queued == set(ids)
    cluster.start_node("n1")
    finals = [_wait_final(cluster, task_id, 60) for task_id in ids]
    assert all(t["state"] == "succeeded" for t in finals)
    assert sorted(int(t["result"]["stdout"]) for t in finals) == list(range(count))


def test_server_killed_with_tasks_queued_loses_none(cluster: Cluster) -> None:
    _need_bwrap()
    _queued_tasks_survive_a_server_kill(cluster, 20)


def test_job_run_runs_an_app_command_in_a_fresh_sandbox(cluster: Cluster) -> None:
    _need_bwrap()
    cluster.start_server()
    cluster.start_node("n1")
    cluster.cli_json("deploy", str(EXAMPLE), "--instances", "1")
    job = cluster.cli_json(
        "task",
        "submit",
        "-type",
        "job:run",
        "-app",
        "hello-python",
        "-cmd",
        "python3",
        "-args",
        "-c 'import os, app; print(app.GREETING, os.getcwd())'",
        "--wait",
    )
    assert job["state"] == "succeeded", job
    assert job["result"]["exit_code"] == 0
    assert job["result"]["stdout"].strip() == "Hello from Aether /workspace"
    sandbox = cluster.api_get(f"/sandboxes/{job['result']['sandbox_id']}")
    assert sandbox["status"] == "deleted"


def test_cancel_a_running_task(cluster: Cluster) -> None:
    _need_bwrap()
    cluster.start_server()
    cluster.start_node("n1")
    vm = cluster.cli_json("vm", "create", "cancel-box")["id"]
    task = cluster.cli_json(
        "task", "submit", "-type", "vm:execute", "-vm-id", vm, "-cmd", "sleep", "-args", "60"
    )
    wait_for(lambda: _task(cluster, task["id"])["state"] == "active", 20, "the task to start")
    cancelled = cluster.cli_json("task", "cancel", task["id"])
    assert cancelled["state"] == "cancelled"
    started = time.monotonic()
    # the sleeping process is stopped: the sandbox runs the next command at once
    quick = cluster.cli("vm", "exec", vm, "--", "echo", "free").stdout
    assert quick == "free\n"
    assert time.monotonic() - started < 30
    assert _task(cluster, task["id"])["state"] == "cancelled"


def test_redis_queue_backend_end_to_end(cluster: Cluster, tmp_path: Path) -> None:
    """The same flow with AETHER_QUEUE_URL on a real redis-server (append-only file on)."""
    _need_bwrap()
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is needed: apt-get install redis-server (make test does it)")
    port = free_port()
    workdir = tmp_path / "redis"
    workdir.mkdir()
    redis = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        cluster.env["AETHER_QUEUE_URL"] = f"redis://127.0.0.1:{port}/0"
        wait_for(
            lambda: (workdir / "appendonlydir").exists() or redis.poll() is not None, 10, "redis"
        )
        _queued_tasks_survive_a_server_kill(cluster, 5)  # queued in Redis, not the server
    finally:
        redis.terminate()
        redis.wait(10)


def test_submit_from_file_queues_a_batch_and_refuses_a_bad_file_whole(
    cluster: Cluster, tmp_path: Path
) -> None:
    _need_bwrap()
    cluster.start_server()
    cluster.start_node("n1")
    vm = cluster.cli_json("vm", "create", "batch-box")["id"]
    lines = [
        json.dumps(
            {"type": "vm:execute", "payload": {"vm_id": vm, "command": "echo", "args": [str(i)]}}
        )
        for i in range(30)
    ]
    tasks_file = tmp_path / "tasks.jsonl"
    tasks_file.write_text("\n".join(lines) + "\n")
    done = cluster.cli_json(
        "task", "submit", "--from-file", str(tasks_file), "--priority", "7", "--wait"
    )["tasks"]
    assert [t["result"]["stdout"].strip() for t in done] == [str(i) for i in range(30)]
    assert all(t["state"] == "succeeded" and t["priority"] == 7 for t in done)

    before = len(cluster.api_get("/tasks?limit=1000"))
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps(
            [{"type": "vm:execute", "payload": {"vm_id": vm, "command": "x"}}, {"payload": {}}]
        )
    )
    refused = cluster.cli("task", "submit", "--from-file", str(bad), check=False)
    assert refused.returncode == 2 and "item 2" in refused.stderr, refused
    invalid = tmp_path / "invalid.json"
    invalid.write_text(
        json.dumps(
            [
                {"type": "vm:execute", "payload": {"vm_id": vm, "command": "x"}},
                {"type": "vm:execute", "payload": {"vm_id": vm}},
            ]
        )
    )
    refused = cluster.cli("task", "submit", "--from-file", str(invalid), check=False)
    assert refused.returncode != 0 and "tasks[1]" in refused.stderr, refused
    assert len(cluster.api_get("/tasks?limit=1000")) == before  # nothing of either queued
