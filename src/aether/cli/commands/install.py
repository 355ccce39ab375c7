"""``aether install``: render a profile's units and configuration, and install them.

``--out DIR`` writes the rendering (every machine's directory and
``HARDENING.md``); ``--apply`` installs one machine's files under ``--root``
(default ``/``), creates the service user (``--create-user``) and the
directories the units need, and runs ``systemctl daemon-reload`` (only on
``/``). A file that differs from the rendering is refused without ``--force``;
``*.env`` files are never replaced. Exit status: 0 done, 2 bad options, 42 a
conflict (nothing written), 30 a file could not be written.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from aether.cli.output import CliError, emit
from aether.ops.install import InstallOptions, OptionsError, Rendered, machines, render, resolved
from aether.ops.install_apply import Step, conflicts, for_machine, plan, write

__all__ = ["run"]


def _aether_bin(given: str | None) -> str:
    if given:
        return os.path.abspath(given)
    running = sys.argv[0] if sys.argv else ""
    if os.path.basename(running).startswith("aether") and os.path.isfile(running):
        return os.path.abspath(running)
    found = shutil.which("aether")
    if found:
        return os.path.abspath(found)
    raise CliError("cannot tell where `aether` is installed: give --aether-bin PATH", kind="usage")


def _split(value: str | None) -> tuple[str, ...]:
    return tuple(v.strip() for v in (value or "").split(",") if v.strip())


def options_of(args: argparse.Namespace) -> InstallOptions:
    given: dict[str, Any] = {
        "user": args.user,
        "node_user": args.node_user,
        "data_dir": args.data_dir,
        "node_data_dir": args.node_data_dir,
        "config_dir": args.config_dir,
        "port": args.port,
        "node_port": args.node_port,
        "router_port": args.router_port,
        "https_port": args.https_port,
        "router_host": args.router_host,
        "server_url": args.server_url,
        "etcd_prefix": args.etcd_prefix,
        "etcd_ca_file": args.etcd_ca_file,
        "postgres": args.postgres,
        "s3": args.s3,
        "s3_endpoint": args.s3_endpoint,
    }
    values = {k: v for k, v in given.items() if v is not None}
    values["servers"] = _split(args.servers)
    values["etcd"] = _split(args.etcd)
    return InstallOptions(aether_bin=_aether_bin(args.aether_bin), **values)


def _report(steps: list[Step]) -> list[dict[str, Any]]:
    return [
        {"path": str(s.path), "action": s.action, "mode": f"{s.mode:04o}", "mode_fixed": s.mode_fix}
        for s in steps
    ]


def _refuse(steps: list[Step], where: str) -> None:
    paths = conflicts(steps)
    if paths:
        listed = "\n".join(f"  - {p}" for p in paths)
        raise CliError(
            f"refusing to overwrite files in {where} that differ from the rendering "
            f"(--force replaces them; *.env files are never replaced):\n{listed}",
            kind="refused",
            code="install_conflict",
            details={"conflicts": [str(p) for p in paths]},
        )


def run(args: argparse.Namespace) -> int:
    if not args.out and not args.apply:
        raise CliError("say where: --out DIR (render), --apply (install), or both", kind="usage")
    try:
        options = options_of(args)
        rendered = render(args.profile, options)
    except OptionsError as exc:
        lines = "\n".join(f"  - {p}" for p in exc.problems)
        raise CliError(
            f"cannot render the {args.profile} profile:\n{lines}",
            kind="usage",
            code="invalid_options",
            details={"problems": exc.problems},
        ) from None
    result: dict[str, Any] = {"profile": args.profile, "machines": machines(rendered)}
    text: list[str] = []
    if args.out:
        out = Path(args.out).resolve()
        steps = plan(rendered, out, force=args.force)
        _refuse(steps, str(out))
        write(steps, rendered, out)
        result["out"] = {"dir": str(out), "files": _report(steps)}
        text += [f"rendered the {args.profile} profile into {out}:", *_lines(steps, out)]
        text.append(f"read {out / 'HARDENING.md'} before installing.")
    if args.apply:
        applied, next_steps = _apply(args, rendered, resolved(args.profile, options))
        result["apply"] = applied
        text += next_steps
    emit(args, result, "\n".join(text))
    return 0


def _lines(steps: list[Step], base: Path) -> list[str]:
    lines = []
    for step in steps:
        note = f" (mode set to {step.mode:04o})" if step.mode_fix else ""
        lines.append(f"  {step.action:<9} {step.path.relative_to(base)}{note}")
    return lines


def _machine(args: argparse.Namespace, rendered: dict[str, Rendered]) -> str:
    names = machines(rendered)
    if args.machine is None:
        if len(names) == 1:
            return names[0]
        raise CliError(
            f"the {args.profile} profile has several machines: say which this one is with "
            f"--machine {{{','.join(names)}}}",
            kind="usage",
        )
    if args.machine not in names:
        raise CliError(
            f"--machine {args.machine}: the {args.profile} profile has {', '.join(names)}",
            kind="usage",
        )
    return str(args.machine)


def _apply(
    args: argparse.Namespace, rendered: dict[str, Rendered], options: InstallOptions
) -> tuple[dict[str, Any], list[str]]:
    machine = _machine(args, rendered)
    root = Path(args.root).resolve() if args.root else Path("/")
    on_system = root == Path("/")
    if on_system and os.geteuid() != 0:
        raise CliError(
            "installing onto / needs root (sudo), or --root DIR to install below a directory",
            kind="usage",
        )
    files = for_machine(rendered, machine)
    steps = plan(files, root, force=args.force)
    _refuse(steps, str(root))
    done: list[str] = []
    if args.create_user:
        done.append(_create_user(options, on_system))
    write(steps, files, root)
    done += _directories(options, machine, root, on_system)
    units = sorted(  # the server first: a local node waits for it
        (Path(p).name for p in files if p.endswith(".service")),
        key=lambda unit: (unit != "aether-server.service", unit),
    )
    if on_system:
        done.append(_daemon_reload())
    else:
        done.append("systemctl daemon-reload: skipped (--root)")
    text = [f"installed machine {machine} of the {args.profile} profile into {root}:"]
    text += _lines(steps, root)
    text += [f"  {line}" for line in done]
    text += ["next:"]
    if any(p.endswith(".env") for p in files):
        envs = ", ".join(str(root / p) for p in sorted(files) if p.endswith(".env"))
        text.append(f"  fill in the secrets in {envs} (mode 0600)")
    if "aether-server.service" in units:
        config = f"{options.config_dir}/server.toml"
        env = f"{options.config_dir}/server.env"
        check = f"{options.aether_bin} server --config {config} --check"
        text.append(f"  set -a; . {env}; set +a; {check}")
    text.append(f"  systemctl enable --now {' '.join(u.removesuffix('.service') for u in units)}")
    applied = {"machine": machine, "root": str(root), "files": _report(steps), "done": done}
    return applied, text


def _create_user(options: InstallOptions, on_system: bool) -> str:
    if not on_system:
        return f"user {options.user}: not created (--root)"
    import pwd

    try:
        pwd.getpwnam(options.user)
        return f"user {options.user}: exists"
    except KeyError:
        pass
    command = ["useradd", "--system", "--user-group", "--no-create-home"]
    command += ["--home-dir", options.data_dir, "--shell", "/usr/sbin/nologin", options.user]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise CliError(f"useradd {options.user} failed: {completed.stderr.strip()}", kind="config")
    return f"user {options.user}: created (system user, no login)"


def _directories(options: InstallOptions, machine: str, root: Path, on_system: bool) -> list[str]:
    """Directories the units need that systemd does not make (``StateDirectory=`` makes
    those under /var/lib): a data directory elsewhere, the TLS directories."""
    server = machine == "local" or machine.startswith("server")
    node = machine in ("local", "node")
    # path, mode, owner user, owner group (None: root)
    wanted: list[tuple[str, int, str | None, str | None]] = []
    if server and not options.data_dir.startswith("/var/lib/"):
        wanted.append((options.data_dir, 0o700, options.user, options.user))
    if node and not options.node_data_dir.startswith("/var/lib/"):
        wanted.append((options.node_data_dir, 0o700, options.node_user, options.node_user))
    if server and machine != "local":
        wanted.append((f"{options.config_dir}/tls", 0o750, None, options.user))
    if machine == "node":
        wanted.append((f"{options.config_dir}/tls", 0o755, None, None))
        wanted.append((f"{options.config_dir}/router-tls", 0o750, None, options.node_user))
    lines = []
    for path, mode, user, group in wanted:
        target = root / path.lstrip("/")
        if target.is_dir():
            lines.append(f"directory {target}: exists")
            continue
        target.mkdir(parents=True, mode=mode)
        target.chmod(mode)
        if on_system and user:
            shutil.chown(target, user=user, group=group or user)
        elif on_system and group:
            shutil.chown(target, group=group)
        lines.append(f"directory {target}: created ({mode:04o})")
    return lines


def _daemon_reload() -> str:
    if shutil.which("systemctl") is None:
        return "systemctl daemon-reload: skipped (no systemctl here)"
    completed = subprocess.run(
        ["systemctl", "daemon-reload"], capture_output=True, text=True, check=False
    )
    if completed.returncode != 0:
        return f"systemctl daemon-reload failed: {completed.stderr.strip()}"
    return "systemctl daemon-reload: done"
