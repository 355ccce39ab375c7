"""``aether install``: every profile renders units systemd accepts, configs the server
accepts, secrets only in 0600 files; ``--apply --root`` installs, is idempotent and
refuses to replace changed files. Real processes: the ``aether`` command, systemd-analyze.
(Nothing here installs onto ``/``: every ``--apply`` has ``--root``.)"""

from __future__ import annotations

import datetime as dt
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from aether.cli.main import build_parser
from aether.server.config import effective_config, load_config
from aether.trust.ca import new_authority

AETHER = str(Path(sys.executable).parent / "aether")
PROFILES = ("user", "pro", "enterprise")
SECRET_LINE = re.compile(r"^AETHER_[A-Z0-9_]+=", re.MULTILINE)


def aether(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [AETHER, *args], capture_output=True, text=True, timeout=60, env=env, check=False
    )


def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        pytest.fail(
            "systemd-analyze is missing: it checks the rendered units. Install it with "
            "`bash scripts/system-deps.sh test` (Debian package: systemd)"
        )
    return found


@pytest.fixture(scope="module")
def etcd_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real CA certificate: the enterprise config's etcd CA is read by the check."""
    path = tmp_path_factory.mktemp("etcd") / "ca.pem"
    path.write_text(new_authority("etcd-test", dt.datetime.now(dt.UTC)).cert_pem)
    return path


def render_args(profile: str, etcd_ca: Path) -> list[str]:
    args = ["install", "--profile", profile, "--aether-bin", AETHER]
    if profile == "enterprise":
        args += ["--servers", "a1.example,a2.example,a3.example", "--etcd-ca-file", str(etcd_ca)]
        args += ["--s3-endpoint", "https://minio.example:9000"]
    return args


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory, etcd_ca: Path) -> dict[str, Path]:
    out = {}
    for profile in PROFILES:
        directory = tmp_path_factory.mktemp(profile)
        done = aether(*render_args(profile, etcd_ca), "--out", str(directory))
        assert done.returncode == 0, done.stderr
        out[profile] = directory
    return out


def exec_start(unit: Path) -> list[str]:
    text = unit.read_text().replace("\\\n", " ")
    (line,) = [ln for ln in text.splitlines() if ln.startswith("ExecStart=")]
    return shlex.split(line.removeprefix("ExecStart=").replace("%H", "node-1.example"))


def env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key] = value
    return values


