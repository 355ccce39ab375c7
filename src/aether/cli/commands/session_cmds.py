"""``aether login`` (a token, a password, or single sign-on) and ``aether whoami``.

Each way ends with a token saved in the session file (mode 0600) for later commands:
``--token`` checks and keeps one; ``--user`` signs in with a password (and ``--totp``)
for a token of the account that expires (the server's ``login_token_hours``);
``--sso`` opens the OpenID Connect sign-in in a browser and waits on a loopback port
for the one-time code, which it exchanges, with a verifier only it holds, for a token.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import getpass
import hashlib
import os
import secrets
import sys
import webbrowser
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from aether.cli.output import CliError, emit
from aether.cli.session import ca_context, config_path, load_session, save_config, save_session

__all__ = ["run"]

SSO_TIMEOUT = 300.0  # seconds to finish signing in in the browser
_DONE_PAGE = (
    "<!doctype html><title>Aether</title><p>Signed in. You may close this window and "
    "go back to the terminal.</p>"
)


async def run(args: argparse.Namespace) -> int:
    if args.command == "whoami":
        return await _whoami(args)
    if args.rotate:
        return await _rotate(args)
    if not args.server:
        raise CliError("login needs --server URL", kind="usage")
    if args.ca_file:
        _save_ca(args.ca_file)
    if args.sso:
        issued = await _sso(args)
    elif args.user:
        issued = await _password(args)
    else:
        return await _token(args)
    path = save_session(args.server, issued["token"])
    save_config({"server": args.server})
    data = {k: v for k, v in issued.items() if k != "token"} | {"session": str(path)}
    emit(
        args,
        data,
        f"logged in to {args.server} as {issued['user']} ({issued['role']} of tenant "
        f"{issued['tenant']}, until {issued['expires_at']}; session saved in {path})",
    )
    return 0


def _save_ca(source: str) -> None:
    """Keep the cluster CA the server's certificate is checked by (config dir, 0644);
    later commands trust it (``ca_file`` in the config)."""
    from aether.trust import ca

    try:
        text = Path(source).read_text()
        ca.load_certificate(text)
    except (OSError, ValueError) as exc:
        raise CliError(f"--ca-file {source}: not a PEM certificate ({exc})", kind="usage") from None
    dest = config_path().parent / "cluster-ca.pem"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(text)
    os.environ["AETHER_CA_FILE"] = str(dest)  # this login's own calls
    save_config({"ca_file": str(dest)})


def _client(server: str, token: str | None) -> Any:
    from aether.client import ApiClient

    return ApiClient(server, token, verify=ca_context(server))


async def _token(args: argparse.Namespace) -> int:

    token = args.token or os.environ.get("AETHER_TOKEN")
    if token == "-":
        token = sys.stdin.readline().strip()
    if not token:
        raise CliError(
            "a token, an account or single sign-on is needed: --token TOKEN (or - for stdin, "
            "or AETHER_TOKEN), --user NAME, or --sso",
            kind="usage",
        )
    async with _client(args.server, token) as client:
        status = await client.status()  # proves the token works before it is saved
    path = save_session(args.server, token)
    save_config({"server": args.server})
    emit(
        args,
        {"server": args.server, "session": str(path), "leader": status.leader},
        f"logged in to {args.server} (session saved in {path})",
    )
    return 0


async def _password(args: argparse.Namespace) -> dict[str, Any]:

    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    elif sys.stdin.isatty():
        password = getpass.getpass(f"password for {args.user}: ")
    else:
        raise CliError(
            "no terminal to ask for the password: pipe it with --password-stdin", kind="usage"
        )
    async with _client(args.server, None) as client:
        result: dict[str, Any] = await client.login(
            args.user, password, tenant=args.tenant, totp=args.totp
        )
    return result


def _pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).decode().rstrip("=")


async def _sso(args: argparse.Namespace) -> dict[str, Any]:
    """The browser signs in at the provider; the server sends it back to us here with a
    one-time code, which we exchange (with the PKCE verifier) for the token."""

    verifier, challenge = _pkce()
    code: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def callback(request: web.Request) -> web.Response:
        found = request.query.get("code", "")
        if found and not code.done():
            code.set_result(found)
        return web.Response(text=_DONE_PAGE, content_type="text/html")

    app = web.Application()
    app.router.add_get("/callback", callback)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        query: dict[str, Any] = {"cli_port": port, "cli_challenge": challenge}
        if args.tenant:
            query["tenant"] = args.tenant
        url = f"{args.server.rstrip('/')}/api/v1/auth/oidc/start?{urlencode(query)}"
        print(f"sign in in your browser: {url}", file=sys.stderr, flush=True)
        if not args.no_browser:
            webbrowser.open(url)
        try:
            one_time = await asyncio.wait_for(code, SSO_TIMEOUT)
        except TimeoutError as exc:
            raise CliError(
                f"no sign-in came back within {SSO_TIMEOUT:.0f} s; run `aether login --sso` again",
                kind="network",
            ) from exc
    finally:
        await runner.cleanup()
    async with _client(args.server, None) as client:
        result: dict[str, Any] = await client.oidc_exchange(one_time, verifier)
    return result


async def _whoami(args: argparse.Namespace) -> int:
    from aether.cli.session import api_client

    async with api_client(args) as client:
        me = await client.whoami()
    who = me["user"] or f"token {me['token_id']} (no account)"
    lines = [
        f"{who}: {me['role']} of tenant {me['tenant']}"
        + (" (cluster admin)" if me["cluster_admin"] else ""),
        f"expires: {me['expires_at'] or 'never'}",
    ]
    if me["user"] and len(me["tenants"]) > 1:
        lines.append(f"tenants: {', '.join(me['tenants'])} (log in with --tenant to switch)")
    emit(args, me, "\n".join(lines))
    return 0


async def _rotate(args: argparse.Namespace) -> int:
    """Swap the session's token for a new one; the old one stops working at once."""

    session = load_session(args.server, args.token)
    async with _client(session.server, session.token) as client:
        issued = await client.rotate_token()
    path = save_session(session.server, issued["token"])
    emit(
        args,
        {"server": session.server, "session": str(path), "token_id": issued["id"]},
        f"rotated the token for {session.server}; the old one is revoked (session: {path})",
    )
    return 0
