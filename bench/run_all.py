"""Run every benchmark: ``make bench``."""

from __future__ import annotations

import subprocess
import sys

from bench.common import REPO

for module, args in (
    ("bench.planner", []),
    ("bench.cluster_benches", ["all"]),
    ("bench.deploy_pipeline", ["all"]),
    ("bench.tasks_bench", ["all"]),
    ("bench.telemetry_bench", []),
    ("bench.isolation_bench", []),
    ("bench.console_bench", []),
    ("bench.auth_overhead_bench", []),
    ("bench.policy_bench", []),
    ("bench.plugins_bench", []),
    ("bench.node_tls_bench", []),
):
    subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, check=True)
