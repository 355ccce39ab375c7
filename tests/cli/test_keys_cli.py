"""``aether keys`` and signed deploys, as a user runs them against a real cluster."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from aether.artifacts.signing import fingerprint, load_private_key, public_key_b64, verify_digest
from tests.support.cluster import Cluster

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hello-python"


def aether(
    *args: str, home: Path, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the CLI with a clean environment: no AETHER_* or XDG_* but what is passed."""
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("AETHER_") and not k.startswith("XDG_")
    }
    base.update({"XDG_CACHE_HOME": str(home / "cache"), "XDG_CONFIG_HOME": str(home / "config")})
    base.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "aether", *args],
        env=base,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def one_json(result: subprocess.CompletedProcess[str]) -> Any:
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, (result.stdout, result.stderr)
    return json.loads(lines[0])


def test_keys_generate_writes_a_0600_key_and_refuses_to_overwrite(tmp_path: Path) -> None:
    first = aether("keys", "generate", "--format", "json", home=tmp_path)
    assert first.returncode == 0, first.stderr
    data = one_json(first)
    path = tmp_path / "config" / "aether" / "signing.key"  # the default place
    assert data["path"] == str(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = load_private_key(path.read_bytes())
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert data["public_key"] == public_key_b64(key)
    assert data["fingerprint"] == fingerprint(key)

    again = aether("keys", "generate", "--format", "json", home=tmp_path)
    assert again.returncode == 30
    assert one_json(again)["error"]["code"] == "key_exists"
    assert load_private_key(path.read_bytes()).private_bytes_raw() == key.private_bytes_raw()

    forced = aether("keys", "generate", "--force", home=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert "public key:" in forced.stdout and "fingerprint: sha256:" in forced.stdout
    assert load_private_key(path.read_bytes()).private_bytes_raw() != key.private_bytes_raw()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    other = tmp_path / "elsewhere" / "ci.pem"
    text = aether("keys", "generate", "--out", str(other), home=tmp_path)
    assert text.returncode == 0, text.stderr
    assert str(other) in text.stdout
    assert stat.S_IMODE(other.stat().st_mode) == 0o600


def test_a_bad_signing_key_variable_is_a_config_error(tmp_path: Path) -> None:
    result = aether(
        "deploy",
        str(EXAMPLE),
        "--server",
        "http://127.0.0.1:9",
        "--token",
        "t",
        "--format",
        "json",
        home=tmp_path,
        env={"AETHER_SIGNING_KEY": "not a key"},
    )
    assert result.returncode == 10
    assert one_json(result)["error"]["code"] == "bad_signing_key"


@pytest.mark.e2e
def test_signed_deploys_against_a_real_cluster(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path / "cluster")
    home = tmp_path / "home"
    try:
        cluster.start_server()
        cluster.start_node("n1")
        server = {"AETHER_SERVER": cluster.api, "AETHER_TOKEN": cluster.admin_token}
        key_path = tmp_path / "deploy.pem"
        generated = one_json(
            aether("keys", "generate", "--out", str(key_path), "--format", "json", home=home)
        )
        app = "signed-hello"

        settings = aether(
            "apps", "set", app, "--require-signature", "--format", "json", home=home, env=server
        )
        assert settings.returncode == 0, settings.stderr
        assert one_json(settings) == {
            "app": app,
            "require_signature": True,
            "require_provenance": False,
            "retain_deployments": None,
        }

        # no signing key anywhere: the upload goes unsigned and the deployment is refused
        unsigned = aether(
            "deploy",
            str(EXAMPLE),
            "--app",
            app,
            "--instances",
            "1",
            "--format",
            "json",
            home=home,
            env=server,
        )
        assert unsigned.returncode == 42, unsigned.stderr
        error = one_json(unsigned)["error"]
        assert error["code"] == "signature_required"
        assert app in error["message"]

        registered = aether(
            "keys",
            "register",
            app,
            "--key",
            str(key_path),
            "--name",
            "laptop",
            "--format",
            "json",
            home=home,
            env=server,
        )
        assert registered.returncode == 0, registered.stderr
        key = one_json(registered)
        assert key["fingerprint"] == generated["fingerprint"]
        assert key["public_key"] == generated["public_key"]
        listed = one_json(aether("keys", "list", app, "--format", "json", home=home, env=server))
        assert listed == {"keys": [key]}

        # with the key (a path in AETHER_SIGNING_KEY): the artifact the server already
        # holds unsigned gets the signature, verifies, deploys and serves
        signed_env = {**server, "AETHER_SIGNING_KEY": str(key_path)}
        signed = aether(
            "deploy",
            str(EXAMPLE),
            "--app",
            app,
            "--instances",
            "1",
            "--format",
            "json",
            home=home,
            env=signed_env,
        )
        assert signed.returncode == 0, signed.stderr + cluster.logs()
        data = one_json(signed)
        assert data["uploaded"] is False
        assert data["verified"] is True
        assert verify_digest(generated["public_key"], data["digest"], data["signature"])
        assert data["status"] == "active"

        # a changed tree, signed with the PEM text itself: a fresh, verified upload
        changed = tmp_path / "changed"
        shutil.copytree(EXAMPLE, changed)
        (changed / "VERSION").write_text("2\n")
        pem_env = {**server, "AETHER_SIGNING_KEY": key_path.read_text()}
        second = aether(
            "deploy", str(changed), "--app", app, "--format", "json", home=home, env=pem_env
        )
        assert second.returncode == 0, second.stderr + cluster.logs()
        data2 = one_json(second)
        assert (data2["uploaded"], data2["verified"], data2["version"]) == (True, True, 2)
        assert data2["signature"] and data2["digest"] != data["digest"]

        # the key removed: the same signed artifact is refused at the next deploy
        removed = aether("keys", "rm", app, key["id"], "--format", "json", home=home, env=server)
        assert removed.returncode == 0, removed.stderr
        assert one_json(aether("keys", "list", app, "--format", "json", home=home, env=server)) == {
            "keys": []
        }
        refused = aether(
            "deploy", str(EXAMPLE), "--app", app, "--format", "json", home=home, env=signed_env
        )
        assert refused.returncode == 42
        assert one_json(refused)["error"]["code"] == "signature_invalid"

        # turned off, the app deploys without any key again
        off = aether("apps", "set", app, "--no-require-signature", home=home, env=server)
        assert off.returncode == 0, off.stderr
        assert "require_signature=false" in off.stdout
        plain = aether(
            "deploy", str(EXAMPLE), "--app", app, "--format", "json", home=home, env=server
        )
        assert plain.returncode == 0, plain.stderr
        assert (one_json(plain)["signature"], one_json(plain)["verified"]) == (None, None)
    finally:
        cluster.stop()
