"""What one execution in an existing bwrap sandbox costs, and where it goes.

    .venv/bin/python -m bench.bwrap_exec_bench [--runs N] [--ballast-mb M]

In one process, on one existing sandbox, runs ``echo i`` ``--runs`` times in
each of these ways, taking turns (one of each per round, so all see the same
machine load):

- ``plain_echo``: ``subprocess.run(["echo", i])``, no sandbox;
- ``bare_bwrap``: ``subprocess.run`` of a hand-written ``bwrap`` with the same
  namespaces, the system read-only, ``/proc``, ``/dev`` and the workspace, as
  the sandbox's uid (through ``setpriv``, as the driver starts it): the floor
  for a sandbox, with none of the driver's ``/etc``, tmpfs mounts, ``prlimit``
  or descriptors; ``bare_bwrap_prlimit`` adds ``prlimit``;
- ``driver_argv``: the driver's exact command (``BwrapSandboxes.command``:
  ``setpriv``, ``bwrap --args`` with every option, ``prlimit``) run with
  ``subprocess.run``: the sandbox's own cost, without the driver's Python;
- ``driver_execute``: ``driver.execute(handle, "echo", [i])``;
- ``vm_execute``: the ``vm:execute`` handler, which finds the sandbox first
  (``_find``: each driver's ``load``) and runs ``driver.execute``;
- ``vm_execute_before``: the same as the code was before this benchmark's cuts,
  in the same run: the sandbox read from its state file in a thread
  (``asyncio.to_thread(read_state)``) and ``bwrap`` started with a
  ``preexec_fn`` and ``user=`` (so ``subprocess`` forks the whole process).

Then the steps of one execution, each timed alone ``--runs`` times: ``load``
(kept handle; and read from disk), the old thread hop, the argv build (with
its memfds), the probes (the first ``available()`` of a new driver, and the
kept answer), and, from inside ``driver.execute``, spawn (to the process
started), run and output collection (to the process gone and its pipes
drained), and teardown (to the result). There is no cgroup: limits are
rlimits, set by ``prlimit`` inside the sandbox (its cost is
``bare_bwrap_prlimit`` minus ``bare_bwrap``).

``--ballast-mb`` makes this process that much larger (touched memory), as a
node daemon is larger than this benchmark: a ``fork`` copies page tables, a
``vfork`` does not.

Writes bench/results/bwrap_exec.json (``bwrap_exec_ballast_<M>mb.json`` with a
ballast) and prints it. Figures, never assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aether.node.drivers.base import Execution, SandboxHandle, SandboxSpec, read_state
from aether.node.drivers.bwrap import BwrapDriver
from aether.node.drivers.bwrap_args import PRLIMIT, MemFds, system_args
from aether.node.drivers.bwrap_sandboxes import SANDBOX_UID
from aether.node.drivers.spawn import exec_as
from aether.tasks.handlers import TaskContext, handler_for
from aether.tasks.types import VmExecutePayload
from bench.common import percentile, wait_until_quiet, write_result


def _ms(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": round(percentile(values, 50) * 1000, 3),
        "p95": round(percentile(values, 95) * 1000, 3),
        "mean": round(statistics.fmean(values) * 1000, 3),
    }


class _Timed(BwrapDriver):
    """The driver, noting when its process started and was gone (its own hooks)."""

    def __init__(self) -> None:
        super().__init__()
        self.marks: dict[str, float] = {}

    def _track(self, id: str) -> tuple[Callable[[int], None], Callable[[int], None]]:
        started, exited = super()._track(id)

        def on_start(pid: int) -> None:
            self.marks["started"] = time.perf_counter()
            started(pid)

        def on_exit(pid: int) -> None:
            self.marks["exited"] = time.perf_counter()
            exited(pid)

        return on_start, on_exit


def _bare_argv(bwrap: str, handle: SandboxHandle, *, prlimit: bool) -> list[str]:
    argv = [
        bwrap,
        "--unshare-all",
        "--unshare-user",
        "--disable-userns",
        "--uid",
        str(SANDBOX_UID),
        "--gid",
        str(SANDBOX_UID),
        "--die-with-parent",
        "--new-session",
        *system_args(),
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--bind",
        str(handle.workspace),
        "/workspace",
        "--chdir",
        "/workspace",
        "--",
    ]
    return argv + ([PRLIMIT, f"--nproc={handle.spec.max_processes}", "--"] if prlimit else [])


async def _measure(runs: int) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="aether-bwrap-exec-", dir="/tmp"))
    root.chmod(0o711)  # as a node's data directory: reachable by the sandbox's uid
    try:
        return await _measure_in(root, runs)
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def _measure_in(root: Path, runs: int) -> dict[str, Any]:
    first = time.perf_counter()
    driver = _Timed()
    assert driver.available(), driver.reason
    probes = time.perf_counter() - first
    handle = await driver.create(SandboxSpec(id="sb", name="sb", root=root / "sb"))
    host_uid = handle.extra.get("host_uid")
    uid = host_uid if isinstance(host_uid, int) else None
    assert driver._bwrap is not None
    bwrap = driver._bwrap

    before = BwrapDriver()  # the old spawn: preexec_fn and user=, so fork
    before._setpriv = False
    ctx = TaskContext(node="bench", sandboxes={"bwrap": driver}, root=root, client=None, timeout=30)
    execute = handler_for("vm:execute")
    assert execute is not None

    def check(out: bytes | str, i: int) -> None:
        text = out.decode() if isinstance(out, bytes) else out
        assert text == f"{i}\n", text

    async def plain_echo(i: int) -> None:
        check(subprocess.run(["echo", str(i)], capture_output=True, check=True).stdout, i)

    def bare(argv: list[str]) -> bytes:
        # started as the driver starts it (exec_as: the uid, then vfork), so the
        # difference to driver_argv is what bwrap and prlimit do, not the spawn
        argv = [*exec_as(uid), *argv]
        return subprocess.run(argv, capture_output=True, check=True, cwd="/").stdout

    async def bare_bwrap(i: int) -> None:
        check(bare([*_bare_argv(bwrap, handle, prlimit=False), "echo", str(i)]), i)

    async def bare_bwrap_prlimit(i: int) -> None:
        check(bare([*_bare_argv(bwrap, handle, prlimit=True), "echo", str(i)]), i)

    async def driver_argv(i: int) -> None:
        fds = MemFds()
        try:
            run = Execution("echo", [str(i)], 30, None, {}, 1 << 20)
            argv, popen, _ = driver.command(handle, run, fds)
            popen.pop("dies_with_parent", None)  # the argv's setpriv does it
            done = subprocess.run(
                argv,
                capture_output=True,
                check=True,
                cwd="/",
                env=driver._env({}),
                pass_fds=fds.fds,
                start_new_session=True,
                **popen,
            )
        finally:
            fds.close()
        check(done.stdout, i)

    async def driver_execute(i: int) -> None:
        check((await driver.execute(handle, "echo", [str(i)], timeout=30)).stdout, i)

    async def vm_execute(i: int) -> None:
        payload = VmExecutePayload(sandbox_id="sb", command="echo", args=[str(i)])
        check((await execute(payload, ctx))["stdout"], i)

    async def vm_execute_before(i: int) -> None:
        found = await asyncio.to_thread(read_state, "sb", root / "sb", "bwrap")
        assert found is not None
        check((await before.execute(found, "echo", [str(i)], timeout=30)).stdout, i)

    ways: dict[str, Callable[[int], Awaitable[None]]] = {
        "plain_echo": plain_echo,
        "bare_bwrap": bare_bwrap,
        "bare_bwrap_prlimit": bare_bwrap_prlimit,
        "driver_argv": driver_argv,
        "driver_execute": driver_execute,
        "vm_execute": vm_execute,
        "vm_execute_before": vm_execute_before,
    }
    times: dict[str, list[float]] = {name: [] for name in ways}
    steps: dict[str, list[float]] = {"spawn": [], "run_and_output": [], "teardown": []}
    for way in ways.values():  # warm-up
        await way(-1)
    for i in range(runs):
        for name, way in ways.items():
            start = time.perf_counter()
            await way(i)
            end = time.perf_counter()
            times[name].append(end - start)
            if name == "driver_execute":
                steps["spawn"].append(driver.marks["started"] - start)
                steps["run_and_output"].append(driver.marks["exited"] - driver.marks["started"])
                steps["teardown"].append(end - driver.marks["exited"])

    def timed(fn: Callable[[], object]) -> list[float]:
        out = []
        for _ in range(runs):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
        return out

    def build_argv() -> None:
        fds = MemFds()
        driver.command(handle, Execution("echo", ["x"], 30, None, {}, 1 << 20), fds)
        fds.close()

    hops: list[float] = []
    for _ in range(runs):
        start = time.perf_counter()
        await asyncio.to_thread(read_state, "sb", root / "sb", "bwrap")
        hops.append(time.perf_counter() - start)
    step_figures = {
        "load_kept_handle": _ms(timed(lambda: driver.load("sb", root / "sb"))),
        "load_from_disk": _ms(timed(lambda: read_state("sb", root / "sb", "bwrap"))),
        "load_from_disk_in_a_thread_before": _ms(hops),
        "argv_build_with_memfds": _ms(timed(build_argv)),
        "probes_first_available_ms": round(probes * 1000, 2),
        "probes_kept": _ms(timed(driver.available)),
        **{name: _ms(values) for name, values in steps.items()},
    }
    await driver.delete(handle)
    return {
        "ways": {name: _ms(values) for name, values in times.items()},
        "steps_of_driver_execute": step_figures,
        "host_uid": isinstance(host_uid, int),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bwrap_exec_bench", description=__doc__)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--ballast-mb", type=int, default=0)
    opts = parser.parse_args(argv)
    ballast = bytearray(opts.ballast_mb << 20)
    for at in range(0, len(ballast), 4096):
        ballast[at] = 1  # touched: mapped, so a fork copies its page tables
    busy = wait_until_quiet()
    rss = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    figures = asyncio.run(_measure(opts.runs))
    write_result(
        f"bwrap_exec_ballast_{opts.ballast_mb}mb" if opts.ballast_mb else "bwrap_exec",
        {
            "what": f"echo i, {opts.runs} times each way, taking turns, in one process "
            f"(RSS {rss >> 20} MB, ballast {opts.ballast_mb} MB), on one existing bwrap sandbox",
            "command": "python -m bench.bwrap_exec_bench "
            f"--runs {opts.runs} --ballast-mb {opts.ballast_mb}",
            "machine_busy_before": busy,
            **figures,
        },
    )
    del ballast


if __name__ == "__main__":
    main()
