"""``aether shell``: the ``aether`` commands at a prompt, with history and completion of
commands, options, apps, slices and entry points; or a script of them, one command a
line (``aether shell -f FILE``, or ``aether shell < FILE``).

A line is split as a shell would (quotes, ``#`` comments) and run as ``aether LINE``
in this process. ``help`` lists the commands, ``exit`` or ``quit`` (or end of input)
leaves. A script stops at the first command that fails and exits with its code
(``--keep-going`` runs every line and exits with the last failure's code), naming
the line on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from aether.cli.main import build_parser, main
from aether.cli.output import EXIT, CliError
from aether.cli.shell_words import Names, candidates

__all__ = ["complete", "history_path", "run", "run_line", "run_lines"]

PROMPT = "aether> "
#: How long fetched app and slice names are used for completion before asking again.
NAMES_TTL = 10.0


def history_path() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "aether" / "shell_history"


def run_line(line: str) -> int | None:
    """Run one line; its exit code, or None for ``exit``/``quit``."""
    try:
        words = shlex.split(line, comments=True)
    except ValueError as exc:
        sys.stderr.write(f"aether shell: {exc}\n")
        return EXIT["usage"]
    if not words:
        return 0
    if words[0] in ("exit", "quit"):
        return None
    if words[0] == "help":
        words = ["--help", *words[1:]] if len(words) == 1 else [*words[1:], "--help"]
    if words[0] == "shell":
        sys.stderr.write("aether shell: already in the shell\n")
        return EXIT["usage"]
    try:
        return main(words)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else EXIT["usage"]


def run_lines(lines: Iterable[str], *, keep_going: bool, where: str) -> int:
    """A script: every line in turn; the first failure's code (or the last one's)."""
    failed = 0
    for number, line in enumerate(lines, 1):
        code = run_line(line)
        if code is None:
            break
        if code:
            sys.stderr.write(f"aether shell: {where}:{number}: `{line.strip()}` exited {code}\n")
            failed = code
            if not keep_going:
                break
    return failed


class _CachedNames(Names):
    """The caller's apps and slices, fetched when completion needs them (at most once
    per ``NAMES_TTL``); none when the server cannot be asked."""

    def __init__(self, fetch: Callable[[str], Any]) -> None:
        super().__init__(self._apps, self._slices)
        self._fetch = fetch
        self._cache: dict[str, tuple[float, Any]] = {}

    def _get(self, path: str, empty: Any) -> Any:
        at, value = self._cache.get(path, (0.0, None))
        if value is None or time.monotonic() - at > NAMES_TTL:
            try:
                value = self._fetch(path)
            except Exception:  # completion never breaks the prompt
                value = empty
            self._cache[path] = (time.monotonic(), value)
        return value

    def _apps(self) -> Sequence[str]:
        return [str(a.get("name")) for a in self._get("/api/v1/apps", [])]

    def _slices(self) -> Mapping[str, Sequence[str]]:
        return {
            str(s.get("name")): [str(e) for e in s.get("entries", [])]
            for s in self._get("/api/v1/slices", [])
        }


def complete(parser: argparse.ArgumentParser, buffer: str, text: str, names: Names) -> list[str]:
    """Completions of ``text``, the word at the end of the line ``buffer``."""
    head = buffer[: len(buffer) - len(text)]
    try:
        words = shlex.split(head)
    except ValueError:  # an open quote
        return []
    return candidates(parser, words, text, names)


def _interactive(names: Names) -> int:
    import readline  # only at a prompt: a script does not need it

    parser = build_parser()
    history = history_path()
    history.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):  # none yet, or unreadable: start afresh
        readline.read_history_file(history)
    matches: list[str] = []

    def completer(text: str, state: int) -> str | None:
        nonlocal matches
        if state == 0:
            matches = complete(parser, readline.get_line_buffer(), text, names)
        return matches[state] if state < len(matches) else None

    readline.set_completer(completer)
    readline.set_completer_delims(" \t\n\"'")
    readline.parse_and_bind("tab: complete")
    last = 0
    try:
        while True:
            try:
                line = input(PROMPT)
            except EOFError:
                sys.stdout.write("\n")
                break
            except KeyboardInterrupt:
                sys.stdout.write("\n")
                continue
            code = run_line(line)
            if code is None:
                break
            last = code
    finally:
        readline.set_history_length(1000)
        readline.write_history_file(history)
        os.chmod(history, 0o600)
    return last


def run(args: argparse.Namespace) -> int:
    if args.server:
        os.environ["AETHER_SERVER"] = args.server
    if args.token:
        os.environ["AETHER_TOKEN"] = args.token
    if args.file and args.file != "-":
        try:
            text = Path(args.file).read_text()
        except OSError as exc:
            raise CliError(f"cannot read {args.file}: {exc.strerror}", kind="io") from None
        return run_lines(text.splitlines(), keep_going=args.keep_going, where=args.file)
    if args.file == "-" or not sys.stdin.isatty():
        return run_lines(sys.stdin, keep_going=args.keep_going, where="stdin")
    from aether.cli.reads import get_json
    from aether.cli.session import load_session

    return _interactive(_CachedNames(lambda path: get_json(load_session(), path)))
