"""The server's TOML config file: good, bad, env overrides, missing; `aether server --config`."""

from __future__ import annotations

from pathlib import Path

import pytest

from aether.cli.main import main
from aether.cli.output import EXIT
from aether.server.config import ConfigError, load_config

GOOD = """
data_dir = "data"
host = "0.0.0.0"
port = 7171
public_url = "https://aether-1.example.com"
lease_ttl = 5.0
disabled_features = ["criu"]
records_url = "sqlite:////var/lib/aether/records.db"
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "server.toml"
    path.write_text(text)
    return path


def test_a_good_file_sets_every_key(tmp_path: Path) -> None:
    settings = load_config(_write(tmp_path, GOOD), environ={})
    assert settings.port == 7171
    assert settings.host == "0.0.0.0"
    assert settings.lease_ttl == 5.0
    assert settings.disabled_features == ["criu"]
    assert settings.api_url() == "https://aether-1.example.com"
    assert settings.resolved_records_url() == "sqlite:////var/lib/aether/records.db"
    # a relative data_dir is relative to the file, not to the working directory
    assert settings.data_dir == (tmp_path / "data").resolve()


def test_environment_wins_over_the_file_and_flags_win_over_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write(tmp_path, GOOD)
    monkeypatch.setenv("AETHER_PORT", "7272")
    monkeypatch.setenv("AETHER_LEASE_TTL", "9")
    settings = load_config(path)
    assert settings.port == 7272
    assert settings.lease_ttl == 9.0
    assert settings.host == "0.0.0.0"  # not overridden: from the file
    assert load_config(path, {"port": 7373}).port == 7373


def test_every_problem_is_listed_with_its_key_and_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, 'prot = 7070\nport = "seventy"\nlease_ttl = 0\n[s3]\nbucket = "x"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    # unknown keys (all of them, a suggestion for the typo) and bad values, in one error
    assert str(path) in str(caught.value)
    problems = caught.value.problems
    assert len(problems) == 4, problems
    assert problems[0] == "prot: unknown key (did you mean 'port'?)"
    assert problems[1].startswith("s3: unknown key")
    assert problems[2].startswith("port: ") and problems[3].startswith("lease_ttl: ")

    path.write_text('port = "seventy"\nlease_ttl = 0\nhost = "h"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    problems = caught.value.problems
    assert len(problems) == 2, problems
    assert problems[0].startswith("port: ") and "'seventy'" in problems[0]
    assert str(path) in problems[0]
    assert problems[1].startswith("lease_ttl: ") and "greater than 0.2" in problems[1]


def test_a_bad_environment_value_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AETHER_PORT", "not-a-port")
    with pytest.raises(ConfigError) as caught:
        load_config(_write(tmp_path, GOOD))
    assert caught.value.problems[0].startswith("port: ")
    assert "(from AETHER_PORT)" in caught.value.problems[0]


def test_a_missing_file_and_bad_toml_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "absent.toml", environ={})
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(_write(tmp_path, "port = = 1"), environ={})


def test_aether_server_config_exits_2_with_the_problems(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path, "prot = 7070\nlease_ttl = 'long'\n")
    assert main(["server", "--config", str(path)]) == EXIT["usage"] == 2
    err = capsys.readouterr().err
    assert str(path) in err
    assert "prot: unknown key (did you mean 'port'?)" in err

    assert main(["server", "--config", str(tmp_path / "nope.toml")]) == 2
    assert "no such file" in capsys.readouterr().err

    path.write_text("lease_ttl = 'long'\n")
    assert main(["server", "--config", str(path)]) == 2
    assert "lease_ttl: " in capsys.readouterr().err
