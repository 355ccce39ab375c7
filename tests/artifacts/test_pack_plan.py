"""Pack plans: the same bytes as ``pack`` from blobs, a JSON round trip, hostile plans refused."""

from __future__ import annotations

import hashlib
import io
import json
import os
import string
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aether.artifacts import (
    PackPlan,
    PlanEntry,
    digest_bytes,
    pack,
    pack_bytes,
    plan_tree,
    tree_opener,
    write_plan,
)
from aether.errors import BadRequestError, DigestMismatchError
from tests.artifacts.test_artifacts_pack import build_tree


def blob_opener(blobs: dict[str, bytes]) -> Callable[[str], IO[bytes]]:
    return lambda sha: io.BytesIO(blobs[sha])


def blobs_of(root: Path, plan: PackPlan) -> dict[str, bytes]:
    return {e.sha256: (root / e.path).read_bytes() for e in plan.files()}


def test_plan_written_from_blobs_is_byte_identical_to_pack(tmp_path: Path) -> None:
    root = build_tree(tmp_path / "app")
    packed = pack(root, tmp_path / "app.tar.gz")
    expected = (tmp_path / "app.tar.gz").read_bytes()

    plan = plan_tree(root)
    assert plan == packed.plan  # pack hands out the plan it wrote from
    kinds = {e.kind for e in plan.entries}
    assert kinds == {"dir", "file", "symlink"}

    # from the tree itself
    out = io.BytesIO()
    from_tree = write_plan(plan, out, tree_opener(root, plan))
    assert out.getvalue() == expected
    assert from_tree == packed  # digest, size, manifest, file count

    # from blobs only, after a trip through JSON (as the server sees it)
    blobs = blobs_of(root, plan)
    received = PackPlan.from_json(plan.to_json())
    out = io.BytesIO()
    from_blobs = write_plan(received, out, blob_opener(blobs))
    assert out.getvalue() == expected
    assert from_blobs.digest == packed.digest == digest_bytes(expected)
    assert from_blobs.size_bytes == len(expected)


def test_plan_json_round_trip_is_canonical(tmp_path: Path) -> None:
    plan = plan_tree(build_tree(tmp_path / "app"))
    data = plan.to_json()
    again = PackPlan.from_json(data)
    assert again == plan
    assert again.to_json() == data
    assert PackPlan.from_dict(json.loads(data)) == plan
    body = json.loads(data)
    assert body["format"] == "aether-tar-gz/2"
    files = [e for e in body["entries"] if e["type"] == "file"]
    assert {tuple(sorted(e)) for e in files} == {("mode", "path", "sha256", "size", "type")}
    assert plan.file_count == len(files)
    assert plan.file_bytes == sum(e["size"] for e in files)
    assert len(plan.blob_digests()) == len({e["sha256"] for e in files})


def test_a_one_line_change_changes_one_plan_entry(tmp_path: Path) -> None:
    root = build_tree(tmp_path / "app")
    before = plan_tree(root)
    (root / "main.py").write_text("print('hello, again')\n")
    after = plan_tree(root)
    changed = [(a, b) for a, b in zip(before.entries, after.entries, strict=True) if a != b]
    assert [a.path for a, _ in changed] == ["main.py"]
    assert set(after.blob_digests()) - set(before.blob_digests()) == {
        digest_bytes(b"print('hello, again')\n")
    }


def test_wrong_blob_content_voids_the_archive(tmp_path: Path) -> None:
    root = build_tree(tmp_path / "app")
    plan = plan_tree(root)
    target = next(e for e in plan.files() if e.size > 10)
    blobs = blobs_of(root, plan)
    for bad in (
        b"X" + blobs[target.sha256][1:],  # same size, other bytes
        blobs[target.sha256][:-1],  # shorter
        blobs[target.sha256] + b"!",  # longer
    ):
        with pytest.raises(DigestMismatchError, match=target.path):
            write_plan(plan, io.BytesIO(), blob_opener({**blobs, target.sha256: bad}))


def test_a_file_changed_after_planning_is_caught(tmp_path: Path) -> None:
    root = build_tree(tmp_path / "app")
    plan = plan_tree(root)
    (root / "main.py").write_text("print('edited')\n")
    with pytest.raises(DigestMismatchError):
        write_plan(plan, io.BytesIO(), tree_opener(root, plan))


