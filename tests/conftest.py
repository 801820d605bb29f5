"""Shared test set-up: the hypothesis profiles, loaded before any test module.

``ci`` (the default) is sized for two shared CPU cores: no per-example deadline (a real forward
pass on a busy machine can take a second) and a modest number of examples. ``thorough`` is for a
local run: ``HYPOTHESIS_PROFILE=thorough pytest tests/test_properties.py``.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

pytest_plugins = ["pytester"]  # tests/test_plugin.py runs inner pytest sessions

settings.register_profile(
    "ci",
    deadline=None,
    max_examples=25,
    derandomize=True,  # the same examples on every CI run: a red build is reproducible
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile("thorough", deadline=None, max_examples=400, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
