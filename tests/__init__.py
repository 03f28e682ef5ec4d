"""
Lattice's tests.

Hypothesis runs with two profiles: ``ci`` (when ``CI`` is set: derandomized,
so a CI failure reproduces, and no timing health checks, since CI machines
are shared and slow) and ``dev`` (random, no deadline).  Select one
explicitly with ``HYPOTHESIS_PROFILE``.
"""

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile("dev", deadline=None)
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev")
)
