"""``aether completions --shell bash|zsh|fish``: generated from the parser itself."""

from __future__ import annotations

import argparse
import sys

from aether.cli.main import build_parser

__all__ = ["run", "script"]


def _commands(parser: argparse.ArgumentParser) -> dict[str, tuple[str, list[str]]]:
    """Subcommand → (help, its long and short options)."""
    out: dict[str, tuple[str, list[str]]] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                options = [o for a in sub._actions for o in a.option_strings]
                out[name] = (helps.get(name, ""), options)
    return out


def _globals(parser: argparse.ArgumentParser) -> list[str]:
    return [o for a in parser._actions for o in a.option_strings]


def _bash(parser: argparse.ArgumentParser) -> str:
    commands = _commands(parser)
    cases = "\n".join(
        f'        {name}) opts="{" ".join(options)}" ;;' for name, (_, options) in commands.items()
    )
    return f"""# bash completion for aether: eval "$(aether completions --shell bash)"
_aether() {{
    local cur cmd opts i
    cur="${{COMP_WORDS[COMP_CWORD]}}"
    cmd=""
    for ((i = 1; i < COMP_CWORD; i++)); do
        case "${{COMP_WORDS[i]}}" in -*) ;; *) cmd="${{COMP_WORDS[i]}}"; break ;; esac
    done
    if [[ -z "$cmd" ]]; then
        COMPREPLY=($(compgen -W "{" ".join(commands)} {" ".join(_globals(parser))}" -- "$cur"))
        return
    fi
    case "$cmd" in
{cases}
        *) opts="" ;;
    esac
    if [[ "$cur" == -* ]]; then
        COMPREPLY=($(compgen -W "$opts" -- "$cur"))
    else
        COMPREPLY=($(compgen -f -- "$cur"))
    fi
}}
complete -F _aether aether
"""


def _zsh(parser: argparse.ArgumentParser) -> str:
    return (
        '# zsh completion for aether: eval "$(aether completions --shell zsh)"\n'
        "autoload -U +X bashcompinit && bashcompinit\n" + _bash(parser)
    )


def _fish(parser: argparse.ArgumentParser) -> str:
    lines = ["# fish completion for aether: aether completions --shell fish | source"]
    for name, (help_text, options) in _commands(parser).items():
        desc = help_text.replace("'", "\\'")
        lines.append(f"complete -c aether -f -n '__fish_use_subcommand' -a {name} -d '{desc}'")
        for option in options:
            if option.startswith("--"):
                lines.append(
                    f"complete -c aether -n '__fish_seen_subcommand_from {name}' -l {option[2:]}"
                )
            elif len(option) == 2:
                lines.append(
                    f"complete -c aether -n '__fish_seen_subcommand_from {name}' -s {option[1:]}"
                )
    return "\n".join(lines) + "\n"


def script(shell: str) -> str:
    parser = build_parser()
    return {"bash": _bash, "zsh": _zsh, "fish": _fish}[shell](parser)


def run(args: argparse.Namespace) -> int:
    sys.stdout.write(script(args.shell))
    return 0
