"""CLI features of the deploy pipeline: pack-only, dry-run, completions, logs, rotation."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from aether.artifacts.provenance import TrustedKey, sbom_digest, verify_envelope
from aether.artifacts.signing import fingerprint, generate_key, private_key_pem, public_key_b64
from tests.cli.test_cli import aether
from tests.support.cluster import Cluster

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hello-python"


def test_pack_only_writes_the_artifact_and_describes_it(tmp_path: Path) -> None:
    out = tmp_path / "hello.tar.gz"
    result = aether(
        tmp_path, "deploy", str(EXAMPLE), "--pack-only", "--out", str(out), "--format", "json"
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["artifact"] == str(out) and out.exists()
    assert data["size_bytes"] == out.stat().st_size
    assert {e["path"] for e in data["manifest"]} == {"aether.toml", "app.py"}
    assert data["signature"] is None
    assert data["sbom"]["bomFormat"] == "CycloneDX"
    again = json.loads(
        aether(
            tmp_path,
            "deploy",
            str(EXAMPLE),
            "--pack-only",
            "--out",
            str(tmp_path / "b.tgz"),
            "--format",
            "json",
        ).stdout
    )
    assert again["digest"] == data["digest"]  # reproducible
    no_sbom = json.loads(
        aether(
            tmp_path,
            "deploy",
            str(EXAMPLE),
            "--pack-only",
            "--no-sbom",
            "--out",
            str(tmp_path / "c.tgz"),
            "--format",
            "json",
        ).stdout
    )
    assert no_sbom["sbom"] is None


def test_pack_only_with_a_key_writes_the_signed_provenance_beside_it(tmp_path: Path) -> None:
    key = generate_key()
    pem = tmp_path / "k.pem"
    pem.write_bytes(private_key_pem(key))
    out = tmp_path / "hello.tar.gz"
    result = aether(
        tmp_path,
        "deploy",
        str(EXAMPLE),
        "--pack-only",
        "--out",
        str(out),
        "--format",
        "json",
        env={"AETHER_SIGNING_KEY": str(pem)},
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["provenance"] is True
    assert data["provenance_file"] == str(out) + ".intoto.json"
    envelope = json.loads(Path(data["provenance_file"]).read_text())
    trusted = [TrustedKey(fingerprint(key), public_key_b64(key))]
    verified = verify_envelope(envelope, data["digest"], trusted)
    assert verified.signed_by == fingerprint(key)
    assert verified.sbom_digest == sbom_digest(data["sbom"])


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completions_name_every_command(tmp_path: Path, shell: str) -> None:
    result = aether(tmp_path, "completions", "--shell", shell)
    assert result.returncode == 0
    for command in ("deploy", "status", "rollback", "events", "completions", "keys"):
        assert command in result.stdout
    if shell == "bash":
        assert subprocess.run(["bash", "-n"], input=result.stdout, text=True).returncode == 0
    if shell == "fish" and shutil.which("fish"):
        assert subprocess.run(["fish", "-n"], input=result.stdout, text=True).returncode == 0


def test_help_lists_the_commands(tmp_path: Path) -> None:
    result = aether(tmp_path, "--help")
    assert result.returncode == 0
    for command in ("up", "deploy", "list", "logs", "completions", "gc"):
        assert command in result.stdout


@pytest.mark.e2e
def test_pipeline_commands_against_a_real_server(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path / "cluster")
    try:
        cluster.start_server()
        cluster.start_node("n1")
        env = {"AETHER_SERVER": cluster.api, "AETHER_TOKEN": cluster.admin_token}

        dry = aether(tmp_path, "deploy", str(EXAMPLE), "--dry-run", "--format", "json", env=env)
        assert dry.returncode == 0, dry.stderr
        plan = json.loads(dry.stdout)
        assert plan["dry_run"] is True and plan["artifact_on_server"] is False
        assert plan["files_to_upload"] == 2
        assert cluster.api_get("/apps") == []  # nothing happened

        deployed = aether(
            tmp_path, "deploy", str(EXAMPLE), "--instances", "1", "--format", "json", env=env
        )
        assert deployed.returncode == 0, deployed.stderr
        dep = json.loads(deployed.stdout)
        again = json.loads(
            aether(
                tmp_path, "deploy", str(EXAMPLE), "--dry-run", "--format", "json", env=env
            ).stdout
        )
        assert again["artifact_on_server"] is True

        listed = json.loads(aether(tmp_path, "list", "--format", "json", env=env).stdout)
        assert [a["name"] for a in listed["apps"]] == ["hello-python"]
        events = json.loads(
            aether(tmp_path, "events", dep["deployment_id"], "--format", "json", env=env).stdout
        )
        kinds = [e["type"] for e in events["events"]]
        assert kinds[0] == "created" and "healthy" in kinds
        by_version = aether(tmp_path, "events", "hello-python@1", env=env)
        assert "created" in by_version.stdout

        logs = aether(tmp_path, "logs", "--app", "hello-python", env=env)
        assert logs.returncode == 0

        # JSON logs on stderr, one object per line; stdout stays one JSON object
        verbose = aether(
            tmp_path,
            "--log-level",
            "debug",
            "--log-format",
            "json",
            "status",
            "--format",
            "json",
            env=env,
        )
        assert verbose.returncode == 0
        json.loads(verbose.stdout)
        assert verbose.stderr.strip(), "debug logging produced nothing"
        for line in verbose.stderr.strip().splitlines():
            assert {"ts", "level", "logger", "message"} <= set(json.loads(line))

        # a namespace that is not the token's is refused before anything happens
        wrong = aether(
            tmp_path, "status", "--format", "json", env={**env, "AETHER_DEFAULT_NAMESPACE": "other"}
        )
        assert wrong.returncode == 42
        assert json.loads(wrong.stdout)["error"]["code"] == "forbidden"
        right = aether(tmp_path, "status", env={**env, "AETHER_DEFAULT_NAMESPACE": "default"})
        assert right.returncode == 0

        # rotation: the session gets a new token and the old one stops working
        login = aether(tmp_path, "login", "--server", cluster.api, "--token", cluster.admin_token)
        assert login.returncode == 0, login.stderr
        rotated = aether(tmp_path, "login", "--rotate", "--format", "json")
        assert rotated.returncode == 0, rotated.stderr
        session = json.loads((tmp_path / "cache" / "aether" / "session.json").read_text())
        assert session["token"] != cluster.admin_token
        assert aether(tmp_path, "status").returncode == 0  # the new token works
        old = aether(tmp_path, "status", "--token", cluster.admin_token, "--format", "json")
        assert old.returncode == 42
        assert json.loads(old.stdout)["error"]["code"] == "unauthorized"
    finally:
        cluster.stop()
