"""What the router re-reads while it runs: `router.json` and the API key file.

Both are mounted volumes (a ConfigMap, a Secret) that the kubelet updates by swapping the
`..data` symlink; `halffull.runtime.file_watch.FileWatch` tells a new version. A new version
that cannot be used is refused with a log line, and what was in force stays.
"""

from __future__ import annotations

import hmac
import logging
from pathlib import Path

from halffull.router.config import FlagOverrides, Settings, load_config_file, merge
from halffull.runtime.file_watch import FileWatch

log = logging.getLogger("halffull.router")


class SettingsFile:
    """`router.json` with the command line's flags on top, re-read when a new version appears."""

    def __init__(self, path: Path, flags: FlagOverrides) -> None:
        self.path = path
        self.flags = flags
        self.watch = FileWatch(path)
        self.watch.check()  # the version read at start is the baseline

    def new_settings(self) -> Settings | None:
        """The settings of a new version of the file, or None when there is none.

        Raises ValueError (naming the problem) when the new version cannot be used."""
        if not self.watch.new_version():
            return None
        return merge(load_config_file(self.path), self.flags, str(self.path))


class ApiKey:
    """The bearer token clients must send. Its file is checked at most once per
    `check_interval_s` (from the request path), so a rotated Secret takes effect without a
    restart; a new version that is empty or unreadable is refused and the old token stays."""

    def __init__(self, path: Path, *, check_interval_s: float = 1.0) -> None:
        self.watch = FileWatch(path, interval_s=check_interval_s)
        self.watch.check()
        self._token = self._read()

    def _read(self) -> bytes:
        token = self.watch.path.read_text(encoding="utf-8").strip()
        if not token:
            raise ValueError(f"API key file {self.watch.path} is empty")
        return token.encode()

    def refresh(self) -> None:
        """Re-read the file if a check is due and it has a new version."""
        if not self.watch.due() or not self.watch.new_version():
            return
        try:
            self._token = self._read()
        except (OSError, ValueError) as exc:
            log.error("API key not reloaded, keeping the previous one: %s", exc)

    def accepts(self, authorization: str) -> bool:
        """True when the `Authorization` header carries the token (compared in constant time)."""
        scheme, _, token = authorization.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode(), self._token
        )
