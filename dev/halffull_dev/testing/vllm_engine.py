"""A real vLLM engine core in the calling process, stepped by the caller.

With `VLLM_ENABLE_V1_MULTIPROCESSING=0` vLLM runs its engine core (and our scheduler plugin)
in-process, so a test or a benchmark can submit requests with chosen arrival times, step the
engine and watch what it outputs at each step, without HTTP in between.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from halffull_dev.testing.vllm_launch import VllmSpec, vllm_environment

PLUGIN = "halffull.engine.scheduler.LarryScheduler"
RESULT_PREFIX = "HALFFULL-RESULT "


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
    spec: VllmSpec,
    workdir: Path,
    *,
    scheduler_config: str = '{"policy": "fcfs", "alpha": 1.0}',
) -> Iterator[InprocEngine]:
    """Build an in-process engine from `spec` (see `halffull_dev.testing.vllm_launch`); the
    scheduler's parameter file is `workdir/scheduler.json`, checked at every step. Sets the
    environment variables it needs for the engine's lifetime and restores them after."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "scheduler.json"
    config_path.write_text(scheduler_config)
    settings = {
        **vllm_environment(workdir),
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "HALFFULL_SCHEDULER_CONFIG": str(config_path),
        "HALFFULL_SCHEDULER_CONFIG_CHECK_INTERVAL": "0",
        **spec.env,
    }
    saved = {key: os.environ.get(key) for key in [*settings, "HALFFULL_ENGINE_METRICS_PORT"]}
    os.environ.update(settings)
    os.environ.pop("HALFFULL_ENGINE_METRICS_PORT", None)
    engine = None
    try:
        from vllm import EngineArgs
        from vllm.v1.engine.llm_engine import LLMEngine

        engine = LLMEngine.from_engine_args(EngineArgs(**spec.engine_kwargs(workdir)))
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


def step_trace_in_subprocess(
    spec: VllmSpec,
    workdir: Path,
    prompts: Sequence[int],
    outputs: Sequence[int],
    *,
    scheduler_config: str = "{}",
    shared_prefix: int = 0,
    tokens: bool = False,
) -> dict[str, Any]:
    """`step_trace` on an engine built in a fresh process (vLLM keeps global state, so engines
    that must not influence each other each get their own), returning `_main`'s result: the
    scheduler's class name, the steps, preemptions, output token ids (with `tokens`), the final
    KV usage and, from the plugin, its reorder and prefix-hit counts."""
    job = {
        "spec": asdict(spec),
        "workdir": str(workdir),
        "prompts": list(prompts),
        "outputs": list(outputs),
        "scheduler_config": scheduler_config,
        "shared_prefix": shared_prefix,
        "tokens": tokens,
    }
    done = subprocess.run(
        [sys.executable, "-m", "halffull_dev.testing.vllm_engine", json.dumps(job)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(
            f"the engine process failed ({done.returncode}):\n"
            + done.stdout[-3000:]
            + done.stderr[-3000:]
        )
    result: dict[str, Any] = json.loads(lines[-1].removeprefix(RESULT_PREFIX))
    return result


def _main() -> None:
    """`python -m halffull_dev.testing.vllm_engine JOB_JSON` (see `step_trace_in_subprocess`):
    build the engine, run `step_trace` and print the result as one JSON line."""
    job = json.loads(sys.argv[1])
    with inproc_engine(
        VllmSpec(**job["spec"]), Path(job["workdir"]), scheduler_config=job["scheduler_config"]
    ) as inproc:
        tokens: dict[int, list[int]] | None = {} if job["tokens"] else None
        steps = step_trace(
            inproc,
            job["prompts"],
            job["outputs"],
            shared_prefix=job["shared_prefix"],
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
    print(RESULT_PREFIX + json.dumps(result), flush=True)


if __name__ == "__main__":
    _main()
