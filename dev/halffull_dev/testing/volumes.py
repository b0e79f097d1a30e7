"""A ConfigMap or Secret volume written the way the kubelet writes it, for tests.

The kubelet's atomic writer never edits a file in place: it writes the new version into a fresh
timestamped directory, makes the user-visible names symlinks through `..data` (once), points a
new `..data_tmp` symlink at the new directory and renames it over `..data` (the atomic swap
readers see), then removes the old directory. Readers of such a volume must notice the swap;
tests of those readers use this to make one.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import shutil
from collections.abc import Mapping
from pathlib import Path

_unique = itertools.count()


def publish(mount: Path, files: Mapping[str, str | bytes]) -> Path:
    """Make `files` (name -> content) the volume's new version; returns its directory."""
    mount.mkdir(parents=True, exist_ok=True)
    current = mount / "..data"
    old = current.readlink() if current.is_symlink() else None
    stamp = dt.datetime.now(dt.UTC).strftime("..%Y_%m_%d_%H_%M_%S.%f") + f"{next(_unique)}"
    fresh = mount / stamp
    fresh.mkdir()
    for name, content in files.items():
        if isinstance(content, bytes):
            (fresh / name).write_bytes(content)
        else:
            (fresh / name).write_text(content, encoding="utf-8")
    for name in files:
        link = mount / name
        if not link.is_symlink():
            link.symlink_to(f"..data/{name}")
    tmp = mount / "..data_tmp"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    tmp.symlink_to(stamp)
    tmp.replace(current)
    if old is not None:
        shutil.rmtree(mount / old, ignore_errors=True)
    return fresh
