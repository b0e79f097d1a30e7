"""The engine plugin's parameter file, re-read when it changes.

The operator mounts a ConfigMap as a directory; kubelet replaces the file by swapping a `..data`
symlink (`halffull.runtime.file_watch` tells a new version). The scheduler asks for the
parameters at every step (comparing the clock with `watch.next_check` first, so that a step
between checks costs one clock read); the file is checked at most once per `interval` seconds and
read only when its version changed. A missing, unreadable or invalid file is logged once per
version, counted in `errors` (the plugin's `halffull_scheduler_config_errors_total`), and the
last good parameters stay in force (FCFS when there never were any): the engine never stops over
its configuration.

This module imports nothing from vLLM so that it can be tested on its own.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from halffull.api.runtime_config import SCHEDULER_CONFIG_ENV, SchedulerConfig
from halffull.runtime.file_watch import FileWatch

FALLBACK = SchedulerConfig(policy="fcfs", alpha=1.0)
"""In force until a valid file has been read: vLLM's own order."""

DEFAULT_CHECK_INTERVAL_S = 1.0
CHECK_INTERVAL_ENV = "HALFFULL_SCHEDULER_CONFIG_CHECK_INTERVAL"
"""Seconds between stats of the file (default 1; 0 stats at every step, for tests)."""

logger = logging.getLogger("halffull.engine")


@dataclass(frozen=True, slots=True)
class Change:
    """What `ConfigWatcher.poll` saw on a check."""

    config: SchedulerConfig
    changed: bool
    error: str | None = None


def parse_scheduler_config(text: str) -> SchedulerConfig:
    """Parse the file's text; raises ValueError with a readable reason."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from exc
    try:
        return SchedulerConfig.model_validate(data)
    except ValidationError as exc:
        reasons = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ValueError(reasons) from exc


class ConfigWatcher:
    """Holds the parameters in force and refreshes them from the file when it changes."""

    def __init__(
        self,
        path: Path | None,
        *,
        interval: float = DEFAULT_CHECK_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.clock = clock
        self.watch = FileWatch(path, interval_s=interval, clock=clock) if path else None
        """None without a file. A hot path may compare `clock()` with its `next_check` and call
        `current()` only from then on (in between, `config` is what `current()` returns)."""
        self.config = FALLBACK
        """The parameters in force, without checking the file."""
        self.reloads = 0
        self.errors = 0
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls) -> ConfigWatcher:
        raw = os.environ.get(SCHEDULER_CONFIG_ENV, "").strip()
        interval_raw = os.environ.get(CHECK_INTERVAL_ENV, "").strip()
        interval = DEFAULT_CHECK_INTERVAL_S
        if interval_raw:
            try:
                interval = max(float(interval_raw), 0.0)
            except ValueError:
                logger.warning(
                    "halffull scheduler: %s=%r is not a number; checking every %.1f s",
                    CHECK_INTERVAL_ENV,
                    interval_raw,
                    interval,
                )
        if not raw:
            logger.warning(
                "halffull scheduler: %s is not set; policy fcfs (vLLM's own order)",
                SCHEDULER_CONFIG_ENV,
            )
        return cls(Path(raw) if raw else None, interval=interval)

    def current(self) -> SchedulerConfig:
        """The parameters in force, after a check of the file if one is due.

        Safe to call from several threads: a check is done by one of them at a time."""
        if self.watch is not None and self.watch.due():
            with self._lock:  # with interval 0 several threads may be due at once
                self.poll()
        return self.config

    def poll(self) -> Change:
        """Check the file now. Reads it only if its version changed since the last check."""
        if self.watch is None or self.path is None:
            return Change(self.config, changed=False)
        check = self.watch.check()
        if not check.changed:
            return Change(self.config, changed=False)
        if check.error is not None:
            return self._fail(check.error)
        try:
            text = self.path.read_text(encoding="utf-8")
            config = parse_scheduler_config(text)
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            return self._fail(str(exc))
        if config == self.config and self.reloads:
            return Change(config, changed=False)
        previous, self.config = self.config, config
        self.reloads += 1
        logger.info(
            "halffull scheduler: %s in force (was %s), from %s",
            config.describe(),
            previous.describe(),
            self.path,
        )
        return Change(config, changed=True)

    def _fail(self, reason: str) -> Change:
        self.errors += 1
        logger.error(
            "halffull scheduler: parameter file %s rejected (%s); keeping %s",
            self.path,
            reason,
            self.config.describe(),
        )
        return Change(self.config, changed=False, error=reason)
