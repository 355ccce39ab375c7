"""``.aetherignore``: which files of an app directory stay out of its artifact.

The syntax is gitignore's (one glob per line, ``#`` comments, blank lines,
``!negation``, a ``/`` at the start or in the middle anchors to the root, a
trailing ``/`` matches directories only, ``**`` spans directories), because
people already know it; matching is done by ``pathspec``'s ``GitIgnoreSpec``
rather than by a home-grown glob translator.

Only the ``.aetherignore`` at the root is read (no per-directory files). As in
git, a file inside an ignored directory cannot be re-included, because the walk
never enters that directory. The default ignores apply whatever the user file
says (a ``!.git/`` does not bring ``.git`` back): they are never app content and
would make the digest depend on the machine.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pathspec

from aether.errors import BadRequestError

__all__ = ["DEFAULT_IGNORES", "IGNORE_FILE", "IgnoreRules"]

IGNORE_FILE = ".aetherignore"

DEFAULT_IGNORES: tuple[str, ...] = (
    ".git/",
    "__pycache__/",
    "*.pyc",
    ".aether/",
    ".venv/",
    ".DS_Store",
)


def _compile(lines: Iterable[str], source: str) -> pathspec.GitIgnoreSpec:
    cleaned = [line.rstrip("\r\n") for line in lines]
    try:
        return pathspec.GitIgnoreSpec.from_lines(cleaned)
    except (ValueError, TypeError) as exc:
        raise BadRequestError(
            f"invalid ignore pattern in {source}: {exc}", code="bad_ignore_pattern"
        ) from exc


class IgnoreRules:
    """Compiled default + user ignore patterns; ask it about root-relative POSIX paths."""

    def __init__(self, patterns: Iterable[str] = (), *, source: str = "ignore patterns") -> None:
        self._defaults = _compile(DEFAULT_IGNORES, "default ignores")
        self._user = _compile(patterns, source)

    @classmethod
    def for_root(cls, root: Path, extra: Iterable[str] = ()) -> IgnoreRules:
        """Rules for an app directory: its ``.aetherignore`` (if any), then ``extra``.

        ``extra`` comes last, so it wins over the file (gitignore's last-match rule).
        """
        lines: list[str] = []
        ignore_file = root / IGNORE_FILE
        if ignore_file.is_file():
            try:
                lines = ignore_file.read_text(encoding="utf-8").splitlines()
            except UnicodeDecodeError as exc:
                raise BadRequestError(
                    f"{ignore_file} is not valid UTF-8", code="bad_ignore_pattern"
                ) from exc
        lines.extend(extra)
        return cls(lines, source=str(ignore_file))

    def is_ignored(self, rel_path: str, *, is_dir: bool) -> bool:
        """Whether ``rel_path`` (relative to the root, ``/``-separated) is left out.

        ``is_dir`` matters because a pattern ending in ``/`` matches directories only;
        symlinks count as files, as in git.
        """
        rel = rel_path.strip("/")
        if not rel:
            return False
        candidate = rel + "/" if is_dir else rel
        return self._defaults.match_file(candidate) or self._user.match_file(candidate)
