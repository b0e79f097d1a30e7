"""Notice when a mounted file has a new version: one watcher for the router and the engine plugin.

The operator's ConfigMaps (and a Secret holding the router's API key) reach the pods as volumes.
The kubelet never rewrites a file in place there: it writes every new version into a fresh
timestamped directory (`..2026_11_30_21_55_23.123456789/`), points a new `..data_tmp` symlink at
it and renames that over `..data`, an atomic swap; the visible `router.json` is a symlink to
`..data/router.json`. So a version is identified by the directory side first: where `..data`
points now (when the file sits in such a volume) and the fully resolved path of the file, then
by the file's own identity (device, inode, size, mtime) for plain files edited in place. One
`readlink` and one `stat` per check: cheap enough to run every second, or on every request.

A check reports a change of *state*: a new version, or a different reason the file cannot be
seen (missing, unreadable). The reader decides what a missing file means (the engine keeps its
last good parameters and says so; the router keeps its settings silently). `due()` rate-limits
checks to one per `interval_s` and is safe to call from several threads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

DATA_LINK = "..data"
"""The symlink the kubelet swaps in a ConfigMap or Secret volume."""


@dataclass(frozen=True, slots=True)
class FileVersion:
    """What identifies one version of the file."""

    data_target: str | None
    """Where the directory's `..data` symlink points (None: not a ConfigMap-style volume)."""
    resolved: str
    """The file's path with every symlink resolved (it names the timestamped directory)."""
    device: int
    inode: int
    size: int
    mtime_ns: int


@dataclass(frozen=True, slots=True)
class FileCheck:
    """The outcome of one check."""

    changed: bool
    """True when the version, or the reason it cannot be seen, differs from the last check's."""
    version: FileVersion | None
    error: str | None = None
    """Why the file cannot be seen now ("file is missing", "cannot stat: ..."); None when it can."""


def _data_target(directory: Path) -> str | None:
    try:
        return str((directory / DATA_LINK).readlink())
    except OSError:  # no such link: a plain directory
        return None


def file_version(path: Path) -> FileVersion:
    """The file's version now; raises FileNotFoundError or another OSError when it cannot be
    seen (the directory is read first, so a swap between the two reads shows as a change)."""
    data_target = _data_target(path.parent)
    resolved = path.resolve()
    st = resolved.stat()
    return FileVersion(data_target, str(resolved), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class FileWatch:
    """Watches one file (and the volume directory it lives in) for new versions."""

    def __init__(
        self,
        path: Path,
        *,
        interval_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.interval_s = interval_s
        self._clock = clock
        self._seen: FileVersion | str | None = None
        self._checked = False
        self.next_check = float("-inf")
        """Clock time from which `due()` answers True: a caller on a hot path may compare its
        clock with it first and skip the call."""
        self._lock = threading.Lock()

    def due(self) -> bool:
        """True at most once per `interval_s` (always with interval 0): time for a `check()`.
        Of several threads asking at once, one gets True."""
        if self._clock() < self.next_check:
            return False
        with self._lock:
            now = self._clock()
            if now < self.next_check:
                return False
            self.next_check = now + self.interval_s
            return True

    def check(self) -> FileCheck:
        """Look at the file now and compare with the last check (the first check is a change)."""
        version: FileVersion | None = None
        error: str | None = None
        try:
            version = file_version(self.path)
            key: FileVersion | str = version
        except FileNotFoundError:
            error = key = "file is missing"
        except OSError as exc:
            error = f"cannot stat: {exc}"
            key = f"stat-error:{exc.errno}"
        changed = not self._checked or key != self._seen
        self._checked = True
        self._seen = key
        return FileCheck(changed, version, error)

    def new_version(self) -> bool:
        """True when the file can be seen and is a version not seen before; a missing or
        unreadable file is no news (the caller keeps what it has)."""
        result = self.check()
        return result.changed and result.version is not None
