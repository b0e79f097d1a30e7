"""Policy fcfs with the plugin loaded takes exactly vanilla vLLM's scheduling decisions, step by
step, on a workload that fills a small KV cache and causes preemptions. Each engine runs in a
fresh process (`python -m halffull_dev.testing.vllm_engine`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from halffull_dev.testing.vllm_engine import PLUGIN

pytestmark = pytest.mark.engine

# 12 requests into 4096 KV tokens (32 blocks of 128), up to 8 running: long outputs make the
# running requests outgrow the cache, so vLLM preempts.
PROMPTS = [700, 60, 1200, 20, 400, 900, 150, 30, 600, 80, 1000, 10]
OUTPUTS = [300, 200, 250, 120, 300, 180, 260, 90, 220, 150, 100, 240]


def run_engine(workdir: Path, scheduler_cls: str | None, config: str) -> dict[str, Any]:
    job = {
        "workdir": str(workdir),
        "prompts": PROMPTS,
        "outputs": OUTPUTS,
        "scheduler_config": config,
        "spec": {  # VllmSpec's fields
            "scheduler_cls": scheduler_cls,
            "kv_cache_memory_bytes": 8 * 1024 * 1024,
            "max_model_len": 2048,
            "engine_args": {"max_num_seqs": 8, "enable_prefix_caching": False},
        },
    }
    done = subprocess.run(
        [sys.executable, "-m", "halffull_dev.testing.vllm_engine", json.dumps(job)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("HALFFULL-RESULT ")]
    assert done.returncode == 0 and lines, done.stdout[-3000:] + done.stderr[-3000:]
    result: dict[str, Any] = json.loads(lines[-1].removeprefix("HALFFULL-RESULT "))
    return result


@pytest.fixture(scope="module")
def vanilla(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return run_engine(tmp_path_factory.mktemp("vanilla"), None, "{}")


def test_workload_causes_preemptions(vanilla: dict[str, Any]) -> None:
    assert vanilla["scheduler"] == "Scheduler"
    assert vanilla["preemptions"] > 0


def test_fcfs_plugin_steps_like_vanilla(tmp_path: Path, vanilla: dict[str, Any]) -> None:
    plugin = run_engine(tmp_path, PLUGIN, '{"policy": "fcfs", "alpha": 1.0}')
    assert plugin["scheduler"] == "LarryScheduler"
    assert plugin["steps"] == vanilla["steps"]
    assert plugin["preemptions"] == vanilla["preemptions"]


def test_larry_plugin_steps_differently(tmp_path: Path, vanilla: dict[str, Any]) -> None:
    plugin = run_engine(tmp_path, PLUGIN, '{"policy": "larry", "alpha": 0.001}')
    assert plugin["scheduler"] == "LarryScheduler"
    assert plugin["steps"] != vanilla["steps"]
    # Small prompts first: the 10-token request (index 11) starts in LARRY's first step.
    assert 11 in plugin["steps"][0] and 11 not in vanilla["steps"][0]
