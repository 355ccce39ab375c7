"""``aether keys generate|register|list|rm`` and ``aether apps set``: artifact signing.

Deploys sign with the key from ``AETHER_SIGNING_KEY`` (a PEM file path, PEM text,
or base64 of the 32 raw private bytes), else the default key file
``${XDG_CONFIG_HOME:-~/.config}/aether/signing.key`` when it exists.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
from pathlib import Path

from aether.artifacts import signing
from aether.cli.output import CliError, emit, table
from aether.cli.session import api_client

__all__ = ["deploy_key", "deploy_signature", "run", "write_private_key"]


def deploy_key() -> signing.Ed25519PrivateKey | None:
    """This machine's signing key (``AETHER_SIGNING_KEY`` or the default file), or None."""
    try:
        return signing.load_signing_key()
    except (signing.KeyFormatError, OSError) as exc:
        raise CliError(
            f"cannot load the signing key: {exc}", kind="config", code="bad_signing_key"
        ) from None


def deploy_signature(digest: str) -> str | None:
    """The base64 signature of ``digest`` with this machine's signing key, or None."""
    key = deploy_key()
    return None if key is None else signing.sign_digest(key, digest)


def write_private_key(path: Path, pem: bytes, *, force: bool) -> None:
    """Write ``pem`` with mode 0600; never replace an existing file unless ``force``."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not force:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise CliError(
                f"{path} already exists; pass --force to replace it (the old key is lost)",
                kind="io",
                code="key_exists",
            ) from None
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
        os.chmod(path, 0o600)  # whatever the umask
        return
    # replace atomically: the old key stays whole until the new one is complete
    fd, tmp = tempfile.mkstemp(prefix=".signing-", dir=path.parent)  # mkstemp: mode 0600
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _generate(args: argparse.Namespace) -> int:
    path = Path(args.out).expanduser() if args.out else signing.default_key_path()
    key = signing.generate_key()
    write_private_key(path, signing.private_key_pem(key), force=args.force)
    public, fingerprint = signing.public_key_b64(key), signing.fingerprint(key)
    emit(
        args,
        {"path": str(path), "public_key": public, "fingerprint": fingerprint},
        f"wrote {path} (mode 0600)\n"
        f"public key:  {public}\n"
        f"fingerprint: {fingerprint}\n"
        f"register it: aether keys register APP --key {path}",
    )
    return 0


def _public_key_to_register(args: argparse.Namespace) -> str:
    try:
        if args.public_key:
            return signing.public_key_b64(signing.parse_public_key(args.public_key))
        if args.key:
            path = Path(args.key).expanduser()
            return signing.public_key_b64(signing.read_public_key(path.read_bytes()))
        key = signing.load_signing_key()
    except signing.KeyFormatError as exc:
        raise CliError(f"not a usable Ed25519 key: {exc}", kind="config", code="bad_key") from None
    if key is None:
        raise CliError(
            "no key to register: pass --key PATH or --public-key B64, set "
            f"{signing.SIGNING_KEY_ENV}, or run `aether keys generate`",
            kind="usage",
        )
    return signing.public_key_b64(key)


async def run(args: argparse.Namespace) -> int:
    if args.command == "keys" and args.keys_command == "generate":
        return _generate(args)
    public: str | None = None
    if args.command == "keys" and args.keys_command == "register":
        public = _public_key_to_register(args)  # a bad key fails before any request
    if args.command == "apps-set" and args.retain is not None and args.retain < 1:
        raise CliError("--retain must be at least 1", kind="usage")
    async with api_client(args) as client:
        if args.command == "apps-set":
            settings = await client.app_settings(
                args.app,
                require_signature=args.require_signature,
                require_provenance=args.require_provenance,
                retain_deployments=args.retain,
            )
            emit(
                args,
                settings.model_dump(mode="json"),
                f"{settings.app}: require_signature={str(settings.require_signature).lower()}, "
                f"require_provenance={str(settings.require_provenance).lower()}, "
                f"retain_deployments={settings.retain_deployments or 'default'}",
            )
        elif args.keys_command == "register":
            assert public is not None
            added = await client.register_public_key(args.app, public, name=args.name)
            emit(
                args,
                added.model_dump(mode="json"),
                f"registered {added.name} ({added.fingerprint}) for {args.app} as {added.id}",
            )
        elif args.keys_command == "list":
            keys = await client.list_public_keys(args.app)
            rows = [[k.id, k.name, k.fingerprint, k.created_at.isoformat()] for k in keys]
            emit(
                args,
                {"keys": [k.model_dump(mode="json") for k in keys]},
                table(rows, ["id", "name", "fingerprint", "created"])
                if rows
                else f"no public keys registered for {args.app}",
            )
        else:
            await client.delete_public_key(args.app, args.id)
            emit(args, {"deleted": args.id}, f"removed key {args.id} from {args.app}")
    return 0
