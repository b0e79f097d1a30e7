"""Child processes of the development tools: stopping one the same way everywhere."""

from __future__ import annotations

import subprocess
from typing import Any


def stop_process(proc: subprocess.Popen[Any], timeout: float = 20.0) -> int:
    """Ask a child to stop (SIGTERM) and kill it if it has not within `timeout` seconds, so that
    neither a test nor the local cluster leaves one behind; returns its exit status. A child that
    already exited is only reaped."""
    proc.terminate()
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()
