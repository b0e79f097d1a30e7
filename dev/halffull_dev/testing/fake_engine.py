"""A fast fake vLLM engine: vLLM's OpenAI-compatible HTTP API and /metrics over the simulator's
replica model (`halffull.sim.engine.Replica`, the one checked against vLLM), run in real time.

It speaks what the router needs of vLLM 0.32: `POST /v1/completions` and `/v1/chat/completions`
(JSON or SSE when `"stream": true`, with `stream_options.include_usage`), `GET /v1/models`,
`GET /health`, and `GET /metrics` with vLLM's metric names and labels (`model_name`, `engine`):
`vllm:num_requests_running`, `vllm:num_requests_waiting`, `vllm:kv_cache_usage_perc`,
`vllm:cache_config_info` (labels `block_size`, `num_gpu_blocks`, ...), the token and preemption
counters, the prefix-cache counters and the TTFT / end-to-end / queue-time histograms.

Scheduling is the model's: continuous batching, chunked prefill, paged KV with preemption,
admission by `fcfs` or the LARRY policies, and with `prefix_caching` vLLM's automatic prefix
cache (block hashes of the prompt's token ids, or of its text in 4-character tokens). Each step
takes the `StepModel`'s time (a simulator profile's, e.g. `--profile h100-llama3-8b`, or flat
costs), times `time_scale`. `extra_latency_s` adds a fixed delay before a request reaches the
scheduler; `serve_metrics=False` makes /metrics answer 503 (an engine whose stats cannot be read).
Text prompts count one token per 4 UTF-8 bytes (rounded up); token-id prompts count exactly.

In tests: `async with FakeEngine(...) as engine: engine.url`. As a process:
`python -m halffull_dev.testing.fake_engine --port 8101 --step-ms 8 --token-ms 0.05 ...`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import signal
import time
from collections.abc import Iterable
from dataclasses import replace
from types import TracebackType
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from halffull import defaults as D
from halffull.policy.prefix_index import text_block_hashes, token_block_hashes
from halffull.sim.engine import ADMISSION_POLICIES, AdmissionPolicy, Replica, SimRequest, StepResult
from halffull.sim.profiles import PROFILES, EngineShape, StepModel, get_profile
from halffull_dev.testing.openai_api import (
    CHARS_PER_TOKEN,
    BadRequest,
    answer,
    chat_message_tokens,
    count_text_tokens,
    error_response,
    max_tokens,
    stream_chunk,
    usage_chunk,
)

_ids = itertools.count(1)
DEFAULT_SHAPE = EngineShape(num_blocks=8192, block_size=16, max_model_len=32768)
"""A roomy replica: 131,072 KV tokens, vLLM's default budget of 2,048 tokens and 256 sequences."""
INSTANT = StepModel.flat()

TokenEvent = tuple[int, bool]
"""(new tokens, finished) for one request after one step."""


class _StateCollector(Collector):
    def __init__(self, fake: FakeEngine) -> None:
        self.fake = fake

    def collect(self) -> Iterable[Metric]:
        f, e, labels = self.fake, self.fake.replica, ["model_name", "engine"]
        values = [f.model, "0"]

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            g = GaugeMetricFamily(name, doc, labels=labels)
            g.add_metric(values, value)
            return g

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            c = CounterMetricFamily(name, doc, labels=labels)
            c.add_metric(values, value)
            return c

        yield gauge(
            "vllm:num_requests_running",
            "Number of requests in model execution batches.",
            e.num_running,
        )
        yield gauge(
            "vllm:num_requests_waiting",
            "Number of requests waiting to be processed.",
            e.num_waiting,
        )
        yield gauge(
            "vllm:kv_cache_usage_perc",
            "KV-cache usage. 1 means 100 percent usage.",
            e.used_blocks / e.shape.num_blocks,
        )
        yield counter(
            "vllm:num_preemptions",
            "Cumulative number of preemption from the engine.",
            e.num_preemptions,
        )
        yield counter(
            "vllm:prompt_tokens", "Number of prefill tokens processed.", e.prompt_tokens_total
        )
        yield counter(
            "vllm:generation_tokens",
            "Number of generation tokens processed.",
            e.generation_tokens_total,
        )
        if f.prefix_caching:
            yield counter(
                "vllm:prefix_cache_queries",
                "Prefix cache queries, in terms of number of queried tokens.",
                e.prefix_queries_total,
            )
            yield counter(
                "vllm:prefix_cache_hits",
                "Prefix cache hits, in terms of number of cached tokens.",
                e.prefix_hits_total,
            )
        info_labels = {
            "block_size": str(e.shape.block_size),
            "num_gpu_blocks": str(e.shape.num_blocks),
            "num_cpu_blocks": "None",
            "cache_dtype": "auto",
            "enable_prefix_caching": str(f.prefix_caching),
            "gpu_memory_utilization": "0.9",
            "engine": "0",
        }
        info = GaugeMetricFamily(
            "vllm:cache_config_info",
            "Information of the LLMEngine CacheConfig",
            labels=list(info_labels),
        )
        info.add_metric(list(info_labels.values()), 1.0)
        yield info


