"""The server's configuration file: one TOML file, ``AETHER_*`` overrides, checked at start.

Precedence, highest first: command-line flags, ``AETHER_<KEY>`` environment
variables, the TOML file, the defaults in :class:`ServerSettings`. The file's
keys are the settings' names (``port``, ``state_url``, ``records_url``, …), at
the top level. A relative ``data_dir`` in the file is relative to the file.

Every problem is reported at once — unknown keys (with a suggestion), values of
the wrong type or out of range — each with its key and where it came from, in
one :class:`ConfigError`.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import ValidationError

from aether.server.settings import ServerSettings

__all__ = [
    "ConfigError",
    "effective_config",
    "env_name",
    "load_config",
    "missing_files",
    "read_config_file",
]


class ConfigError(ValueError):
    """The configuration cannot be used; ``problems`` lists each ``key: what is wrong``."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid server configuration ({source}):\n{lines}")


def env_name(key: str) -> str:
    return f"AETHER_{key.upper()}"


def _env_has(key: str, environ: Mapping[str, str]) -> bool:
    wanted = env_name(key)
    return any(name.upper() == wanted for name in environ)


def read_config_file(path: Path) -> dict[str, Any]:
    """The file's table, with unknown keys refused (all of them, with suggestions)."""
    data, problems = _read(path)
    if problems:
        raise ConfigError(str(path), problems)
    return data


def _read(path: Path) -> tuple[dict[str, Any], list[str]]:
    """The file's known keys, and a problem line for each unknown one."""
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(str(path), [f"{path}: no such file"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), [f"{path}: cannot be read: {exc}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), [f"{path}: not valid TOML: {exc}"]) from None
    known = set(ServerSettings.model_fields)
    problems = []
    for key, value in data.items():
        if key in known:
            continue
        hint = ""
        if isinstance(value, dict):
            hint = " (tables are not used: write the settings at the top level)"
        else:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            if close:
                hint = f" (did you mean {close[0]!r}?)"
        problems.append(f"{key}: unknown key{hint}")
    data = {k: v for k, v in data.items() if k in known}
    if isinstance(data.get("data_dir"), str) and not Path(data["data_dir"]).is_absolute():
        data["data_dir"] = str((path.parent / data["data_dir"]).resolve())
    return data, problems


def load_config(
    path: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> ServerSettings:
    """Settings from ``path`` (optional), the environment and ``overrides`` (flags).

    Raises :class:`ConfigError` naming each bad key and its source.
    """
    environ = os.environ if environ is None else environ
    file_values, problems = _read(path) if path is not None else ({}, [])
    flags = dict(overrides or {})
    values = {k: v for k, v in file_values.items() if not _env_has(k, environ) and k not in flags}
    values.update(flags)
    source = str(path) if path is not None else "environment"
    try:
        settings = ServerSettings(**values)
    except ValidationError as exc:
        for error in exc.errors():
            loc = [str(part) for part in error["loc"]]
            key = loc[0] if loc else ""
            where = ""
            if key in flags:
                where = " (from the command line)"
            elif _env_has(key, environ):
                where = f" (from {env_name(key)})"
            elif key in file_values:
                where = f" (from {path})"
            message = str(error["msg"])
            if key:
                shown = ".".join(loc)
                got = error.get("input")
                detail = f", got {got!r}" if not isinstance(got, dict) else ""
                problems.append(f"{shown}: {message}{detail}{where}")
            else:
                problems.append(message.removeprefix("Value error, "))
        raise ConfigError(source, problems) from None
    if problems:
        raise ConfigError(source, problems)
    return settings


_SECRET_KEY = re.compile(r"(password|secret|api_key|access_key|token)")
REDACTED = "<redacted>"


def _redact_url(value: str) -> str:
    """A URL with the password of its user info (``user:PASSWORD@``) hidden."""
    try:
        parts = urlsplit(value)
        password = parts.password
    except ValueError:
        return value
    if not password:
        return value
    users, _, hosts = parts.netloc.rpartition("@")
    return parts._replace(netloc=f"{users.partition(':')[0]}:{REDACTED}@{hosts}").geturl()


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def effective_config(settings: ServerSettings) -> str:
    """The settings as the server would run with them, in the file's TOML form, with
    secrets redacted: keys naming a password, secret, key or token, and passwords in
    URLs. Unset optional settings are listed as comments."""
    lines = []
    for key, value in sorted(settings.model_dump().items()):
        if value is None:
            lines.append(f"# {key}: (unset)")
            continue
        secret = _SECRET_KEY.search(key) and not key.endswith("_file")  # a path is no secret
        if isinstance(value, str) and value and secret:
            value = REDACTED
        elif isinstance(value, str) and "://" in value:
            value = _redact_url(value)
        lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def missing_files(settings: ServerSettings) -> list[str]:
    """The files the settings name that are not there yet (the TLS certificates and keys,
    a given CA), each as ``key: path``: a valid configuration the server cannot start
    with until they are. (etcd's TLS files are read by the validation itself.)"""
    missing = []
    for key in ("tls_cert", "tls_key", "ca_cert_file", "ca_key_file"):
        path = getattr(settings, key)
        if path and not Path(path).is_file():
            missing.append(f"{key}: {path}")
    return missing
