"""Issue 16's acceptance, with real processes: a cluster admin creates tenants A and B,
people of each sign in (A with a password, B with single sign-on at a real OpenID
Connect provider), each deploys an app called ``web``, each reaches only its own, and
the audit chain verifies, then fails once a row is altered in the database."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx

from tests.support.cluster import Cluster
from tests.support.oidc import oidc_provider, sign_in_at_provider
from tests.support.waiting import wait_for

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hello-python"
PASSWORD = "a-long-password-for-ann"


def _app(root: Path, greeting: str) -> Path:
    """The example app, greeting with ``greeting``, named ``web``."""
    path = root / greeting
    shutil.copytree(EXAMPLE, path)
    toml = (path / "aether.toml").read_text()
    toml = toml.replace('name = "hello-python"', 'name = "web"')
    toml = toml.replace("instances = 2", "instances = 1")
    (path / "aether.toml").write_text(toml.replace("Hello from Aether", greeting))
    return path


def _sso_login(cluster: Cluster, home: Path, subject: str) -> None:
    env = {**cluster.env, "XDG_CACHE_HOME": str(home / "cache"), "XDG_CONFIG_HOME": str(home)}
    env.pop("AETHER_TOKEN", None)
    login = subprocess.Popen(
        [sys.executable, "-m", "aether", "login", "--server", cluster.api, "--sso", "--no-browser"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert login.stderr is not None
        url = login.stderr.readline().split(": ", 1)[1].strip()
        with httpx.Client(timeout=10.0) as browser:
            back = sign_in_at_provider(browser, url, subject)
            assert back.status_code == 303, back.text
            browser.get(back.headers["location"])
        out, err = login.communicate(timeout=30)
    finally:
        login.kill()
    assert login.returncode == 0, err
    assert "operator of tenant team-b" in out, out


def _as(cluster: Cluster, home: Path, *args: str, check: bool = True) -> str:
    """``aether ARGS`` as the person whose session is in ``home``."""
    env = {**cluster.env, "XDG_CACHE_HOME": str(home / "cache"), "XDG_CONFIG_HOME": str(home)}
    env.pop("AETHER_TOKEN", None)
    result = subprocess.run(
        [sys.executable, "-m", "aether", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check:
        assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result.stdout + result.stderr


def test_two_tenants_sign_in_and_deploy_the_same_app_name(cluster: Cluster, tmp_path: Path) -> None:
    with oidc_provider({"ben-sub": "ben@example.com"}) as provider:
        cluster.env.update(
            {
                "AETHER_OIDC_ISSUER": provider.issuer,
                "AETHER_OIDC_CLIENT_ID": provider.client_id,
                "AETHER_OIDC_CLIENT_SECRET": provider.client_secret,
            }
        )
        cluster.start_server()
        cluster.start_node("node-1")
        # the cluster admin makes the tenants; each tenant's admin adds its person
        admin_a = cluster.cli("tenants", "create", "team-a").stdout.strip().splitlines()[-1]
        admin_b = cluster.cli("tenants", "create", "team-b").stdout.strip().splitlines()[-1]
        assert admin_a.startswith("ae_") and admin_b.startswith("ae_")
        made = subprocess.run(
            [
                sys.executable,
                "-m",
                "aether",
                "users",
                "create",
                "ann",
                "--role",
                "operator",
                "--password-stdin",
                "--token",
                admin_a,
            ],
            env=cluster.env,
            input=PASSWORD + "\n",
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert made.returncode == 0, made.stderr
        cluster.cli(
            "users",
            "create",
            "ben",
            "--role",
            "operator",
            "--email",
            "ben@example.com",
            "--no-password",
            "--token",
            admin_b,
        )
        # Ann signs in with her password, Ben through the provider
        ann, ben = tmp_path / "ann", tmp_path / "ben"
        env = {**cluster.env, "XDG_CACHE_HOME": str(ann / "cache"), "XDG_CONFIG_HOME": str(ann)}
        env.pop("AETHER_TOKEN", None)
        login = subprocess.run(
            [
                sys.executable,
                "-m",
                "aether",
                "login",
                "--server",
                cluster.api,
                "--user",
                "ann",
                "--password-stdin",
            ],
            env=env,
            input=PASSWORD + "\n",
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert login.returncode == 0, login.stderr
        _sso_login(cluster, ben, "ben-sub")
        assert _as(cluster, ann, "whoami").startswith("ann: operator of tenant team-a")
        assert _as(cluster, ben, "whoami").startswith("ben: operator of tenant team-b")

        # both deploy an app called web; neither is told the other's exists
        _as(cluster, ann, "deploy", str(_app(tmp_path, "Hello from team A")))
        _as(cluster, ben, "deploy", str(_app(tmp_path, "Hello from team B")))
        router = cluster.router("node-1")

        def greeting(url: str, host: str | None = None) -> str | None:
            headers = {"Host": host} if host else {}
            try:
                answer = httpx.get(url, headers=headers, timeout=5.0)
            except httpx.HTTPError:
                return None
            return str(answer.json()["message"]) if answer.status_code == 200 else None

        for tenant, words in (("team-a", "team A"), ("team-b", "team B")):
            by_host = wait_for(
                lambda t=tenant: greeting(f"{router}/", f"web.{t}.localhost"),  # type: ignore[misc]
                timeout=60,
                what=f"{tenant}'s web by host",
            )
            assert by_host == f"Hello from {words}"
            assert greeting(f"{router}/t/{tenant}/apps/web/") == f"Hello from {words}"
        # the default tenant has no app web: the plain forms find nothing
        plain = httpx.get(f"{router}/", headers={"Host": "web.localhost"}, timeout=5.0)
        assert plain.status_code == 404
        # each sees only its own app
        assert "Hello from team B" not in _as(cluster, ann, "apps")
        listed_b = _as(cluster, ben, "deployments", "web")
        assert "v1" in listed_b or "1" in listed_b

        # the audit chain verifies, and breaks once a row is altered in the database
        assert cluster.cli("audit", "verify").stdout.startswith("audit chain intact")
        db = sqlite3.connect(cluster.server_dir / "records.db")
        with db:
            db.execute(
                "UPDATE audit_events SET actor = 'mallory' WHERE id = (SELECT MIN(id) FROM "
                "audit_events WHERE actor = 'ann')"
            )
        db.close()
        tampered = cluster.cli("audit", "verify", check=False)
        assert tampered.returncode == 43 and "BROKEN at row" in tampered.stdout, tampered
