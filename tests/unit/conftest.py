"""Property tests check what holds, not how fast: no per-example deadline, and no health check
on how slowly examples are generated. On a shared 2-core machine a first numpy call can take
hundreds of milliseconds, and Hypothesis then reports a correct test as flaky or too slow."""

from hypothesis import HealthCheck, settings

settings.register_profile(
    "halffull-unit", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("halffull-unit")
