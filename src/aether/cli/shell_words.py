"""What ``aether shell`` completes, as a pure function of the parser and the names.

``candidates(parser, words, text, names)``: ``words`` are the complete words
before the cursor, ``text`` the word being typed. The first word completes to a
command (or a shell word: ``help``, ``exit``), a word after a command with
subcommands to a subcommand, a word starting with ``-`` to the options of the
command (and subcommand) typed so far, and a positional word to what the command
takes there: an app, a slice, or an entry point of the slice named before it
(``names``: the caller's apps and slices, fetched by the shell).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence

__all__ = ["SHELL_WORDS", "Names", "candidates"]

#: Words the shell itself understands.
SHELL_WORDS = ("help", "exit", "quit")

#: (command, subcommand or "") → what each positional takes, in order.
_POSITIONALS: Mapping[tuple[str, str], tuple[str, ...]] = {
    ("scale", ""): ("app",),
    ("logs", ""): ("app",),
    ("rollback", ""): ("app",),
    ("promote", ""): ("app",),
    ("deployments", ""): ("app",),
    ("apps", "set"): ("app",),
    ("apps", "rm"): ("app",),
    ("keys", "register"): ("app",),
    ("keys", "list"): ("app",),
    ("slice", "get"): ("slice",),
    ("slice", "call"): ("slice", "entry"),
}


class Names:
    """The caller's apps and slices (with entry points), as the shell last fetched them."""

    def __init__(
        self,
        apps: Callable[[], Sequence[str]],
        slices: Callable[[], Mapping[str, Sequence[str]]],
    ) -> None:
        self.apps = apps
        self.slices = slices


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(parser: argparse.ArgumentParser) -> list[str]:
    return [o for a in parser._actions for o in a.option_strings]


def candidates(
    parser: argparse.ArgumentParser, words: Sequence[str], text: str, names: Names
) -> list[str]:
    """The completions of ``text`` after ``words``, sorted."""
    commands = _subparsers(parser)
    if not words:
        return sorted(w for w in (*commands, *SHELL_WORDS) if w.startswith(text))
    command = commands.get(words[0])
    if command is None:
        return []
    subs = _subparsers(command)
    rest = [w for w in words[1:] if not w.startswith("-")]
    sub = ""
    target = command
    if subs:
        if not rest:
            if text.startswith("-"):
                return sorted(o for o in _options(command) if o.startswith(text))
            return sorted(s for s in subs if s.startswith(text))
        sub, rest = rest[0], rest[1:]
        target = subs.get(sub, command)
    if text.startswith("-"):
        return sorted(o for o in _options(target) if o.startswith(text))
    kinds = _POSITIONALS.get((words[0], sub), ())
    if len(rest) >= len(kinds):
        return []
    kind = kinds[len(rest)]
    if kind == "app":
        pool: Sequence[str] = names.apps()
    elif kind == "slice":
        pool = list(names.slices())
    else:  # an entry point of the slice named just before
        pool = names.slices().get(rest[-1], ()) if rest else ()
    return sorted(p for p in pool if p.startswith(text))
