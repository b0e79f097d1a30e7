"""Policy fcfs with the plugin loaded takes exactly vanilla vLLM's scheduling decisions, step by
step, on a workload that fills a small KV cache and causes preemptions. Each engine runs in a
fresh process (`python -m halffull_dev.testing.vllm_engine`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from halffull_dev.testing.vllm_engine import PLUGIN
from tests.engine.conftest import run_trace

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def vanilla(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return run_trace(tmp_path_factory.mktemp("vanilla"), None, "{}")


def test_workload_causes_preemptions(vanilla: dict[str, Any]) -> None:
    assert vanilla["scheduler"] == "Scheduler"
    assert vanilla["preemptions"] > 0


def test_fcfs_plugin_steps_like_vanilla(tmp_path: Path, vanilla: dict[str, Any]) -> None:
    plugin = run_trace(tmp_path, PLUGIN, '{"policy": "fcfs", "alpha": 1.0}')
    assert plugin["scheduler"] == "LarryScheduler"
    assert plugin["steps"] == vanilla["steps"]
    assert plugin["preemptions"] == vanilla["preemptions"]


def test_larry_plugin_steps_differently(tmp_path: Path, vanilla: dict[str, Any]) -> None:
    plugin = run_trace(tmp_path, PLUGIN, '{"policy": "larry", "alpha": 0.001}')
    assert plugin["scheduler"] == "LarryScheduler"
    assert plugin["steps"] != vanilla["steps"]
    # Small prompts first: the 10-token request (index 11) starts in LARRY's first step.
    assert 11 in plugin["steps"][0] and 11 not in vanilla["steps"][0]
