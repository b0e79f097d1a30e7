"""An opt-in timeline of the operator's work, for finding where a slow reconcile waited.

With `HALFFULL_TRACE=PATH` the operator appends one JSON line per mark to PATH: the LLMService
event as kopf hands it over, each pass's start and end, and each write's request and response.
Times are `time.monotonic()`, the same clock (CLOCK_MONOTONIC) in every process of the machine,
so a benchmark can line them up with its own creates and watches (`bench/operator_scale.py`).
Off (the default), a mark costs one attribute check.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import IO, Any

_lock = threading.Lock()
_out: IO[str] | None = None


def enable(path: str | None = None) -> None:
    """Start writing marks to `path` (default: `$HALFFULL_TRACE`; nothing when neither is set)."""
    global _out
    path = path or os.environ.get("HALFFULL_TRACE")
    if path:
        _out = Path(path).open("a", buffering=1, encoding="utf-8")  # noqa: SIM115 (lives on)


def mark(what: str, namespace: str, name: str, **extra: Any) -> None:
    """One event of the timeline for the LLMService `namespace/name`."""
    if _out is None:
        return
    line = json.dumps({"t": time.monotonic(), "what": what, "ns": namespace, "name": name, **extra})
    with _lock:
        _out.write(line + "\n")
