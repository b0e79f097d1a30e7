"""LARRY reorders vLLM's waiting queue and vLLM stays correct: on the real engine, with
preemptions and prefix caching, every request gets the tokens it asked for, two runs give the
same outputs, and every KV block comes back. Once over vLLM's Scheduler and once over its
AsyncScheduler. Each run is a fresh process (`python -m halffull_dev.testing.vllm_engine`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from halffull_dev.testing.vllm_engine import PLUGIN

pytestmark = pytest.mark.engine

# 12 requests into 4096 KV tokens, up to 8 running: the running requests outgrow the cache and
# vLLM preempts; the even-numbered prompts share their first 256 tokens (prefix cache hits).
PROMPTS = [700, 60, 1200, 20, 400, 900, 150, 30, 600, 80, 1000, 10]
OUTPUTS = [300, 200, 250, 120, 300, 180, 260, 90, 220, 150, 100, 240]
LARRY = json.dumps({"policy": "larry", "alpha": 0.001, "maxWaitSeconds": 0})
ASYNC_PLUGIN = "halffull.engine.scheduler.LarryAsyncScheduler"


def run_engine(workdir: Path, scheduler_cls: str) -> dict[str, Any]:
    spec = {
        "workdir": str(workdir),
        "prompts": PROMPTS,
        "outputs": OUTPUTS,
        "scheduler_cls": scheduler_cls,
        "scheduler_config": LARRY,
        "kv_cache_memory_bytes": 8 * 1024 * 1024,
        "max_model_len": 2048,
        "engine_kwargs": {"max_num_seqs": 8, "enable_prefix_caching": True},
        "shared_prefix": 256,
        "tokens": True,
    }
    done = subprocess.run(
        [sys.executable, "-m", "halffull_dev.testing.vllm_engine", json.dumps(spec)],
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
def runs(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return [run_engine(tmp_path_factory.mktemp(f"larry{i}"), PLUGIN) for i in range(2)]


@pytest.fixture(scope="module")
def async_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return run_engine(tmp_path_factory.mktemp("larry-async"), ASYNC_PLUGIN)


def check_run(run: dict[str, Any]) -> None:
    # LARRY did reorder, vLLM did preempt, the uncached-memory lookup did find cached blocks
    assert run["reorders"] > 0 and run["preemptions"] > 0 and run["prefix_hits"] > 0
    lengths = {int(i): len(tokens) for i, tokens in run["tokens"].items()}
    assert lengths == dict(enumerate(OUTPUTS))  # every request, every token it asked for
    assert run["kv_usage"] == 0.0  # no block leaked: the engine's own usage is back to 0


def test_every_request_completes_and_no_block_leaks(runs: list[dict[str, Any]]) -> None:
    assert runs[0]["scheduler"] == "LarryScheduler"
    check_run(runs[0])


def test_two_runs_give_the_same_outputs(runs: list[dict[str, Any]]) -> None:
    first, second = runs
    check_run(second)
    assert first["tokens"] == second["tokens"]
    assert first["steps"] == second["steps"]


def test_async_scheduler_path(async_run: dict[str, Any], runs: list[dict[str, Any]]) -> None:
    assert async_run["scheduler"] == "LarryAsyncScheduler"
    check_run(async_run)
    assert async_run["tokens"] == runs[0]["tokens"]