def test_empty_tree(tmp_path: Path) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    plan = plan_tree(root)
    assert plan.entries == ()
    out = io.BytesIO()
    assert write_plan(PackPlan.from_json(plan.to_json()), out, blob_opener({})).digest == (
        digest_bytes(pack_bytes(root))
    )


# -- hostile plans -------------------------------------------------------------------

SHA = hashlib.sha256(b"x").hexdigest()


def d(path: str) -> dict[str, Any]:
    return {"type": "dir", "path": path}


def f(path: str, *, sha: Any = SHA, size: Any = 1, mode: Any = 0o644) -> dict[str, Any]:
    return {"type": "file", "path": path, "sha256": sha, "size": size, "mode": mode}


def ln(path: str, target: Any) -> dict[str, Any]:
    return {"type": "symlink", "path": path, "target": target}


def plan_of(*entries: object) -> dict[str, Any]:
    return {"format": "aether-tar-gz/1", "entries": list(entries)}


HOSTILE: list[tuple[str, object, str]] = [
    ("not an object", [], "bad_plan"),
    ("extra top-level key", {**plan_of(), "extra": 1}, "bad_plan"),
    ("unknown format", {"format": "zip/1", "entries": []}, "bad_plan"),
    ("entries not a list", {"format": "aether-tar-gz/1", "entries": {}}, "bad_plan"),
    ("absolute path", plan_of(f("/etc/passwd")), "absolute_path"),
    ("dot-dot path", plan_of(f("../escape")), "path_traversal"),
    ("dot-dot inside", plan_of(d("a"), f("a/../../x")), "path_traversal"),
    ("empty component", plan_of(d("a"), f("a//b")), "bad_plan"),
    ("dot component", plan_of(f("./a")), "bad_plan"),
    ("trailing slash", plan_of(d("a/")), "bad_plan"),
    ("empty path", plan_of(f("")), "bad_plan"),
    ("NUL in path", plan_of(f("a\x00b")), "bad_plan"),
    ("lone surrogate", plan_of(f("a\udc80")), "bad_plan"),
    ("duplicate path", plan_of(f("a"), f("a")), "path_conflict"),
    ("dir and file of one name", plan_of(d("a"), f("a")), "path_conflict"),
    ("parent missing", plan_of(f("a/b")), "bad_plan"),
    ("parent after child", plan_of(f("a/b"), d("a")), "bad_plan"),
    ("below a file", plan_of(f("a"), f("a/b")), "path_conflict"),
    ("below a symlink", plan_of(d("real"), ln("a", "real"), f("a/b")), "path_conflict"),
    ("absolute link", plan_of(ln("a", "/etc")), "link_escape"),
    ("link up and out", plan_of(ln("a", "../outside")), "link_escape"),
    ("link deep up and out", plan_of(d("x"), ln("x/a", "../../y")), "link_escape"),
    ("link chain out", plan_of(ln("d", "."), ln("x", "d/../y")), "link_escape"),
    ("link through link out", plan_of(d("s"), ln("s/up", ".."), ln("z", "s/up/..")), "link_escape"),
    ("link loop", plan_of(ln("a", "b"), ln("b", "a")), "link_escape"),
    ("empty link target", plan_of(ln("a", "")), "bad_plan"),
    ("link target not a string", plan_of(ln("a", 5)), "bad_plan"),
    ("unknown type", plan_of({"type": "hardlink", "path": "a", "target": "b"}), "bad_plan"),
    ("device", plan_of({"type": "chr", "path": "a"}), "bad_plan"),
    ("missing key", plan_of({"type": "file", "path": "a", "sha256": SHA, "size": 1}), "bad_plan"),
    ("extra key", plan_of({**f("a"), "uid": 0}), "bad_plan"),
    ("upper-case sha", plan_of(f("a", sha=SHA.upper())), "bad_plan"),
    ("short sha", plan_of(f("a", sha="ab")), "bad_plan"),
    ("negative size", plan_of(f("a", size=-1)), "bad_plan"),
    ("boolean size", plan_of(f("a", size=True)), "bad_plan"),
    ("float size", plan_of(f("a", size=1.0)), "bad_plan"),
    ("setuid mode", plan_of(f("a", mode=0o4755)), "bad_plan"),
    ("world-writable mode", plan_of(f("a", mode=0o666)), "bad_plan"),
    ("entry not an object", plan_of(["file", "a"]), "bad_plan"),
]


