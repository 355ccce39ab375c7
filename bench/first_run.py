"""Clone to the demo served: the README's first command on a fresh checkout.

    .venv/bin/python -m bench.first_run [--no-pip-cache]

Clones this repository into a temporary directory, runs ``make run`` there with a
fresh ``HOME`` (so no earlier session or data is reused), and times until the demo
app answers 200 through node-1's router (the ``try: curl ...`` line ``aether up``
prints). ``--no-pip-cache`` makes pip download every package again (as on a
fresh machine; the Debian packages ``make run`` needs are assumed installed, as
they are here: ``scripts/system-deps.sh run`` names them). Writes
bench/results/first_run.json. Figures, never assertions.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from bench.common import REPO, wait_until_quiet, write_result

_TRY = re.compile(r"try: curl (http://\S+)")


def _phases(log: Path) -> dict[str, float]:
    """When each step of ``make run`` began, from the timestamps the reader kept."""
    marks: dict[str, float] = {}
    for line in log.read_text().splitlines():
        stamp, _, text = line.partition(" ")
        for name, needle in (
            ("venv", "-m venv"),
            ("pip", "pip install --quiet -e ."),
            ("aether_up", "aether up --demo"),
            ("cluster_up", "Aether is up"),
            ("deploying", "deploying the demo app"),
        ):
            if needle in text and name not in marks:
                marks[name] = float(stamp)
    return marks


def run(no_pip_cache: bool) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="aether-first-run-") as tmp:
        root = Path(tmp)
        home = root / "home"
        home.mkdir()
        env = {**os.environ, "HOME": str(home)}
        env.pop("VIRTUAL_ENV", None)
        if no_pip_cache:
            env["PIP_NO_CACHE_DIR"] = "1"
        started = time.monotonic()
        subprocess.run(["git", "clone", "-q", str(REPO), str(root / "aether")], check=True)
        cloned = time.monotonic() - started
        log = root / "make-run.log"
        proc = subprocess.Popen(
            ["make", "run"],
            cwd=root / "aether",
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            text=True,
        )
        url: list[str] = []

        def read() -> None:
            assert proc.stdout is not None
            with log.open("w") as out:
                for line in proc.stdout:
                    out.write(f"{time.monotonic() - started:.3f} {line}")
                    out.flush()
                    found = _TRY.search(line)
                    if found and not url:
                        url.append(found.group(1))

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        served: float | None = None
        try:
            deadline = started + 600
            while time.monotonic() < deadline and proc.poll() is None:
                if url:
                    try:
                        if httpx.get(url[0], timeout=2).status_code == 200:
                            served = time.monotonic() - started
                            break
                    except httpx.HTTPError:
                        pass
                time.sleep(0.1)
        finally:
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C, as a user stops it
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            reader.join(timeout=5)
        if served is None:
            print(log.read_text()[-3000:], file=sys.stderr)
            raise SystemExit("the demo was not served within 10 minutes")
        return {
            "clone_s": round(cloned, 2),
            "served_s": round(served, 2),
            "steps_s": {k: round(v, 2) for k, v in _phases(log).items()},
            "url": url[0],
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--no-pip-cache", action="store_true", help="download every package")
    args = parser.parse_args()
    busy = wait_until_quiet()
    figures = run(args.no_pip_cache)
    write_result(
        "first_run",
        {
            "what": "git clone, then `make run` with a fresh HOME, until the demo app answers "
            "200 through node-1's router",
            "pip_cache": not args.no_pip_cache,
            "machine_busy_before": busy,
            **figures,
        },
    )


if __name__ == "__main__":
    main()
