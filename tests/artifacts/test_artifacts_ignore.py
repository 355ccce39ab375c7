"""``.aetherignore`` rules, alone and applied by ``pack``."""

from __future__ import annotations

from pathlib import Path

import pytest

from aether.artifacts import DEFAULT_IGNORES, IgnoreRules, pack
from aether.errors import BadRequestError


def rules(*lines: str) -> IgnoreRules:
    return IgnoreRules(lines)


def test_comments_and_blank_lines_are_not_patterns() -> None:
    r = rules("# build output", "", "   ", "*.log")
    assert r.is_ignored("x.log", is_dir=False)
    assert not r.is_ignored("# build output", is_dir=False)
    assert not r.is_ignored("x.txt", is_dir=False)


def test_unanchored_glob_matches_at_any_depth() -> None:
    r = rules("*.log", "node_modules/")
    assert r.is_ignored("a.log", is_dir=False)
    assert r.is_ignored("deep/er/a.log", is_dir=False)
    assert r.is_ignored("web/node_modules", is_dir=True)


def test_slash_anchors_to_root() -> None:
    r = rules("/top.txt", "conf/local.toml")
    assert r.is_ignored("top.txt", is_dir=False)
    assert not r.is_ignored("sub/top.txt", is_dir=False)
    assert r.is_ignored("conf/local.toml", is_dir=False)
    assert not r.is_ignored("x/conf/local.toml", is_dir=False)


def test_trailing_slash_matches_directories_only() -> None:
    r = rules("build/")
    assert r.is_ignored("build", is_dir=True)
    assert r.is_ignored("src/build", is_dir=True)
    assert not r.is_ignored("build", is_dir=False)


def test_negation_last_match_wins() -> None:
    r = rules("*.log", "!keep.log")
    assert r.is_ignored("a.log", is_dir=False)
    assert not r.is_ignored("keep.log", is_dir=False)
    assert not r.is_ignored("sub/keep.log", is_dir=False)
    r2 = rules("!keep.log", "*.log")
    assert r2.is_ignored("keep.log", is_dir=False)


def test_double_star() -> None:
    r = rules("docs/**/draft.md")
    assert r.is_ignored("docs/draft.md", is_dir=False)
    assert r.is_ignored("docs/a/b/draft.md", is_dir=False)
    assert not r.is_ignored("other/draft.md", is_dir=False)


@pytest.mark.parametrize(
    ("path", "is_dir"),
    [
        (".git", True),
        ("sub/.git", True),
        ("__pycache__", True),
        ("pkg/__pycache__", True),
        ("mod.pyc", False),
        ("pkg/mod.pyc", False),
        (".aether", True),
        (".venv", True),
        (".DS_Store", False),
        ("sub/.DS_Store", False),
    ],
)
def test_default_ignores(path: str, is_dir: bool) -> None:
    assert IgnoreRules().is_ignored(path, is_dir=is_dir)


def test_defaults_cannot_be_negated() -> None:
    r = rules(*(f"!{p}" for p in DEFAULT_IGNORES), "!*.pyc")
    assert r.is_ignored(".git", is_dir=True)
    assert r.is_ignored("x.pyc", is_dir=False)


def test_default_dir_patterns_do_not_hit_files_of_that_name() -> None:
    assert not IgnoreRules().is_ignored(".venv", is_dir=False)


def _tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


def test_pack_applies_aetherignore_and_defaults(tmp_path: Path) -> None:
    root = _tree(
        tmp_path / "app",
        {
            ".aetherignore": "# local stuff\n*.log\n!important.log\n/secret.txt\nbuild/\n",
            "main.py": "print('hi')\n",
            "a.log": "x",
            "important.log": "keep",
            "secret.txt": "s",
            "sub/secret.txt": "not anchored here",
            "build/out.bin": "b",
            "sub/build": "a file named build",
            ".git/HEAD": "ref",
            "pkg/__pycache__/m.cpython-311.pyc": "c",
            "pkg/m.pyc": "c",
            "pkg/m.py": "m",
            ".venv/bin/python": "p",
            ".aether/state": "s",
            ".DS_Store": "d",
        },
    )
    result = pack(root, tmp_path / "out.tar.gz")
    assert [e.path for e in result.manifest] == [
        ".aetherignore",
        "important.log",
        "main.py",
        "pkg/m.py",
        "sub/build",
        "sub/secret.txt",
    ]


def test_pack_extra_ignore_wins_over_file(tmp_path: Path) -> None:
    root = _tree(tmp_path / "app", {".aetherignore": "!*.md\n", "a.md": "a", "b.py": "b"})
    result = pack(root, tmp_path / "o.tgz", extra_ignore=["*.md", ".aetherignore"])
    assert [e.path for e in result.manifest] == ["b.py"]


def test_ignored_directory_contents_cannot_be_reincluded(tmp_path: Path) -> None:
    root = _tree(tmp_path / "app", {"logs/keep.txt": "k", "logs/x.txt": "x", "m": "m"})
    (root / ".aetherignore").write_text("logs/\n!logs/keep.txt\n")
    assert [e.path for e in pack(root, tmp_path / "o.tgz").manifest] == [".aetherignore", "m"]
    (root / ".aetherignore").write_text("logs/*\n!logs/keep.txt\n")
    assert [e.path for e in pack(root, tmp_path / "o.tgz").manifest] == [
        ".aetherignore",
        "logs/keep.txt",
        "m",
    ]


def test_non_utf8_ignore_file_is_a_clear_error(tmp_path: Path) -> None:
    root = tmp_path / "app"
    root.mkdir()
    (root / ".aetherignore").write_bytes(b"\xff\xfe*.log\n")
    with pytest.raises(BadRequestError) as exc:
        pack(root, tmp_path / "o.tgz")
    assert exc.value.code == "bad_ignore_pattern"
