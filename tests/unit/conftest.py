"""Property tests check what holds, not how fast: no per-example deadline. On a shared 2-core
machine a first numpy call can take hundreds of milliseconds, and Hypothesis then reports a
correct test as flaky."""

from hypothesis import settings

settings.register_profile("halffull-unit", deadline=None)
settings.load_profile("halffull-unit")
