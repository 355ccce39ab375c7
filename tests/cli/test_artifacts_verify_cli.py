"""``aether deploy`` with provenance and ``aether artifacts verify`` against a real server."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from aether.artifacts.signing import fingerprint, load_private_key
from tests.cli.test_keys_cli import EXAMPLE, aether, one_json
from tests.support.cluster import Cluster


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def test_deploy_uploads_provenance_and_verify_catches_a_tampered_artifact(
    tmp_path: Path,
) -> None:
    cluster = Cluster(tmp_path / "cluster")
    home = tmp_path / "home"
    source = tmp_path / "src"
    shutil.copytree(EXAMPLE, source)
    _git(source, "init", "-q")
    _git(source, "add", ".")
    _git(source, "commit", "-qm", "first")
    commit = _git(source, "rev-parse", "HEAD")
    try:
        cluster.start_server()
        server = {"AETHER_SERVER": cluster.api, "AETHER_TOKEN": cluster.admin_token}
        key_path = tmp_path / "deploy.pem"
        assert aether("keys", "generate", "--out", str(key_path), home=home).returncode == 0
        app = "proven-hello"
        registered = aether("keys", "register", app, "--key", str(key_path), home=home, env=server)
        assert registered.returncode == 0, registered.stderr
        settings = aether(
            "apps", "set", app, "--require-provenance", "--format", "json", home=home, env=server
        )
        assert settings.returncode == 0, settings.stderr
        assert one_json(settings)["require_provenance"] is True

        # without a key: no statement, and the app refuses the deployment
        unsigned = aether(
            "deploy", str(source), "--app", app, "--no-wait", "--format", "json",
            home=home, env=server,
        )  # fmt: skip
        assert unsigned.returncode == 42, unsigned.stdout + unsigned.stderr
        assert one_json(unsigned)["error"]["code"] == "provenance_required"

        signed_env = {**server, "AETHER_SIGNING_KEY": str(key_path)}
        deployed = aether(
            "deploy", str(source), "--app", app, "--no-wait", "--format", "json",
            home=home, env=signed_env,
        )  # fmt: skip
        assert deployed.returncode == 0, deployed.stderr + cluster.logs()
        made = one_json(deployed)
        assert (made["provenance"], made["provenance_verified"]) == (True, True)
        digest = made["digest"]

        shown = aether("artifacts", "provenance", digest, "--format", "json", home=home, env=server)
        assert shown.returncode == 0, shown.stderr
        found = one_json(shown)
        key = load_private_key(key_path.read_bytes())
        assert found["signed_by"] == fingerprint(key)
        statement = found["statement"]
        assert statement["subject"][0]["digest"]["sha256"] == digest.removeprefix("sha256:")
        deps = {
            d["name"]: d for d in statement["predicate"]["buildDefinition"]["resolvedDependencies"]
        }
        assert deps["git"]["digest"] == {"gitCommit": commit}
        assert deps["git"]["annotations"] == {"dirty": False}
        assert statement["predicate"]["runDetails"]["builder"]["id"].startswith("aether-cli/")
        assert statement["predicate"]["buildDefinition"]["externalParameters"]["app"] == app

        good = aether("artifacts", "verify", digest, home=home, env=server)
        assert good.returncode == 0, good.stdout + good.stderr
        lines = good.stdout.strip().splitlines()
        assert [line.split()[:2] for line in lines[:4]] == [
            ["ok", "digest"],
            ["ok", "signature"],
            ["ok", "provenance"],
            ["ok", "sbom"],
        ]
        assert lines[-1] == f"{digest}: verified"

        # one byte of the stored archive changed behind the server's back
        stored = next(p for p in (cluster.server_dir).rglob(digest.removeprefix("sha256:")))
        stored.chmod(0o600)
        data = bytearray(stored.read_bytes())
        data[len(data) // 2] ^= 0xFF
        stored.write_bytes(bytes(data))
        bad = aether("artifacts", "verify", digest, "--format", "json", home=home, env=server)
        assert bad.returncode == 43, bad.stdout + bad.stderr
        verdict = json.loads(bad.stdout)
        assert verdict["ok"] is False
        checks = {c["name"]: c for c in verdict["checks"]}
        assert checks["digest"]["ok"] is False
        assert digest in checks["digest"]["detail"]
        text = aether("artifacts", "verify", digest, home=home, env=server)
        assert text.returncode == 43
        assert text.stdout.splitlines()[0].startswith("FAIL digest")

        unknown = aether("artifacts", "verify", "sha256:" + "0" * 64, home=home, env=server)
        assert unknown.returncode == 41, unknown.stdout + unknown.stderr
        usage = aether("artifacts", "verify", "nope", home=home, env=server)
        assert usage.returncode == 2, usage.stdout + usage.stderr
    finally:
        cluster.stop()
