"""Where the CLI keeps its session (server + token) and settings.

- session: ``${XDG_CACHE_HOME:-~/.cache}/aether/session.json`` (0600)
- settings: ``${XDG_CONFIG_HOME:-~/.config}/aether/config.toml``

Precedence: command-line flag, then ``AETHER_SERVER`` / ``AETHER_TOKEN``, then
the session, then the config file. The server may be several URLs, comma-separated
(``--server http://a:7070,http://b:7070``) or a list in config.toml: the client fails
over between them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, NamedTuple

from aether.cli.output import CliError

__all__ = ["Session", "config_path", "load_session", "save_config", "save_session", "session_path"]


def _xdg(var: str, default: str) -> Path:
    return Path(os.environ.get(var) or Path.home() / default)


def session_path() -> Path:
    return _xdg("XDG_CACHE_HOME", ".cache") / "aether" / "session.json"


def config_path() -> Path:
    return _xdg("XDG_CONFIG_HOME", ".config") / "aether" / "config.toml"


class Session(NamedTuple):
    server: str
    token: str | None
    namespace: str | None = None


def setting(name: str) -> Any:
    """A config.toml setting; ``AETHER_<NAME>`` in the environment overrides the file."""
    value = os.environ.get(f"AETHER_{name.upper()}")
    if value:
        return value
    return _read_config().get(name)


def _read_config() -> dict[str, Any]:
    path = config_path()
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    import tomllib  # only when there is a file: most commands have none

    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CliError(f"{path} is not valid TOML: {exc}", kind="config") from None


def load_session(server: str | None = None, token: str | None = None) -> Session:
    stored: dict[str, Any] = {}
    try:
        stored = json.loads(session_path().read_text())
    except FileNotFoundError:
        pass
    except ValueError:
        raise CliError(
            f"{session_path()} is corrupt; run `aether login` again", kind="config"
        ) from None
    url = (
        server
        or os.environ.get("AETHER_SERVER")
        or stored.get("server")
        or _read_config().get("server")
    )
    if isinstance(url, list):  # config.toml: server = ["http://a:7070", "http://b:7070"]
        url = ",".join(str(u) for u in url)
    tok = token or os.environ.get("AETHER_TOKEN") or stored.get("token")
    if not url:
        raise CliError(
            "no server configured: run `aether up`, or `aether login --server URL --token TOKEN`",
            kind="config",
        )
    namespace = setting("default_namespace")
    return Session(
        server=str(url),
        token=str(tok) if tok else None,
        namespace=str(namespace) if namespace else None,
    )


def save_session(server: str, token: str) -> Path:
    path = session_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"server": server, "token": token}, fh)
    os.chmod(path, 0o600)
    return path


def save_config(updates: dict[str, Any]) -> Path:
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    config = _read_config()
    config.update(updates)
    import tomli_w

    path.write_text(tomli_w.dumps(config))
    return path


def ca_context(server: str) -> Any:
    """For calls to ``server`` (URLs): an ``ssl`` context trusting the cluster CA saved at
    login (``ca_file`` in the config, or ``AETHER_CA_FILE``) when one is https and a CA is
    saved; None otherwise (plain http, or the system's CAs)."""
    path = os.environ.get("AETHER_CA_FILE") or setting("ca_file")
    if not path or "https://" not in server:
        return None
    import ssl

    try:
        return ssl.create_default_context(cafile=str(path))
    except (OSError, ssl.SSLError) as exc:
        raise CliError(
            f"the cluster CA file {path} cannot be read ({exc}); run `aether login --ca-file FILE`",
            kind="config",
        ) from None


def api_client(args: Any) -> Any:
    """The API client for this invocation's server and token."""
    from aether.client import ApiClient

    session = load_session(getattr(args, "server", None), getattr(args, "token", None))
    return ApiClient(
        session.server,
        session.token,
        namespace=session.namespace,
        verify=ca_context(session.server),
    )
