"""``aether users``: a tenant's members (people and service accounts) and their roles.

``create`` adds an account with a role in your tenant (``add`` makes an existing one a
member of another tenant too: the cluster admin's) (a person's password comes from
``--password-stdin`` or a prompt; ``--totp`` enrols a second factor and prints its
``otpauth://`` URI once), ``ls``/``get`` show members, ``set`` changes a role or
details, ``rm`` takes an account out of the tenant (its tokens there stop working),
``passwd`` sets a password (your own needs the current one), ``totp`` enrols (or with
``--off`` removes) a second factor.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any

from aether.cli.output import CliError, emit, table
from aether.cli.session import api_client

__all__ = ["run"]


def _read_password(args: argparse.Namespace, prompt: str) -> str:
    if getattr(args, "password_stdin", False):
        return sys.stdin.readline().rstrip("\n")
    if sys.stdin.isatty():
        first = getpass.getpass(prompt)
        if getpass.getpass("again: ") != first:
            raise CliError("the two passwords differ", kind="usage")
        return first
    raise CliError("no terminal to ask for the password: use --password-stdin", kind="usage")


def _line(u: dict[str, Any]) -> list[str]:
    how = [k for k in ("password", "totp", "sso") if u[k]]
    state = "disabled" if u["disabled"] else ""
    return [u["name"], u["kind"], u["role"], u["email"] or "", "+".join(how), state]


_HEADERS = ["name", "kind", "role", "email", "sign-in", "state"]


async def run(args: argparse.Namespace) -> int:
    action = args.users_command
    async with api_client(args) as client:
        if action == "ls":
            users = await client.users("GET")
            emit(args, {"users": users}, table([_line(u) for u in users], _HEADERS))
        elif action == "get":
            user = await client.users("GET", f"/{args.name}")
            emit(args, user, table([_line(user)], _HEADERS))
        elif action == "create":
            body: dict[str, Any] = {"name": args.name, "role": args.role, "kind": args.kind}
            for key in ("email", "display_name"):
                if getattr(args, key):
                    body[key] = getattr(args, key)
            if args.kind == "person" and not args.no_password:
                body["password"] = _read_password(args, f"password for {args.name}: ")
            body["totp"] = bool(args.totp)
            user = await client.users("POST", "", body)
            text = f"{user['kind']} {user['name']} added as {user['role']}"
            if user.get("totp_enrolment"):
                text += (
                    "\nTOTP (shown once; add it to an authenticator app): "
                    f"{user['totp_enrolment']['uri']}"
                )
            emit(args, user, text)
        elif action == "add":
            user = await client.json(
                "PUT",
                f"/api/v1/tenants/{args.tenant}/members/{args.name}",
                json={"role": args.role},
            )
            emit(args, user, f"{args.name} is now {user['role']} of tenant {args.tenant}")
        elif action == "set":
            patch: dict[str, Any] = {}
            for key in ("role", "email", "display_name"):
                if getattr(args, key) is not None:
                    patch[key] = getattr(args, key)
            if args.disable or args.enable:
                patch["disabled"] = bool(args.disable)
            if not patch:
                raise CliError(
                    "nothing to change: give --role, --email, --display-name, "
                    "--disable or --enable",
                    kind="usage",
                )
            user = await client.users("PATCH", f"/{args.name}", patch)
            emit(args, user, table([_line(user)], _HEADERS))
        elif action == "rm":
            result = await client.users("DELETE", f"/{args.name}")
            emit(
                args,
                result,
                f"{args.name} removed from the tenant ({result['tokens_revoked']} token(s) "
                "revoked)",
            )
        elif action == "passwd":
            body = {"password": _read_password(args, f"new password for {args.name}: ")}
            if args.current:
                body["current_password"] = getpass.getpass("current password: ")
            await client.users("PUT", f"/{args.name}/password", body)
            emit(args, {"name": args.name, "password": True}, f"password of {args.name} set")
        else:  # totp
            if args.off:
                await client.users("DELETE", f"/{args.name}/totp")
                emit(args, {"name": args.name, "totp": False}, f"{args.name}: TOTP removed")
            else:
                enrolled = await client.users("POST", f"/{args.name}/totp", {})
                emit(
                    args,
                    enrolled,
                    "TOTP (shown once; add it to an authenticator app): " + enrolled["uri"],
                )
    return 0
