"""Plain-Python pieces the running parts share (router, engine plugin, operator): reading an
engine's /metrics text and watching a mounted ConfigMap file. No HTTP, Kubernetes or vLLM here."""
