"""halffull: LLM serving on Kubernetes with LARRY scheduling and SAL routing."""

__version__ = "0.1.0"