@pytest.mark.parametrize("profile", PROFILES)
def test_units_pass_systemd_analyze_verify(rendered: dict[str, Path], profile: str) -> None:
    analyze = systemd_analyze()
    units = sorted(rendered[profile].rglob("*.service"))
    expected = {"user": 2, "pro": 2, "enterprise": 4}[profile]
    assert len(units) == expected
    for unit in units:
        done = subprocess.run(
            [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, (unit, done.stderr)
        assert done.stderr == "", (unit, done.stderr)  # warnings (unknown keys) are failures
        text = unit.read_text()
        assert "Restart=on-failure" in text
        assert "NoNewPrivileges=true" in text
        assert "EnvironmentFile=/etc/aether/" in text
        if unit.name == "aether-server.service":
            assert "User=aether" in text
            assert "ProtectSystem=strict" in text
        else:  # the node's sandboxes need a /proc without over-mounts
            assert "ProtectKernelTunables" not in text.split("NoNewPrivileges")[1]


@pytest.mark.parametrize("profile", PROFILES)
def test_exec_start_is_what_the_real_commands_accept(
    rendered: dict[str, Path], profile: str
) -> None:
    for unit in sorted(rendered[profile].rglob("*.service")):
        words = exec_start(unit)
        assert words[0] == AETHER
        args = build_parser(words[1], every=False).parse_args(words[1:])  # exits if refused
        assert args.command == words[1]
        if args.command == "node":
            assert args.data_dir == "/var/lib/aether-node"
            servers = args.server.split(",")
            assert len(servers) == (3 if profile == "enterprise" else 1)
            if profile != "user":
                assert all(s.startswith("https://") for s in servers)
                assert args.https_port == 8443 and args.https_redirect


@pytest.mark.parametrize("profile", PROFILES)
def test_server_config_passes_the_dry_run(rendered: dict[str, Path], profile: str) -> None:
    configs = sorted(rendered[profile].rglob("server.toml"))
    assert len(configs) == (3 if profile == "enterprise" else 1)
    for config in configs:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AETHER_")}
        env |= env_file(config.with_name("server.env"))
        done = aether("server", "--config", str(config), "--check", env=env)
        assert done.returncode == 0, done.stderr
        assert "valid; effective settings" in done.stdout
        assert "CHANGE_ME" not in done.stdout  # the placeholders are secrets: redacted
        settings = tomllib.loads(done.stdout)  # the effective settings, as TOML
        assert settings["data_dir"] == "/var/lib/aether"
        if profile == "enterprise":
            assert settings["state_url"].startswith("etcds://a1.example:2379,")
            assert (
                settings["records_url"] == "postgresql://aether:<redacted>@db.internal:5432/aether"
            )
            assert settings["artifacts_url"] == "s3://aether-artifacts/aether"
            assert settings["etcd_password"] == "<redacted>"  # from server.env, not the file
            assert settings["etcd_username"] == "aether"
            assert settings["public_url"].startswith("https://a")
        elif profile == "pro":
            assert settings["tls_cert"] and settings["node_port"] == 7071
            # valid, but the certificate is still to be put there: said, not refused
            assert "no such file yet, tls_cert: /etc/aether/tls/server.crt" in done.stderr
            assert settings["host"] == "0.0.0.0"
        else:
            assert settings["host"] == "127.0.0.1" and not settings["tls_cert"]


def test_the_dry_run_refuses_a_bad_config(rendered: dict[str, Path], tmp_path: Path) -> None:
    config = tmp_path / "server.toml"
    text = (rendered["user"] / "local/etc/aether/server.toml").read_text()
    config.write_text(text + "prot = 1\n")
    done = aether("server", "--config", str(config), "--check")
    assert done.returncode == 2
    assert "prot: unknown key (did you mean 'port'?)" in done.stderr
    assert done.stdout == ""


@pytest.mark.parametrize("profile", PROFILES)
def test_secrets_only_in_0600_files(rendered: dict[str, Path], profile: str) -> None:
    files = [p for p in rendered[profile].rglob("*") if p.is_file()]
    assert (rendered[profile] / "HARDENING.md").is_file()
    for path in files:
        mode = stat.S_IMODE(path.stat().st_mode)
        if path.suffix == ".env":
            assert mode == 0o600, path
        else:
            assert mode == 0o644, path
            assert not SECRET_LINE.search(path.read_text()), path
    if profile == "enterprise":
        env = env_file(rendered[profile] / "server-1/etc/aether/server.env")
        assert set(env) == {
            "AETHER_RECORDS_URL",
            "AETHER_ETCD_PASSWORD",
            "AETHER_S3_ACCESS_KEY",
            "AETHER_S3_SECRET_KEY",
        }


def test_hardening_checklist_per_profile(rendered: dict[str, Path]) -> None:
    user = (rendered["user"] / "HARDENING.md").read_text()
    assert "listens on 127.0.0.1 only" in user and "secrets.key" in user
    pro = (rendered["pro"] / "HARDENING.md").read_text()
    assert "| 7070/tcp | servers |" in pro and "| 7071/tcp | servers |" in pro
    assert "aether tokens join --ttl 1h --uses 1" in pro and "2379" not in pro
    enterprise = (rendered["enterprise"] / "HARDENING.md").read_text()
    assert "| 2379/tcp | etcd members | the servers only |" in enterprise
    assert "--apply --machine server-3" in enterprise
    assert "Every server needs **the same** key" in enterprise
    assert "yours to provide" in enterprise


def test_apply_into_a_root_is_idempotent_and_refuses_changed_files(tmp_path: Path) -> None:
    root = tmp_path / "root"
    done = aether(
        "install", "--profile", "user", "--aether-bin", AETHER, "--apply", "--root", str(root)
    )
    assert done.returncode == 0, done.stderr
    unit = root / "etc/systemd/system/aether-server.service"
    env = root / "etc/aether/server.env"
    assert stat.S_IMODE(unit.stat().st_mode) == 0o644
    assert stat.S_IMODE(env.stat().st_mode) == 0o600
    assert (root / "etc/systemd/system/aether-node.service").is_file()
    assert "daemon-reload: skipped (--root)" in done.stdout
    assert "systemctl enable --now aether-server aether-node" in done.stdout
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}

    again = aether(
        "install", "--profile", "user", "--aether-bin", AETHER, "--apply", "--root", str(root)
    )
    assert again.returncode == 0, again.stderr
    assert "create" not in again.stdout and again.stdout.count("unchanged") == 5
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} == before

    # a changed unit is refused (nothing written), replaced with --force
    unit.write_text(unit.read_text() + "# local edit\n")
    env.write_text(env.read_text() + "AETHER_OIDC_CLIENT_SECRET=s3cret\n")
    env.chmod(0o644)
    refused = aether(
        "install", "--profile", "user", "--aether-bin", AETHER, "--apply", "--root", str(root)
    )
    assert refused.returncode == 42
    assert "refusing to overwrite" in refused.stderr and str(unit) in refused.stderr
    assert str(env) not in refused.stderr  # env files are the operator's, never a conflict
    assert unit.read_text().endswith("# local edit\n")
    assert stat.S_IMODE(env.stat().st_mode) == 0o644  # nothing at all was done
    forced = aether(
        "install", "--profile", "user", "--aether-bin", AETHER, "--apply", "--root", str(root),
        "--force", "--format", "json",
    )  # fmt: skip
    assert forced.returncode == 0, forced.stderr
    assert not unit.read_text().endswith("# local edit\n")
    assert env.read_text().endswith("AETHER_OIDC_CLIENT_SECRET=s3cret\n")  # kept
    assert stat.S_IMODE(env.stat().st_mode) == 0o600  # but tightened again