@pytest.mark.parametrize(
    ("plan", "code"), [(p, c) for _, p, c in HOSTILE], ids=[n for n, *_ in HOSTILE]
)
def test_hostile_plans_are_refused_with_a_clear_code(plan: object, code: str) -> None:
    with pytest.raises(BadRequestError) as info:
        PackPlan.from_dict(plan)
    assert info.value.code == code, info.value
    assert info.value.status == 400


def test_limits_on_entries_and_bytes() -> None:
    many = plan_of(*(f(f"f{i}") for i in range(11)))
    assert len(PackPlan.from_dict(many, max_entries=11).entries) == 11
    with pytest.raises(BadRequestError) as info:
        PackPlan.from_dict(many, max_entries=10)
    assert info.value.code == "too_many_entries"

    big = plan_of(f("a", size=600), f("b", size=500))
    PackPlan.from_dict(big, max_bytes=1100)
    with pytest.raises(BadRequestError) as info:
        PackPlan.from_dict(big, max_bytes=1099)
    assert info.value.code == "archive_too_large"


def test_links_that_stay_inside_are_accepted() -> None:
    plan = PackPlan.from_dict(
        plan_of(
            d("a"),
            d("a/b"),
            f("a/b/c"),
            ln("a/b/up", ".."),  # -> a
            ln("a/here", "."),
            ln("top", "a/b/up/b/c"),
            ln("dangling", "nowhere/at/all"),  # inside, just absent: pack allows it too
            ln("round", "a/../a/b"),
        )
    )
    assert [e.kind for e in plan.entries].count("symlink") == 5


def test_invalid_json_is_bad_plan() -> None:
    for data in (b"{", b"\xff\xfe", b"null"):
        with pytest.raises(BadRequestError) as info:
            PackPlan.from_json(data)
        assert info.value.code == "bad_plan"


def test_plan_entries_are_what_pack_normalises() -> None:
    assert PlanEntry.dir("a").mode == 0o755
    assert PlanEntry.symlink("a", "b").mode == 0o777
    entry = PlanEntry.file("a", SHA, 1, 0o755)
    assert PackPlan.from_dict(PackPlan((entry,)).to_dict()).entries == (entry,)


# -- property: any tree, written from its plan and blobs, is pack's bytes -------------

NAMES = st.text(alphabet=string.ascii_letters + string.digits + "-_.é", min_size=1, max_size=12)


@st.composite
def trees(draw: st.DrawFn) -> dict[str, bytes | None]:
    """Relative paths to contents (None: a directory), parents included."""
    out: dict[str, bytes | None] = {}
    for _ in range(draw(st.integers(0, 12))):
        depth = draw(st.integers(1, 3))
        parts = [draw(NAMES.filter(lambda n: n not in (".", ".."))) for _ in range(depth)]
        for i in range(1, depth):
            prefix = "/".join(parts[:i])
            if out.get(prefix) is not None:
                break
            out[prefix] = None
        else:
            path = "/".join(parts)
            if path not in out:
                out[path] = draw(st.binary(max_size=3000)) if draw(st.booleans()) else None
    return out


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(tree=trees(), executable=st.booleans())
def test_any_tree_round_trips_through_its_plan(
    tmp_path_factory: pytest.TempPathFactory, tree: dict[str, bytes | None], executable: bool
) -> None:
    root = tmp_path_factory.mktemp("tree")
    for rel in sorted(tree):
        content = tree[rel]
        if content is None:
            (root / rel).mkdir(parents=True, exist_ok=True)
        else:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(content)
            if executable:
                os.chmod(root / rel, 0o755)
    expected = pack_bytes(root)
    plan = PackPlan.from_json(plan_tree(root).to_json())
    out = io.BytesIO()
    write_plan(plan, out, blob_opener(blobs_of(root, plan)))
    assert out.getvalue() == expected


def test_tangled_links_are_refused_quickly() -> None:
    """Many links with long targets: bounded work, then a clear refusal."""
    deep = "/".join(["d"] * 1000)
    entries = [d("d"), *(ln(f"l{i}", f"{deep}/x{i}") for i in range(600))]
    with pytest.raises(BadRequestError) as info:
        PackPlan.from_dict(plan_of(*entries))
    assert info.value.code == "link_escape"
    assert "tangled" in info.value.message
