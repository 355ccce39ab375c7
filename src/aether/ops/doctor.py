"""``aether doctor``: what this host needs to run an Aether server or node, checked.

Each check is one :class:`Check`: a name, ``ok``/``warn``/``fail``/``skip``, what
was seen (``detail``) and, when it is not ok, what to do (``fix``). The verdicts
are pure functions of observed facts (:mod:`aether.ops.doctor_verdicts`); the facts
are gathered in :mod:`aether.ops.doctor_probes`, which really tries each thing
(opens ``/dev/kvm`` and asks for a VM, runs ``criu check``, binds the ports...).

    checks = run_checks(DoctorOptions(settings=load_config(), roles=("server", "node")))

A ``fail`` makes ``aether doctor`` exit 1; a ``warn`` does not (something works
less well than it could, e.g. no cgroup v2).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from aether.ops import doctor_probes as probes
from aether.ops.doctor_verdicts import Check, DoctorOptions, failed, render

__all__ = ["Check", "DoctorOptions", "failed", "render", "run_checks"]


# -- running them ---------------------------------------------------------------------


def run_checks(options: DoctorOptions) -> list[Check]:
    """Every check that applies to ``options``' roles, in a stable order (they run
    concurrently: network checks take at most ``options.timeout`` seconds each)."""
    plan: list[tuple[str, Callable[[], list[Check]]]] = probes.plan(options)
    results: list[list[Check]] = []
    with ThreadPoolExecutor(max_workers=8) as pool:
        futures: list[Future[list[Check]] | None] = []
        for name, probe in plan:
            if any(name == s or name.startswith(s + " ") for s in options.skip):
                futures.append(None)
            else:
                futures.append(pool.submit(_safely, name, probe))
        for (name, _), future in zip(plan, futures, strict=True):
            if future is None:
                results.append([Check(name, "skip", "skipped (--skip)")])
            else:
                results.append(future.result())
    return [check for group in results for check in group]


def _safely(name: str, probe: Callable[[], list[Check]]) -> list[Check]:
    try:
        return probe()
    except Exception as exc:  # a probe's bug must not hide the other checks
        return [Check(name, "fail", f"the check itself failed: {exc!r}", "report this as a bug")]
