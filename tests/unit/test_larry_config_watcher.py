"""The engine plugin's parameter file watcher (halffull.engine.config_watcher), on real files
laid out the way kubelet mounts a ConfigMap."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from halffull.api.runtime_config import SCHEDULER_CONFIG_FILE, SchedulerConfig
from halffull.engine.config_watcher import FALLBACK, ConfigWatcher, parse_scheduler_config
from halffull_dev.testing import volumes


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def publish(mount: Path, text: str | bytes) -> None:
    """A new ConfigMap version, written the way the kubelet does."""
    volumes.publish(mount, {SCHEDULER_CONFIG_FILE: text})


def config_text(policy: str, alpha: float) -> str:
    return json.dumps({"policy": policy, "alpha": alpha})


@pytest.fixture
def mount(tmp_path: Path) -> Path:
    return tmp_path


def test_no_file_means_fcfs(mount: Path) -> None:
    watcher = ConfigWatcher(mount / SCHEDULER_CONFIG_FILE, interval=1.0, clock=FakeClock())
    assert watcher.current() == FALLBACK
    assert FALLBACK.policy == "fcfs"
    assert watcher.errors == 1


def test_first_file_is_taken_and_logged(mount: Path, caplog: pytest.LogCaptureFixture) -> None:
    publish(mount, config_text("larry", 0.25))
    watcher = ConfigWatcher(mount / SCHEDULER_CONFIG_FILE, interval=1.0, clock=FakeClock())
    with caplog.at_level(logging.INFO, logger="halffull.engine"):
        assert watcher.current() == SchedulerConfig(policy="larry", alpha=0.25)
    assert "policy=larry alpha=0.25 in force" in caplog.text


def test_symlink_swap_is_seen_after_the_interval_only(mount: Path) -> None:
    clock = FakeClock()
    publish(mount, config_text("larry", 1.0))
    watcher = ConfigWatcher(mount / SCHEDULER_CONFIG_FILE, interval=1.0, clock=clock)
    assert watcher.current().policy == "larry"
    publish(mount, config_text("larry-literal", 2.0))
    clock.now = 0.5
    assert watcher.current().policy == "larry"  # not checked yet
    clock.now = 1.0
    assert watcher.current() == SchedulerConfig(policy="larry-literal", alpha=2.0)
    assert watcher.reloads == 2


def test_same_stat_is_not_reread(mount: Path) -> None:
    publish(mount, config_text("larry", 1.0))
    path = mount / SCHEDULER_CONFIG_FILE
    watcher = ConfigWatcher(path, interval=0.0, clock=FakeClock())
    assert watcher.poll().changed
    # Same size, same inode, same mtime: the content is not read again, so this invalid text,
    # written behind the watcher's back with the old mtime restored, goes unnoticed.
    target = path.resolve()
    st = target.stat()
    with target.open("r+") as f:
        f.write("x" * st.st_size)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    change = watcher.poll()
    assert not change.changed and change.error is None
    assert watcher.config.policy == "larry"


@pytest.mark.parametrize(
    "broken",
    [
        "{not json",
        "[]",
        '{"policy": "sjf"}',
        '{"policy": "larry", "alpha": -1}',
        '{"policy": "larry", "alpha": "NaN"}',
        '{"policy": "larry", "alpha": 1, "unknown": true}',
        "\udcff",
    ],
)
def test_invalid_file_keeps_last_good_and_logs_once(
    mount: Path, broken: str, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    publish(mount, config_text("larry", 0.5))
    watcher = ConfigWatcher(mount / SCHEDULER_CONFIG_FILE, interval=1.0, clock=clock)
    watcher.current()
    publish(mount, broken.encode("utf-8", "surrogateescape"))
    with caplog.at_level(logging.INFO, logger="halffull.engine"):
        for step in range(1, 6):
            clock.now = float(step)
            assert watcher.current() == SchedulerConfig(policy="larry", alpha=0.5)
    assert watcher.errors == 1
    assert caplog.text.count("rejected") == 1
    assert "keeping policy=larry alpha=0.5" in caplog.text
    publish(mount, config_text("fcfs", 0.5))
    clock.now = 10.0
    assert watcher.current().policy == "fcfs"


def test_removed_file_keeps_last_good(mount: Path) -> None:
    publish(mount, config_text("larry", 3.0))
    watcher = ConfigWatcher(mount / SCHEDULER_CONFIG_FILE, interval=0.0, clock=FakeClock())
    assert watcher.current().alpha == 3.0
    (mount / "..data").unlink()
    change = watcher.poll()
    assert change.error == "file is missing"
    assert watcher.current() == SchedulerConfig(policy="larry", alpha=3.0)
    assert watcher.errors == 1


def test_from_env_without_variable_is_fcfs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HALFFULL_SCHEDULER_CONFIG", raising=False)
    watcher = ConfigWatcher.from_env()
    assert watcher.path is None
    assert watcher.current() == FALLBACK


def test_parse_reports_the_field() -> None:
    with pytest.raises(ValueError, match="alpha"):
        parse_scheduler_config('{"policy": "larry", "alpha": -1}')
