"""What a reconcile already worked out and need not work out again while its inputs stand.

A pass with nothing to do used to spend most of its CPU on two pure computations: building the
desired children (pydantic models, JSON hashes) and checking each live child for drift (a deep
comparison). Both depend only on inputs that carry versions: the children on the LLMService's
`generation` and the endpoint table; a drift check on the live child's `resourceVersion` (an
object with the same version is the same object) and the desired hash. On a 2-core machine
shared with the API server, that CPU is what a burst of LLMServices waits for.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Mapping
from typing import Any

Owner = tuple[str, str]  # (namespace, name) of the LLMService


class ReconcileMemo:
    """Per LLMService: its last desired children, and the live children found without drift."""

    def __init__(self) -> None:
        self._desired: dict[Owner, tuple[Hashable, list[dict[str, Any]]]] = {}
        self._clean: dict[Owner, dict[tuple[str, str], tuple[str, str]]] = {}
        self._lock = threading.Lock()

    def desired(
        self, owner: Owner, key: Hashable, build: Callable[[], list[dict[str, Any]]]
    ) -> list[dict[str, Any]]:
        """`build()`'s result, rebuilt only when `key` changed. Callers must not mutate it."""
        with self._lock:
            held = self._desired.get(owner)
        if held is not None and held[0] == key:
            return held[1]
        children = build()
        with self._lock:
            self._desired[owner] = (key, children)
        return children

    def drift_free(
        self,
        owner: Owner,
        live: Mapping[str, Any],
        want_hash: str,
        check: Callable[[], bool],
    ) -> bool:
        """`check()` (True: no drift), skipped when this very version of the live child was
        already found free of drift against the same desired hash."""
        md = live["metadata"]
        child = (str(live.get("kind")), str(md["name"]))
        seen = (str(md.get("resourceVersion") or ""), want_hash)
        with self._lock:
            if seen[0] and self._clean.get(owner, {}).get(child) == seen:
                return True
        ok = check()
        if ok and seen[0]:
            with self._lock:
                self._clean.setdefault(owner, {})[child] = seen
        return ok

    def forget(self, owner: Owner) -> None:
        with self._lock:
            self._desired.pop(owner, None)
            self._clean.pop(owner, None)
