"""Secret files in an instance's tree: 0400, never written through a link or outside."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from aether.node.secret_files import SecretFileError, write_secret_files


def test_files_are_written_0400_replacing_what_was_there(tmp_path: Path) -> None:
    app = tmp_path / "app"
    app.mkdir()
    (app / "old.txt").write_text("shipped")
    write_secret_files(app, {"config/creds.json": "{}", "old.txt": "new"}, None)
    assert (app / "config" / "creds.json").read_text() == "{}"
    assert (app / "old.txt").read_text() == "new"
    assert stat.S_IMODE((app / "config" / "creds.json").stat().st_mode) == 0o400
    write_secret_files(app, {"config/creds.json": "{2}"}, None)  # a restart: again
    assert (app / "config" / "creds.json").read_text() == "{2}"


def test_a_link_the_artifact_shipped_is_never_followed(tmp_path: Path) -> None:
    app, outside = tmp_path / "app", tmp_path / "outside"
    app.mkdir()
    outside.mkdir()
    (app / "conf").symlink_to(outside)
    with pytest.raises(SecretFileError, match="leads out of the app"):
        write_secret_files(app, {"conf/creds": "s"}, None)
    target = outside / "victim"
    target.write_text("untouched")
    os.symlink(target, app / "creds")
    write_secret_files(app, {"creds": "s"}, None)  # the link is replaced, not followed
    assert target.read_text() == "untouched" and not (app / "creds").is_symlink()
