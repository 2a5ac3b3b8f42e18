"""Project-wide test configuration: a deterministic hypothesis profile.

Profiles (select with FMTLAB_HYPOTHESIS_PROFILE=<name>):
- "fmtlab" (default): derandomize=True (the same examples on every run and machine, no example
  database), modest max_examples, no deadline (2 shared cores; numba compiles on first call);
- "thorough": 10x the examples, randomized, for an occasional deeper local run.
Tests that need a different number of examples say so with their own @settings.
"""

import os

from hypothesis import HealthCheck, settings

_COMMON = dict(deadline=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("fmtlab", derandomize=True, database=None, max_examples=100, **_COMMON)
settings.register_profile("thorough", derandomize=False, max_examples=1000, **_COMMON)
settings.load_profile(os.environ.get("FMTLAB_HYPOTHESIS_PROFILE", "fmtlab"))
