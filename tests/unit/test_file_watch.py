"""The one file watcher (halffull.runtime.file_watch) on volumes laid out the way the kubelet
writes ConfigMaps and Secrets, with real symlink swaps."""

from __future__ import annotations

import os
from pathlib import Path

from halffull.runtime.file_watch import FileWatch
from halffull_dev.testing import volumes


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_data_symlink_swap_is_a_new_version(tmp_path: Path) -> None:
    first = volumes.publish(tmp_path, {"router.json": '{"a": 1}'})
    watch = FileWatch(tmp_path / "router.json")
    assert watch.new_version()  # the first look is news
    assert not watch.new_version()
    volumes.publish(tmp_path, {"router.json": '{"a": 2}'})
    assert not first.exists()  # the kubelet removes the old version's directory
    assert watch.new_version()
    assert not watch.new_version()


def test_swap_to_identical_size_and_mtime_is_still_seen(tmp_path: Path) -> None:
    """Only the directory side tells these versions apart by name: same size, same mtime."""
    old = volumes.publish(tmp_path, {"k": "aaaa"})
    watch = FileWatch(tmp_path / "k")
    watch.check()
    st = (old / "k").stat()
    # a new version written by hand, kubelet-style, while the old directory still exists
    fresh = tmp_path / "..2030_01_01_00_00_00.000000"
    fresh.mkdir()
    (fresh / "k").write_text("bbbb")
    os.utime(fresh / "k", ns=(st.st_atime_ns, st.st_mtime_ns))
    tmp = tmp_path / "..data_tmp"
    tmp.symlink_to(fresh.name)
    tmp.replace(tmp_path / "..data")
    check = watch.check()
    assert check.changed and check.version is not None
    assert check.version.data_target == fresh.name
    assert check.version.size == st.st_size and check.version.mtime_ns == st.st_mtime_ns


def test_plain_file_rewritten_in_place_is_a_new_version(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("one")
    watch = FileWatch(path)
    assert watch.new_version()
    path.write_text("three")
    check = watch.check()
    assert check.changed and check.version is not None and check.version.data_target is None


def test_missing_file_is_a_state_reported_once(tmp_path: Path) -> None:
    volumes.publish(tmp_path, {"k": "v"})
    watch = FileWatch(tmp_path / "k")
    assert watch.check().changed
    (tmp_path / "..data").unlink()
    gone = watch.check()
    assert gone.changed and gone.version is None and gone.error == "file is missing"
    again = watch.check()
    assert not again.changed and again.error == "file is missing"
    assert not watch.new_version()  # no news for a reader that keeps what it has
    volumes.publish(tmp_path, {"k": "v2"})
    assert watch.new_version()


def test_due_at_most_once_per_interval(tmp_path: Path) -> None:
    clock = FakeClock()
    watch = FileWatch(tmp_path / "k", interval_s=1.0, clock=clock)
    assert watch.due()
    assert not watch.due()
    clock.now = 0.99
    assert not watch.due()
    clock.now = 1.0
    assert watch.due()
    every_time = FileWatch(tmp_path / "k")
    assert every_time.due() and every_time.due()
