"""LARRY reorders vLLM's waiting queue and vLLM stays correct: on the real engine, with
preemptions and prefix caching, every request gets the tokens it asked for, two runs give the
same outputs, and every KV block comes back. Once over vLLM's Scheduler and once over its
AsyncScheduler. Each run is a fresh process (`python -m halffull_dev.testing.vllm_engine`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from halffull_dev.testing.vllm_engine import PLUGIN
from tests.engine.conftest import OUTPUTS, run_trace

pytestmark = pytest.mark.engine

# The shared workload (conftest), prefix caching on: the even-numbered prompts share their first
# 256 tokens (prefix cache hits).
LARRY = json.dumps({"policy": "larry", "alpha": 0.001, "maxWaitSeconds": 0})
ASYNC_PLUGIN = "halffull.engine.scheduler.LarryAsyncScheduler"


def run_engine(workdir: Path, scheduler_cls: str) -> dict[str, Any]:
    return run_trace(
        workdir, scheduler_cls, LARRY, prefix_caching=True, shared_prefix=256, tokens=True
    )


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
