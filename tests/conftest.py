"""Settings for every test: servers started by tests (in process or as processes) get
a request rate high enough that no test shares a tenant's budget by accident.

The rate limit's own tests set the limits they test (``rate_limit_per_minute=...``
to ``running_server``, or a tenant's own limits), which take precedence over these.
"""

from __future__ import annotations

import os

os.environ.setdefault("AETHER_RATE_LIMIT_PER_MINUTE", "10000000")
os.environ.setdefault("AETHER_RATE_LIMIT_BURST", "10000000")
