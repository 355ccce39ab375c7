"""Build an app on the developer's machine into a directory ready to pack.

Nothing is ever built on a server: ``build`` detects the runtime (or reads it
from ``aether.toml``), installs dependencies with the developer's own ``npm`` or
``pip``, and stages source + dependencies in a directory under ``cache_dir``
whose tree is exactly what the artifact must hold, so packing it is
deterministic.

Why it is fast on a redeploy: dependencies are installed once per *dependency
key* (sha256 of the lockfile or requirements, the runtime's major version and
the platform) into ``cache_dir/deps/<key>`` and hardlinked into the staging
directory; the staging directory itself is kept between builds and synced
(unchanged files are left alone, stale ones removed). A one-line source change
therefore costs a stat walk and one file copy, not an ``npm ci``.

Layout under ``cache_dir``::

    builds/<app>/          the staged tree (``BuildResult.root``), reused
    builds/.<app>.lock     serialises builds of one app
    deps/npm-<key>/        node_modules/ + the lockfile npm used
    deps/pip-<key>/        .python_packages/ (``pip install --target``)

Dependencies are installed in isolation from the app's source (only the
manifest and lockfile are copied), so the cache entry depends on nothing but
its key; the root package's own npm lifecycle scripts do not run there.

The steps live in their own modules: ``detect``, ``tools``, ``deps``,
``staging``, ``runtimes`` and ``pipeline`` (``build`` itself), over ``common``.
"""

from __future__ import annotations

from aether.artifacts.build.common import NODE_MODULES, PYTHON_VENDOR_DIR, BuildResult
from aether.artifacts.build.detect import detect_runtime
from aether.artifacts.build.pipeline import build

__all__ = ["NODE_MODULES", "PYTHON_VENDOR_DIR", "BuildResult", "build", "detect_runtime"]
