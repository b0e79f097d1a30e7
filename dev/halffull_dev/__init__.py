"""Development tools for halffull: the local cluster (`halffull dev`), fake and real engine
launchers for tests and benchmarks. A separate distribution (`dev/pyproject.toml`): production
images install `halffull` alone and never this."""
