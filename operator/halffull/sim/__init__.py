"""The simulator: modelled vLLM replicas in simulated time, driven by the production policy code.

Pure Python and numpy: no Kubernetes, HTTP or vLLM imports (an import-linter contract checks
this), so it runs anywhere the package installs with its `bench` extra.
"""
