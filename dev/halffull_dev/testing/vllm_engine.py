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

from halffull_dev.testing.vllm_server import write_tiny_llama

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

    def set_policy(self, policy: str, alpha: float, max_wait: float = 0.0) -> None:
        """Write these parameters; `max_wait` 0 (no tail bound) unless given."""
        config = {"policy": policy, "alpha": alpha, "maxWaitSeconds": max_wait}
        self.write_config(json.dumps(config))

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
                # new prompts every burst: vLLM's prefix cache (on by default) would otherwise
                # hold a repeated burst whole, and LARRY rightly sees no memory need at all
                {"prompt_token_ids": prompt_ids(1000 * self._bursts + i, n)},
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
    model: str | None = None,
) -> Iterator[InprocEngine]:
    """Build an in-process engine with our plugin and the tiny dummy-weight model (or `model`,
    a local directory or name loaded with real weights); the parameter file is
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
            "skip_tokenizer_init": True,
            "kv_cache_memory_bytes": kv_cache_memory_bytes,
            "max_model_len": max_model_len,
        }
        if model is None:
            kwargs.update(load_format="dummy", dtype="float32", enforce_eager=True)
        if scheduler_cls is not None:
            kwargs["scheduler_cls"] = scheduler_cls
        kwargs.update(engine_kwargs or {})
        if model is None:
            model = str(write_tiny_llama(workdir / "model", max_position_embeddings=max_model_len))
        engine = LLMEngine.from_engine_args(EngineArgs(model=model, **kwargs))
        yield InprocEngine(engine, config_path)
    finally:
        if engine is not None:
            engine.engine_core.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def step_trace(
    inproc: InprocEngine,
    prompts: Sequence[int],
    outputs: Sequence[int],
    *,
    shared_prefix: int = 0,
    tokens: dict[int, list[int]] | None = None,
) -> list[list[int]]:
    """Submit all requests (prompt and output lengths, arriving 10 ms apart) before the first
    step, run the engine to completion and return, per step, the indices of the requests that
    produced a token in it: a fingerprint of every scheduling decision the engine took.

    With `shared_prefix`, every even-numbered prompt starts with the same that many tokens (for
    prefix caching). With `tokens`, decoding is greedy and each request's output token ids are
    collected there."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    start = time.time() - 1.0
    for i, (p, o) in enumerate(zip(prompts, outputs, strict=True)):
        ids = prompt_ids(i, p)
        if shared_prefix and i % 2 == 0 and p > shared_prefix:
            ids = prompt_ids(10_000, shared_prefix) + ids[shared_prefix:]
        params = SamplingParams(max_tokens=o, ignore_eos=True, output_kind=RequestOutputKind.DELTA)
        if tokens is not None:
            params.temperature = 0.0
        inproc.engine.add_request(
            f"trace-{i}", {"prompt_token_ids": ids}, params, arrival_time=start + 0.01 * i
        )
    steps: list[list[int]] = []
    while inproc.engine.has_unfinished_requests():
        produced = []
        for out in inproc.engine.step():
            if out.outputs and out.outputs[0].token_ids:
                index = int(out.request_id.split("-")[1])
                produced.append(index)
                if tokens is not None:
                    tokens.setdefault(index, []).extend(out.outputs[0].token_ids)
        steps.append(sorted(produced))
    return steps


def preemptions(inproc: InprocEngine) -> int:
    """vLLM's own preemption counter (`vllm:num_preemptions`) for this process."""
    return int(
        sum(
            float(getattr(m, "value", 0.0))
            for m in inproc.engine.get_metrics()
            if m.name == "vllm:num_preemptions"
        )
    )


def _main() -> None:
    """`python -m halffull_dev.testing.vllm_engine SPEC_JSON`: build an engine in a fresh process,
    run `step_trace` and print `{"steps": ..., "preemptions": ...}` as JSON. SPEC keys: workdir,
    prompts, outputs, scheduler_cls (null: vanilla vLLM), scheduler_config, and optional
    kv_cache_memory_bytes, max_model_len, engine_kwargs, shared_prefix, tokens (greedy decoding,
    output token ids in the result)."""
    import sys

    spec = json.loads(sys.argv[1])
    with inproc_engine(
        Path(spec["workdir"]),
        scheduler_config=spec.get("scheduler_config", '{"policy": "fcfs", "alpha": 1.0}'),
        kv_cache_memory_bytes=spec.get("kv_cache_memory_bytes", 16 * 1024 * 1024),
        max_model_len=spec.get("max_model_len", 4096),
        engine_kwargs=spec.get("engine_kwargs"),
        scheduler_cls=spec.get("scheduler_cls"),
    ) as inproc:
        tokens: dict[int, list[int]] | None = {} if spec.get("tokens") else None
        steps = step_trace(
            inproc,
            spec["prompts"],
            spec["outputs"],
            shared_prefix=spec.get("shared_prefix", 0),
            tokens=tokens,
        )
        scheduler = inproc.scheduler
        result = {
            "scheduler": type(scheduler).__name__,
            "steps": steps,
            "preemptions": preemptions(inproc),
            "tokens": tokens,
            "kv_usage": scheduler.kv_cache_manager.usage,
            "reorders": getattr(scheduler, "larry_reorders", None),
            "prefix_hits": getattr(scheduler, "larry_prefix_hits", None),
        }
    print("HALFFULL-RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    _main()