class FakeEngine:
    """One fake replica on `host:port` (port 0 picks a free one)."""

    def __init__(
        self,
        *,
        model: str = "fake-model",
        shape: EngineShape = DEFAULT_SHAPE,
        step_model: StepModel = INSTANT,
        policy: AdmissionPolicy = "fcfs",
        alpha: float = D.ALPHA,
        max_wait: float = D.MAX_WAIT_SECONDS,
        prefix_caching: bool = False,
        time_scale: float = 1.0,
        extra_latency_s: float = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,
        serve_metrics: bool = True,
    ) -> None:
        if shape.max_model_len > shape.kv_tokens:
            raise ValueError(
                f"max_model_len {shape.max_model_len} exceeds the KV cache's {shape.kv_tokens} "
                "tokens: a request that long would wait for ever"
            )
        self.model = model
        self.serve_metrics = serve_metrics
        self.prefix_caching = prefix_caching
        # fast=False: one step at a time, so that a stream gets one token per step
        self.replica = Replica(
            shape,
            step_model.scaled(time_scale),
            policy=policy,
            alpha=alpha,
            max_wait=max_wait,
            fast=False,
        )
        self.time_scale = time_scale
        self.extra_latency_s = extra_latency_s
        self.host = host
        self.port = port
        self.requests_total = 0
        self._queues: dict[int, asyncio.Queue[TokenEvent]] = {}
        self._wake = asyncio.Event()
        self._stepper: asyncio.Task[None] | None = None
        self._runner: web.AppRunner | None = None
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_StateCollector(self))
        lab = ["model_name", "engine"]
        self._ttft = Histogram(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            lab,
            registry=self.registry,
        )
        self._e2e = Histogram(
            "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds.",
            lab,
            registry=self.registry,
        )
        self._queue_time = Histogram(
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.",
            lab,
            registry=self.registry,
        )
        self.app = web.Application(client_max_size=8 * 1024 * 1024)
        self.app.add_routes(
            [
                web.post("/v1/completions", self._completions),
                web.post("/v1/chat/completions", self._chat),
                web.get("/v1/models", self._models),
                web.get("/health", self._health),
                web.get("/metrics", self._metrics),
            ]
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> str:
        self._stepper = asyncio.create_task(self._step_loop())
        # a short shutdown: stopping the fake with requests in flight looks like an engine crash
        self._runner = web.AppRunner(
            self.app, handler_cancellation=True, access_log=None, shutdown_timeout=0.1
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        server = site._server
        assert server is not None
        sockets = getattr(server, "sockets", None)
        if sockets:
            self.port = sockets[0].getsockname()[1]
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._stepper is not None:
            self._stepper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._stepper
            self._stepper = None

    async def __aenter__(self) -> FakeEngine:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # -- the scheduler loop ------------------------------------------------------------------

    async def _step_loop(self) -> None:
        """The replica on the event loop's clock (time.monotonic, as asyncio's default loop's):
        plan a step, sleep until it ends, apply it, hand out its tokens."""
        replica = self.replica
        while True:
            end = replica.plan(time.monotonic())
            if end is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            await asyncio.sleep(max(0.0, end - time.monotonic()))
            self._deliver(replica.complete())

    def _deliver(self, result: StepResult) -> None:
        for req in result.produced:
            queue = self._queues.get(req.rid)
            if queue is not None:
                queue.put_nowait((result.steps, req.finished_at >= 0))
        labels = (self.model, "0")
        ttft, e2e, queue_time = (
            h.labels(*labels) for h in (self._ttft, self._e2e, self._queue_time)
        )
        for req in result.finished:
            ttft.observe(req.first_token_at - req.arrival)
            e2e.observe(req.finished_at - req.arrival)
            queue_time.observe(req.scheduled_at - req.arrival)

    def prefix_keys(self, prompt: str | list[int]) -> list[int] | None:
        """Block hashes of a prompt for the prefix cache (None when it is off): token ids in
        blocks of the engine's block size, text in blocks of as many 4-character tokens."""
        if not self.prefix_caching:
            return None
        block = self.replica.shape.block_size
        if isinstance(prompt, str):
            return text_block_hashes(prompt, block * CHARS_PER_TOKEN)
        return token_block_hashes(prompt, block)

    def _submit(
        self, prompt_tokens: int, max_tokens: int, keys: list[int] | None
    ) -> tuple[SimRequest, asyncio.Queue[TokenEvent]]:
        req = SimRequest(next(_ids), time.monotonic(), prompt_tokens, max_tokens, keys=keys)
        queue: asyncio.Queue[TokenEvent] = asyncio.Queue()
        self._queues[req.rid] = queue
        self.replica.add(req, req.arrival)
        self.requests_total += 1
        self._wake.set()
        return req, queue

    def add_waiting(self, prompt_tokens: int, max_tokens: int) -> SimRequest:
        """Queue a request that no client waits for, without waking the scheduler: it stays
        waiting until a request over HTTP arrives (tests set up the state the router reads)."""
        req = SimRequest(next(_ids), time.monotonic(), prompt_tokens, max_tokens)
        self.replica.add(req, req.arrival)
        return req

    def _release(self, req: SimRequest) -> None:
        self._queues.pop(req.rid, None)
        self.replica.abort(req)  # no-op when it finished

    # -- HTTP --------------------------------------------------------------------------------

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def _metrics(self, request: web.Request) -> web.Response:
        if not self.serve_metrics:  # stands for an engine whose stats cannot be read
            return web.Response(status=503, text="metrics disabled")
        return web.Response(
            body=generate_latest(self.registry), content_type="text/plain", charset="utf-8"
        )

    async def _models(self, request: web.Request) -> web.Response:
        shape = self.replica.shape
        return web.json_response(
            {
                "object": "list",
                "data": [
                    {
                        "id": self.model,
                        "object": "model",
                        "created": int(time.time()),
                        "owned_by": "vllm",
                        "root": self.model,
                        "parent": None,
                        "max_model_len": shape.max_model_len,
                    }
                ],
            }
        )

    async def _body(self, request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BadRequest(f"invalid JSON body: {exc}") from None
        if not isinstance(body, dict):
            raise BadRequest("the request body must be a JSON object")
        if body.get("model", self.model) != self.model:
            raise BadRequest(f"The model `{body.get('model')}` does not exist.", 404)
        return body

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await self._body(request)
            prompt = body.get("prompt")
            if isinstance(prompt, str):
                tokens = count_text_tokens(prompt)
            elif (
                isinstance(prompt, list)
                and prompt
                and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)
            ):
                tokens = len(prompt)
            else:
                raise BadRequest("prompt must be a string or a non-empty list of token ids")
            keys = self.prefix_keys(prompt)
            return await self._serve(request, body, tokens, keys, chat=False)
        except BadRequest as exc:
            return error_response(str(exc), exc.status)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await self._body(request)
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise BadRequest("messages must be a non-empty list")
            tokens = sum(chat_message_tokens(m) for m in messages)
            tools = body.get("tools")
            if tools is not None:
                if not isinstance(tools, list):
                    raise BadRequest("tools must be a list")
                tokens += count_text_tokens(json.dumps(tools, separators=(",", ":")))
            keys = self.prefix_keys(json.dumps(messages))
            return await self._serve(request, body, tokens, keys, chat=True)
        except BadRequest as exc:
            return error_response(str(exc), exc.status)

    async def _serve(
        self,
        request: web.Request,
        body: dict[str, Any],
        prompt_tokens: int,
        keys: list[int] | None,
        chat: bool,
    ) -> web.StreamResponse:
        wanted = max_tokens(body)
        limit = self.replica.shape.max_model_len
        if prompt_tokens + wanted > limit:
            raise BadRequest(
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{prompt_tokens + wanted} tokens ({prompt_tokens} in the messages, "
                f"{wanted} in the completion). Please reduce the length of the messages or "
                "completion."
            )
        stream = body.get("stream", False) is True
        opts = body.get("stream_options")
        include_usage = isinstance(opts, dict) and opts.get("include_usage") is True
        if self.extra_latency_s > 0:
            await asyncio.sleep(self.extra_latency_s)
        rid = ("chatcmpl-" if chat else "cmpl-") + f"{next(_ids):x}"
        created = int(time.time())
        req, queue = self._submit(prompt_tokens, wanted, keys)
        usage = {
            "prompt_tokens": prompt_tokens,
            "total_tokens": prompt_tokens,
            "completion_tokens": 0,
        }
        try:
            if not stream:
                generated = 0
                while True:
                    new_tokens, finished = await queue.get()
                    generated += new_tokens
                    if finished:
                        break
                usage["completion_tokens"] = generated
                usage["total_tokens"] = prompt_tokens + generated
                body = answer(rid, created, self.model, chat, " tok" * generated, usage)
                return web.json_response(body)
            resp = web.StreamResponse(
                headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
            )
            await resp.prepare(request)
            first = True
            generated = 0
            while True:
                new_tokens, finished = await queue.get()
                generated += new_tokens
                finish = "length" if finished else None
                chunk = stream_chunk(
                    rid, created, self.model, chat, " tok" * new_tokens, finish, first
                )
                first = False
                await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                if finished:
                    break
            if include_usage:
                usage["completion_tokens"] = generated
                usage["total_tokens"] = prompt_tokens + generated
                tail = usage_chunk(rid, created, self.model, chat, usage)
                await resp.write(b"data: " + json.dumps(tail).encode() + b"\n\n")
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
            return resp
        finally:
            self._release(req)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--model", default="fake-model")
    parser.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        help="a simulator profile's engine shape and step times (the flags below override its "
        "shape)",
    )
    parser.add_argument("--num-gpu-blocks", type=int, help=f"default {DEFAULT_SHAPE.num_blocks}")
    for flag in ("block_size", "max_num_batched_tokens", "max_num_seqs", "max_model_len"):
        parser.add_argument(
            "--" + flag.replace("_", "-"), type=int, help=f"default {getattr(DEFAULT_SHAPE, flag)}"
        )
    parser.add_argument("--policy", choices=ADMISSION_POLICIES, default="fcfs")
    parser.add_argument("--alpha", type=float, default=D.ALPHA, help="LARRY's alpha")
    parser.add_argument(
        "--max-wait-seconds", type=float, default=D.MAX_WAIT_SECONDS, help="LARRY's tail bound"
    )
    parser.add_argument("--enable-prefix-caching", action="store_true")
    costs = parser.add_argument_group("flat step costs (without --profile; all 0: instantaneous)")
    costs.add_argument("--step-ms", type=float, default=0.0, help="fixed cost per step")
    costs.add_argument("--seq-ms", type=float, default=0.0, help="per scheduled sequence")
    costs.add_argument("--token-ms", type=float, default=0.0, help="per computed token")
    costs.add_argument("--kv-token-ms", type=float, default=0.0, help="per KV token read")
    parser.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="multiply every step time (e.g. 0.1 runs ten times faster)",
    )
    parser.add_argument(
        "--extra-latency-ms",
        type=float,
        default=0.0,
        help="fixed delay before a request reaches the scheduler",
    )


def engine_from_args(args: argparse.Namespace) -> FakeEngine:
    if args.profile:
        profile = get_profile(args.profile)
        shape, step_model = profile.shape, profile.model
    else:
        shape = DEFAULT_SHAPE
        ms = 1e-3
        step_model = StepModel.flat(
            args.step_ms * ms, args.seq_ms * ms, args.token_ms * ms, args.kv_token_ms * ms
        )
    changes = {
        "num_blocks": args.num_gpu_blocks,
        "block_size": args.block_size,
        "max_num_batched_tokens": args.max_num_batched_tokens,
        "max_num_seqs": args.max_num_seqs,
        "max_model_len": args.max_model_len,
    }
    shape = replace(shape, **{k: v for k, v in changes.items() if v is not None})
    return FakeEngine(
        model=args.model,
        shape=shape,
        step_model=step_model,
        policy=args.policy,
        alpha=args.alpha,
        max_wait=args.max_wait_seconds,
        prefix_caching=args.enable_prefix_caching,
        time_scale=args.time_scale,
        extra_latency_s=args.extra_latency_ms / 1e3,
        host=args.host,
        port=args.port,
    )


async def _serve_forever(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with engine_from_args(args) as fake:
        print(f"fake engine {fake.model} serving on {fake.url}", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m halffull_dev.testing.fake_engine", description=__doc__.split("\n\n")[0]
    )
    add_arguments(parser)
    asyncio.run(_serve_forever(parser.parse_args(argv)))
    return 0


def vllm_main(argv: list[str] | None = None) -> int:
    """The fake engine behind vLLM's command line, as the operator's engine pods run it
    (`python3 -m vllm.entrypoints.openai.api_server --model ... --served-model-name ...`): the
    fake-engine image installs this as that module. Flags the fake engine lacks are ignored;
    its own (--seq-ms, ...) come through the LLMService's `engine.extraArgs`."""
    parser = argparse.ArgumentParser(prog="fake vllm.entrypoints.openai.api_server")
    add_arguments(parser)
    parser.add_argument("--served-model-name")
    args, _ = parser.parse_known_args(argv)
    if args.served_model_name:
        args.model = args.served_model_name
    asyncio.run(_serve_forever(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
