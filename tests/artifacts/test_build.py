"""Local builds: detection, real npm and pip installs, the dependency cache, staging sync.

These run the real package managers against the registries (no mocks): the
point of ``build`` is that real apps with real dependencies come out runnable.
A machine without node/npm fails the Node.js tests with a hint instead of
skipping them, so a missing toolchain cannot pass for a green suite.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from aether.artifacts import digest_bytes, pack_bytes
from aether.artifacts.build import (
    NODE_MODULES,
    PYTHON_VENDOR_DIR,
    BuildResult,
    build,
    detect_runtime,
)
from aether.errors import BadRequestError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def copy_example(name: str, dest: Path) -> Path:
    target = dest / name
    shutil.copytree(EXAMPLES / name, target)
    return target


def write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


def digest(result: BuildResult) -> str:
    return digest_bytes(pack_bytes(result.root))


# --------------------------------------------------------------------------- detection

PKG = '{"name": "x", "version": "1.0.0", "scripts": {"start": "node s.js"}}'


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"package.json": PKG}, "node"),
        ({"package.json": PKG, "requirements.txt": "flask\n", "index.html": ""}, "node"),
        ({"pyproject.toml": '[project]\nname = "x"\n'}, "python"),
        ({"requirements.txt": "flask\n"}, "python"),
        ({"requirements.txt": "", "index.html": ""}, "python"),
        ({"index.html": "<h1>hi</h1>"}, "static"),
        ({"public/index.html": "<h1>hi</h1>"}, "static"),
        ({"public/other.html": ""}, None),
        ({"main.go": "package main"}, None),
        ({}, None),
    ],
)
def test_detection_table(tmp_path: Path, files: dict[str, str], expected: str | None) -> None:
    assert detect_runtime(write(tmp_path, files)) == expected


def test_nothing_detectable_and_no_start_is_a_clear_error(tmp_path: Path) -> None:
    write(tmp_path / "app", {"main.go": "package main\n"})
    with pytest.raises(BadRequestError, match=r"cannot tell how to run .*aether.toml"):
        build(tmp_path / "app", cache_dir=tmp_path / "cache")


def test_command_runtime_from_aether_toml(tmp_path: Path) -> None:
    src = write(
        tmp_path / "tool",
        {"aether.toml": 'name = "tool"\nstart = "./run.sh"\n', "run.sh": "#!/bin/sh\n"},
    )
    result = build(src, cache_dir=tmp_path / "cache")
    assert (result.runtime, result.spec.runtime, result.spec.start) == (
        "command",
        "command",
        "./run.sh",
    )
    assert tree(result.root) == {"aether.toml", "run.sh"}
    assert result.cached is False


def test_command_runtime_from_procfile_and_directory_name(tmp_path: Path) -> None:
    src = write(tmp_path / "My_Worker", {"Procfile": "web: ./serve --port $PORT\n"})
    result = build(src, cache_dir=tmp_path / "cache")
    assert result.runtime == "command"
    assert result.spec.name == "my-worker"
    assert result.spec.start == "./serve --port $PORT"


def test_aether_toml_overrides_detection(tmp_path: Path) -> None:
    # A package.json that would need npm, but aether.toml says it is a plain command.
    src = write(
        tmp_path / "app",
        {
            "package.json": '{"name": "x", "dependencies": {"left-pad": "1.3.0"}}',
            "aether.toml": 'name = "plain"\nruntime = "command"\nstart = "node s.js"\n'
            'health = "/up"\n[env]\nA = "1"\n',
        },
    )
    result = build(src, cache_dir=tmp_path / "cache")
    assert result.runtime == "command"
    assert result.spec.name == "plain"
    assert result.spec.health == "/up"
    assert result.spec.env == {"A": "1"}
    assert not (result.root / NODE_MODULES).exists()


def test_invalid_runtime_and_invalid_name_are_refused(tmp_path: Path) -> None:
    src = write(tmp_path / "a", {"aether.toml": 'name = "a"\nruntime = "ruby"\nstart = "x"\n'})
    with pytest.raises(BadRequestError, match="runtime must be one of"):
        build(src, cache_dir=tmp_path / "cache")
    src = write(tmp_path / "b", {"index.html": ""})
    with pytest.raises(BadRequestError, match="invalid app name"):
        build(src, name="Not_Valid", cache_dir=tmp_path / "cache")
    src = write(tmp_path / "c", {"aether.toml": 'name = "c"\nstart = "x"\nbogus = 1\n'})
    with pytest.raises(BadRequestError, match="bogus"):
        build(src, cache_dir=tmp_path / "cache")


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"package.json": '{"name": "@acme/Web_Shop", "main": "index.js"}'}, "web-shop"),
        ({"pyproject.toml": '[project]\nname = "My.Service"\ndependencies = []\n'}, "my-service"),
        ({"index.html": ""}, "site-dir"),
    ],
)
def test_name_is_derived_and_sanitised(
    tmp_path: Path, files: dict[str, str], expected: str
) -> None:
    src = write(tmp_path / "Site_Dir", files)
    (src / "Procfile").write_text("web: python3 -m app\n")
    assert build(src, cache_dir=tmp_path / "cache").spec.name == expected


def test_name_argument_overrides_aether_toml(tmp_path: Path) -> None:
    src = write(tmp_path / "s", {"index.html": "", "aether.toml": 'name = "from-toml"\n'})
    assert build(src, cache_dir=tmp_path / "cache").spec.name == "from-toml"
    assert build(src, name="from-arg", cache_dir=tmp_path / "cache").spec.name == "from-arg"


# --------------------------------------------------------------------------- static


def test_static_site_example(tmp_path: Path) -> None:
    result = build(EXAMPLES / "static-site", cache_dir=tmp_path / "cache")
    assert result.runtime == "static"
    assert result.spec.name == "static-site"
    assert result.spec.health == "/"
    assert result.spec.start == ('python3 -m http.server "$PORT" --bind 127.0.0.1 --directory .')
    assert tree(result.root) == {"index.html", "style.css"}


def test_static_public_dir_and_custom_port_env(tmp_path: Path) -> None:
    src = write(
        tmp_path / "site",
        {"public/index.html": "", "README.md": "", "aether.toml": 'port_env = "HTTP_PORT"\n'},
    )
    spec = build(src, cache_dir=tmp_path / "cache").spec
    assert spec.start == 'python3 -m http.server "$HTTP_PORT" --bind 127.0.0.1 --directory public'


# --------------------------------------------------------------------------- node


def test_node_build_of_express_example(npm: None, build_cache: Path) -> None:
    result = build(EXAMPLES / "express-app", cache_dir=build_cache)
    assert result.runtime == "node"
    assert result.spec.name == "express-app"
    assert result.spec.start == "node server.js"  # the start script, without npm around it
    assert result.spec.health == "/healthz"
    assert result.spec.instances == 2
    root = result.root
    assert root == build_cache / "builds" / "express-app"
    express = json.loads((root / "node_modules/express/package.json").read_text())
    lock = json.loads((EXAMPLES / "express-app/package-lock.json").read_text())
    assert express["version"] == lock["packages"]["node_modules/express"]["version"]
    for dep in ("morgan", "ms"):
        assert (root / NODE_MODULES / dep / "package.json").is_file()
    assert (root / "server.js").read_bytes() == (EXAMPLES / "express-app/server.js").read_bytes()
    assert not (root / NODE_MODULES / ".package-lock.json").exists()
    assert any(line.startswith("building express-app") for line in result.log)


def test_node_warm_rebuild_after_one_line_change_uses_cache_and_is_fast(
    npm: None, build_cache: Path, tmp_path: Path
) -> None:
    src = copy_example("express-app", tmp_path)
    first = build(src, name="express-warm", cache_dir=build_cache)
    first_digest = digest(first)
    server = src / "server.js"
    server.write_text(server.read_text().replace("Hello from Express", "Hi from Express"))
    lines: list[str] = []
    second = build(src, name="express-warm", cache_dir=build_cache, progress=lines.append)
    assert second.cached is True  # no npm ran: speed is measured in bench/, not here
    assert "Hi from Express" in (second.root / "server.js").read_text()
    assert (second.root / "node_modules/express/package.json").is_file()
    assert digest(second) != first_digest
    assert lines == second.log
    assert not any(line.startswith("$ npm") for line in lines)
    # Dependencies are hardlinked from the cache, not copied.
    staged = second.root / "node_modules/express/package.json"
    assert staged.stat().st_nlink >= 2


def test_node_build_is_deterministic_across_caches(
    npm: None, build_cache: Path, tmp_path: Path
) -> None:
    # Digest each build right away: builds of one app in one cache share a staging dir.
    first = digest(build(EXAMPLES / "express-app", name="express-det", cache_dir=build_cache))
    again = build(EXAMPLES / "express-app", name="express-det", cache_dir=build_cache)
    assert again.cached is True
    assert digest(again) == first
    cold = build(EXAMPLES / "express-app", name="express-det", cache_dir=tmp_path / "fresh")
    assert cold.cached is False
    assert digest(cold) == first


def test_source_node_modules_and_ignored_files_stay_out(
    npm: None, build_cache: Path, tmp_path: Path
) -> None:
    src = copy_example("express-app", tmp_path)
    write(
        src,
        {
            "node_modules/stale-local/index.js": "junk",
            "lib/node_modules/nested/index.js": "junk",
            "debug.log": "log",
            "secret/key.pem": "secret",
            ".aetherignore": "# local only\n*.log\nsecret/\n",
            ".git/HEAD": "ref: refs/heads/main\n",
        },
    )
    result = build(src, name="express-ignore", cache_dir=build_cache)
    files = tree(result.root)
    assert "node_modules/stale-local" not in files
    assert "node_modules/express" in files
    assert not {"debug.log", "secret", ".aetherignore", ".git", "lib/node_modules"} & files


def test_deleted_source_file_disappears_from_next_build(
    npm: None, build_cache: Path, tmp_path: Path
) -> None:
    src = copy_example("express-app", tmp_path)
    pristine = digest(build(src, name="express-del", cache_dir=build_cache))
    write(src, {"routes/extra.js": "module.exports = 1;\n", "docs/notes.md": "x"})
    with_extra = build(src, name="express-del", cache_dir=build_cache)
    assert (with_extra.root / "routes/extra.js").is_file()
    shutil.rmtree(src / "routes")
    shutil.rmtree(src / "docs")
    # Also leave junk a running app might write into the staged tree.
    write(with_extra.root, {".npm/_logs/debug.log": "x", "node_modules/express/junk.txt": "x"})
    again = build(src, name="express-del", cache_dir=build_cache)
    files = tree(again.root)
    assert not {"routes", "routes/extra.js", "docs", ".npm"} & files
    assert "node_modules/express/junk.txt" not in files
    assert digest(again) == pristine


def test_node_without_dependencies_runs_no_npm(tmp_path: Path) -> None:
    result = build(EXAMPLES / "hello-node", cache_dir=tmp_path / "cache")
    assert result.runtime == "node"
    assert result.spec.start == "node server.js"  # from aether.toml
    assert not any(line.startswith("$ npm") for line in result.log)
    assert result.sbom is not None and result.sbom["components"] == []


def test_node_default_start_falls_back_to_main(tmp_path: Path) -> None:
    src = write(tmp_path / "svc", {"package.json": '{"name": "svc", "main": "lib/app.js"}'})
    assert build(src, cache_dir=tmp_path / "cache").spec.start == "node lib/app.js"
    src = write(tmp_path / "bare", {"package.json": '{"name": "bare"}'})
    with pytest.raises(BadRequestError, match="no start command"):
        build(src, cache_dir=tmp_path / "cache")


def test_npm_failure_is_build_failed_with_command_and_output(
    npm: None, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    src = write(
        tmp_path / "broken",
        {
            "package.json": json.dumps(
                {
                    "name": "broken",
                    "scripts": {"start": "node x.js"},
                    "dependencies": {"aether-no-such-package-7f3b9c2e": "1.0.0"},
                }
            )
        },
    )
    with pytest.raises(BadRequestError) as info:
        build(src, cache_dir=tmp_path / "cache")
    assert info.value.code == "build_failed"
    assert "npm install --omit=dev" in info.value.message
    assert "aether-no-such-package-7f3b9c2e" in info.value.message  # npm's own words
    assert capfd.readouterr().out == ""  # npm output goes to the log, not stdout
    assert not list((tmp_path / "cache/deps").glob("npm-*"))  # nothing half-cached


# --------------------------------------------------------------------------- python


def test_python_build_of_flask_example_vendors_flask(build_cache: Path) -> None:
    result = build(EXAMPLES / "flask-app", cache_dir=build_cache)
    assert result.runtime == "python"
    spec = result.spec
    assert spec.name == "flask-app"
    assert spec.start == "python3 app.py"  # from the Procfile
    assert spec.health == "/healthz"
    assert spec.env["PYTHONPATH"] == PYTHON_VENDOR_DIR
    assert spec.env["AETHER_PYTHON_VERSION"].count(".") == 1
    assert spec.env["GREETING"] == "Hello from Flask on Aether"  # aether.toml's env kept
    vendor = result.root / PYTHON_VENDOR_DIR
    assert (vendor / "flask/__init__.py").is_file()
    assert (vendor / "werkzeug/__init__.py").is_file()
    assert list(vendor.glob("flask-*.dist-info"))
    assert not [p for p in vendor.rglob("*") if p.name == "__pycache__" or p.suffix == ".pyc"]
    for script in (vendor / "bin").iterdir():
        assert script.read_text().startswith("#!/usr/bin/env python3\n")
    # The packer must keep the vendor dir (it is not among the default ignores).
    packed = pack_bytes(result.root)
    assert len(packed) > 100_000


def test_python_rebuild_is_cached_and_deterministic(build_cache: Path, tmp_path: Path) -> None:
    src = copy_example("flask-app", tmp_path)
    first = build(src, name="flask-det", cache_dir=build_cache)
    first_digest = digest(first)
    second = build(src, name="flask-det", cache_dir=build_cache)
    assert second.cached is True
    assert digest(second) == first_digest
    (src / "app.py").write_text((src / "app.py").read_text() + "\n# one more line\n")
    third = build(src, name="flask-det", cache_dir=build_cache)
    assert third.cached is True and digest(third) != first_digest


def test_pyproject_dependencies_are_installed(build_cache: Path, tmp_path: Path) -> None:
    src = write(
        tmp_path / "svc",
        {
            "pyproject.toml": '[project]\nname = "svc"\nversion = "0.3.0"\n'
            'dependencies = ["itsdangerous>=2"]\n',
            "src/svc/__init__.py": "",
            "aether.toml": 'start = "python3 -m svc"\n',
        },
    )
    result = build(src, cache_dir=build_cache)
    assert result.spec.name == "svc"
    assert result.spec.env["PYTHONPATH"] == f"{PYTHON_VENDOR_DIR}:src"
    assert (result.root / PYTHON_VENDOR_DIR / "itsdangerous/__init__.py").is_file()
    assert (result.root / "src/svc/__init__.py").is_file()
    assert result.sbom is not None
    assert result.sbom["metadata"]["component"]["version"] == "0.3.0"


def test_pyproject_with_dynamic_dependencies_asks_for_requirements(tmp_path: Path) -> None:
    src = write(
        tmp_path / "dyn",
        {
            "pyproject.toml": '[project]\nname = "dyn"\ndynamic = ["dependencies"]\n',
            "Procfile": "web: python3 -m dyn\n",
        },
    )
    with pytest.raises(BadRequestError, match=r"requirements\.txt") as info:
        build(src, cache_dir=tmp_path / "cache")
    assert info.value.code == "build_failed"


def test_python_without_start_is_a_clear_error(tmp_path: Path) -> None:
    src = write(tmp_path / "nostart", {"requirements.txt": "flask\n", "app.py": ""})
    with pytest.raises(BadRequestError, match="Procfile"):
        build(src, cache_dir=tmp_path / "cache")


def test_pip_failure_is_build_failed(tmp_path: Path) -> None:
    src = write(
        tmp_path / "badreq",
        {
            "requirements.txt": "aether-no-such-distribution-7f3b9c2e==1.0\n",
            "Procfile": "web: python3 app.py\n",
        },
    )
    with pytest.raises(BadRequestError) as info:
        build(src, cache_dir=tmp_path / "cache")
    assert info.value.code == "build_failed"
    assert "pip install" in info.value.message
    assert "aether-no-such-distribution-7f3b9c2e" in info.value.message


def test_sbom_false_skips_it(tmp_path: Path) -> None:
    assert build(EXAMPLES / "static-site", cache_dir=tmp_path / "c", sbom=False).sbom is None


def test_cache_dir_inside_source_is_not_staged(tmp_path: Path) -> None:
    src = write(tmp_path / "site", {"index.html": ""})
    result = build(src, cache_dir=src / "build-cache")
    assert tree(result.root) == {"index.html"}
    again = build(src, cache_dir=src / "build-cache")
    assert tree(again.root) == {"index.html"}


def test_symlinks_in_source_are_kept(tmp_path: Path) -> None:
    src = write(tmp_path / "site", {"index.html": "hi", "assets/a.css": ""})
    os.symlink("index.html", src / "home.html")
    result = build(src, cache_dir=tmp_path / "cache")
    assert os.readlink(result.root / "home.html") == "index.html"
    os.unlink(src / "home.html")
    os.symlink("assets/a.css", src / "home.html")
    assert os.readlink(build(src, cache_dir=tmp_path / "cache").root / "home.html") == (
        "assets/a.css"
    )


def test_rewrite_that_keeps_size_and_mtime_is_still_picked_up(tmp_path: Path) -> None:
    src = write(tmp_path / "site", {"index.html": "version 1"})
    before = (src / "index.html").stat()
    assert (build(src, cache_dir=tmp_path / "cache").root / "index.html").read_text() == "version 1"
    time.sleep(0.01)
    (src / "index.html").write_text("version 2")  # same size ...
    os.utime(src / "index.html", ns=(before.st_atime_ns, before.st_mtime_ns))  # ... same mtime
    staged = build(src, cache_dir=tmp_path / "cache").root / "index.html"
    assert staged.read_text() == "version 2"


def test_changed_dependency_with_same_size_and_mtime_is_replaced(tmp_path: Path) -> None:
    # npm stamps every extracted file with one fixed mtime, so a dependency bump can
    # change a file's bytes but neither its size nor its mtime.
    from aether.artifacts.build.staging import Wanted, sync_tree, walk_tree

    entries = []
    for version in ("1.0.0", "1.0.1"):
        entry = write(tmp_path / f"entry-{version}", {"pkg/package.json": version})
        os.utime(entry / "pkg/package.json", ns=(499162500_000_000_000,) * 2)
        entries.append(entry)
    staging = tmp_path / "staging"
    for entry in entries:
        wanted: dict[str, Wanted] = {}
        walk_tree(entry, "", None, wanted, link=True)
        sync_tree(staging, wanted)
        assert (staging / "pkg/package.json").read_text() == entry.name.removeprefix("entry-")
        assert (staging / "pkg/package.json").stat().st_ino == (
            (entry / "pkg/package.json").stat().st_ino
        )


@pytest.mark.parametrize(
    ("script", "start"),
    [
        ("node server.js", "node server.js"),
        ("node dist/main.js --port 3000", "node dist/main.js --port 3000"),
        ("NODE_ENV=production node server.js", "npm start"),
        ("node a.js && node b.js", "npm start"),
        ("next start", "npm start"),
    ],
)
def test_node_start_script_runs_directly_only_when_plain(
    tmp_path: Path, script: str, start: str, build_cache: Path
) -> None:
    app = tmp_path / "app"
    app.mkdir()
    (app / "package.json").write_text(
        json.dumps({"name": "plain", "version": "1.0.0", "scripts": {"start": script}})
    )
    (app / "server.js").write_text("")
    assert build(app, cache_dir=build_cache).spec.start == start