def test_apply_needs_the_machine_of_a_multi_machine_profile(tmp_path: Path) -> None:
    base = ["install", "--profile", "pro", "--aether-bin", AETHER, "--apply", "--root"]
    done = aether(*base, str(tmp_path))
    assert done.returncode == 2
    assert "--machine {node,server}" in done.stderr
    node = aether(*base, str(tmp_path), "--machine", "node")
    assert node.returncode == 0, node.stderr
    assert (tmp_path / "etc/systemd/system/aether-node.service").is_file()
    assert not (tmp_path / "etc/systemd/system/aether-server.service").exists()
    assert (tmp_path / "etc/aether/router-tls").is_dir()  # --tls-dir must exist at start


def test_bad_options_are_listed_with_exit_2(tmp_path: Path) -> None:
    done = aether(
        "install", "--profile", "enterprise", "--aether-bin", AETHER, "--out", str(tmp_path),
        "--servers", "only-one", "--postgres", "postgresql://aether:pw@db/aether", "--s3", "bucket",
    )  # fmt: skip
    assert done.returncode == 2
    assert "--servers: name at least two servers" in done.stderr
    assert "--postgres: leave the password out" in done.stderr
    assert "--s3: 'bucket' is not s3://BUCKET/PREFIX" in done.stderr
    assert "pw" not in done.stderr.replace("password", "")
    assert not list(tmp_path.iterdir())  # nothing written
    home = aether(
        "install",
        "--profile",
        "user",
        "--aether-bin",
        "/root/.local/bin/aether",
        "--out",
        str(tmp_path / "h"),
    )
    assert home.returncode == 2 and "in a home directory" in home.stderr
    assert aether("install", "--profile", "user").returncode == 2  # neither --out nor --apply


def test_effective_config_redacts_secrets() -> None:
    settings = load_config(
        None,
        {
            "records_url": "postgresql://aether:hunter2@db:5432/aether",
            "s3_access_key": "AKIA",
            "s3_secret_key": "hunter3",
            "oidc_client_secret": "hunter4",
            "secrets_key_file": "/etc/aether/secrets.key",
        },
        environ={},
    )
    text = effective_config(settings)
    assert "hunter" not in text and "AKIA" not in text
    assert 'records_url = "postgresql://aether:<redacted>@db:5432/aether"' in text
    assert 'secrets_key_file = "/etc/aether/secrets.key"' in text  # a path, shown
    assert "# public_url: (unset)" in text
