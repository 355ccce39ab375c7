"""The command line builds only the arguments of the command being run: the same
parser, command by command, as the full one (``aether completions`` uses the full one)."""

from __future__ import annotations

import argparse

import pytest

from aether.cli.main import build_parser, command_of


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


FULL = build_parser()


def _nested_help(parser: argparse.ArgumentParser) -> list[str]:
    """The help of ``parser`` and of each subcommand under it, depth first."""
    helps = [parser.format_help()]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                helps.extend(_nested_help(child))
    return helps


@pytest.mark.parametrize("name", sorted(_commands(FULL)))
def test_each_command_alone_is_built_as_in_the_full_parser(name: str) -> None:
    lazy = build_parser(name, every=False)
    assert _nested_help(_commands(lazy)[name]) == _nested_help(_commands(FULL)[name])
    # the other commands are listed, and have no arguments of their own
    others = [p for n, p in _commands(lazy).items() if n != name]
    assert others and all(not p._actions for p in others)


def test_the_top_level_help_lists_every_command_either_way() -> None:
    assert build_parser(None, every=False).format_help() == FULL.format_help()


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        ([], None),
        (["--help"], None),
        (["list"], "list"),
        (["task", "get", "t1"], "task"),
        (["--log-level", "debug", "status"], "status"),
        (["--log-format", "json", "--log-level", "info", "nodes"], "nodes"),
        (["--log-level=debug", "apps", "set", "x"], "apps"),
        (["no-such-command"], "no-such-command"),
    ],
)
def test_the_command_is_the_first_word_that_is_not_a_global_option(
    argv: list[str], command: str | None
) -> None:
    assert command_of(argv) == command


def test_an_unknown_command_is_refused_with_the_list_of_commands(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from aether.cli.main import main

    with pytest.raises(SystemExit) as exc:
        main(["no-such-command"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'no-such-command'" in err and "deploy" in err
