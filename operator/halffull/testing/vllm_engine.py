"""A real vLLM engine core in the calling process, stepped by the caller.

With `VLLM_ENABLE_V1_MULTIPROCESSING=0` vLLM runs its engine core (and our scheduler plugin)
in-process, so a test or a benchmark can submit requests with chosen arrival times, step the
engine and watch what it outputs at each step, without HTTP in between.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from halffull.testing.vllm_server import write_tiny_llama

PLUGIN = "halffull.engine.scheduler.LarryScheduler"


def prompt_ids(index: int, length: int) -> list[int]:
    """Distinct token ids per request, so that prefix caching never shares blocks between them."""
    return [10 + (index * 7919 + k * 31) % 4000 for k in range(length)]


class InprocEngine:
    """A vLLM `LLMEngine` running in this process, with its parameter file at `config_path`."""

    def __init__(self, engine: Any, config_path: Path) -> None:
        self.engine = engine
        self.config_path = config_path
        self._bursts = 0

    @property
    def scheduler(self) -> Any:
        """The scheduler object the engine core built."""
        return self.engine.engine_core.engine_core.scheduler

    def write_config(self, text: str) -> None:
        """Replace the parameter file atomically with `text`."""
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(self.config_path)

    def set_policy(self, policy: str, alpha: float) -> None:
        self.write_config(json.dumps({"policy": policy, "alpha": alpha}))

    def burst(self, sizes: Sequence[int], *, spacing: float = 0.01) -> list[int]:
        """Submit requests with these prompt lengths, arriving `spacing` s apart in list order,
        all before the engine's next step, and run the engine until they are done. Returns
        their indices in the order vLLM finished them (with `max_num_seqs=1`, the order in
        which its scheduler admitted them)."""
        from vllm import SamplingParams

        self._bursts += 1
        start = time.time() - 1.0
        ids: dict[str, int] = {}
        for i, n in enumerate(sizes):
            rid = f"burst{self._bursts}-{i}"
            ids[rid] = i
            self.engine.add_request(
                rid,
                {"prompt_token_ids": prompt_ids(i, n)},
                SamplingParams(max_tokens=2, ignore_eos=True),
                arrival_time=start + i * spacing,
            )
        finished: list[int] = []
        while self.engine.has_unfinished_requests():
            for out in self.engine.step():
                if out.finished:
                    finished.append(ids[out.request_id])
        return finished


@contextmanager
def inproc_engine(
    workdir: Path,
    *,
    scheduler_config: str = '{"policy": "fcfs", "alpha": 1.0}',
    kv_cache_memory_bytes: int = 16 * 1024 * 1024,
    max_model_len: int = 4096,
    engine_kwargs: Mapping[str, Any] | None = None,
    scheduler_cls: str | None = PLUGIN,
) -> Iterator[InprocEngine]:
    """Build an in-process engine with the tiny model and our plugin; the parameter file is
    `workdir/scheduler.json` and is checked at every step. Sets the environment variables it
    needs for the engine's lifetime and restores them after."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "scheduler.json"
    config_path.write_text(scheduler_config)
    settings = {
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "HALFFULL_SCHEDULER_CONFIG": str(config_path),
        "HALFFULL_SCHEDULER_CONFIG_CHECK_INTERVAL": "0",
        "HF_HUB_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "VLLM_CACHE_ROOT": str(workdir / "vllm-cache"),
    }
    saved = {key: os.environ.get(key) for key in [*settings, "HALFFULL_ENGINE_METRICS_PORT"]}
    os.environ.update(settings)
    os.environ.pop("HALFFULL_ENGINE_METRICS_PORT", None)
    engine = None
    try:
        from vllm import EngineArgs
        from vllm.v1.engine.llm_engine import LLMEngine

        kwargs: dict[str, Any] = {
            "load_format": "dummy",
            "skip_tokenizer_init": True,
            "dtype": "float32",
            "enforce_eager": True,
            "kv_cache_memory_bytes": kv_cache_memory_bytes,
            "max_model_len": max_model_len,
        }
        if scheduler_cls is not None:
            kwargs["scheduler_cls"] = scheduler_cls
        kwargs.update(engine_kwargs or {})
        model = write_tiny_llama(workdir / "model", max_position_embeddings=max_model_len)
        engine = LLMEngine.from_engine_args(EngineArgs(model=str(model), **kwargs))
        yield InprocEngine(engine, config_path)
    finally:
        if engine is not None:
            engine.engine_core.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
