"""A fast fake vLLM engine: vLLM's OpenAI-compatible HTTP API and /metrics over `EngineModel`.

It speaks what the router needs of vLLM 0.32: `POST /v1/completions` and `/v1/chat/completions`
(JSON or SSE when `"stream": true`, with `stream_options.include_usage`), `GET /v1/models`,
`GET /health`, and `GET /metrics` with vLLM's metric names and labels (`model_name`, `engine`):
`vllm:num_requests_running`, `vllm:num_requests_waiting`, `vllm:kv_cache_usage_perc`,
`vllm:cache_config_info` (labels `block_size`, `num_gpu_blocks`, ...), the token and preemption
counters and the TTFT / end-to-end / queue-time histograms.

Service time follows the model's token load (`engine_model.StepCosts`), times `time_scale`;
`extra_latency_s` adds a fixed delay before a request reaches the scheduler; `serve_metrics=False`
makes /metrics answer 503 (an engine whose stats cannot be read). Text prompts count
one token per 4 UTF-8 bytes (rounded up); token-id prompts count exactly.

In tests: `async with FakeEngine(...) as engine: engine.url`. As a process:
`python -m halffull_dev.testing.fake_engine --port 8101 --prefill-token-ms 0.05 ...`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import signal
import time
from collections.abc import Iterable
from types import TracebackType
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from halffull_dev.testing.engine_model import EngineModel, EngineShape, StepCosts, TokenEvent

_ids = itertools.count(1)
_SHAPE = EngineShape()


def count_text_tokens(text: str) -> int:
    """The fake engine's tokenizer: one token per 4 UTF-8 bytes, at least one."""
    return max(1, math.ceil(len(text.encode("utf-8")) / 4))


class _BadRequest(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def chat_message_tokens(m: object) -> int:
    """Prompt tokens of one chat message, as vLLM's chat API takes it: `content` a string, a list
    of parts (text parts count; image and audio parts are accepted and cost nothing here) or
    null (an assistant turn with `tool_calls`); tool calls count their name and arguments; 4
    tokens for the role and template markers. Roles are not checked (system, developer, user,
    assistant, tool)."""
    if not isinstance(m, dict) or not isinstance(m.get("role"), str):
        raise _BadRequest("each message needs a role")
    content = m.get("content")
    texts: list[str] = []
    if isinstance(content, str):
        texts.append(content)
    elif isinstance(content, list):
        for part in content:
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise _BadRequest("each content part needs a type")
            if isinstance(part.get("text"), str):
                texts.append(part["text"])
    elif content is not None:
        raise _BadRequest("content must be a string, a list of parts or null")
    calls = m.get("tool_calls") or []
    if not isinstance(calls, list):
        raise _BadRequest("tool_calls must be a list")
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            texts += [str(function.get("name") or ""), str(function.get("arguments") or "")]
    if content is None and not calls:
        raise _BadRequest("a message without content needs tool_calls")
    return 4 + sum(count_text_tokens(t) for t in texts if t)


def _error(message: str, status: int) -> web.Response:
    kind = "NotFoundError" if status == 404 else "BadRequestError"
    return web.json_response(
        {"error": {"message": message, "type": kind, "param": None, "code": status}},
        status=status,
    )


class _StateCollector(Collector):
    def __init__(self, fake: FakeEngine) -> None:
        self.fake = fake

    def collect(self) -> Iterable[Metric]:
        f, e, labels = self.fake, self.fake.engine, ["model_name", "engine"]
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
            "vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", e.kv_usage
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
        info_labels = {
            "block_size": str(e.shape.block_size),
            "num_gpu_blocks": str(e.shape.num_gpu_blocks),
            "num_cpu_blocks": "None",
            "cache_dtype": "auto",
            "enable_prefix_caching": "False",
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
        shape: EngineShape | None = None,
        costs: StepCosts | None = None,
        time_scale: float = 1.0,
        extra_latency_s: float = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,
        serve_metrics: bool = True,
    ) -> None:
        self.model = model
        self.serve_metrics = serve_metrics
        self.engine = EngineModel(shape=shape or EngineShape(), costs=costs or StepCosts())
        self.time_scale = time_scale
        self.extra_latency_s = extra_latency_s
        self.host = host
        self.port = port
        self.requests_total = 0
        self._queues: dict[str, asyncio.Queue[TokenEvent]] = {}
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
        self._finished_seen = 0
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
        loop = asyncio.get_running_loop()
        while True:
            duration = self.engine.schedule(loop.time()) if self.engine.has_work else 0.0
            if not self.engine.step_formed:
                self._wake.clear()
                await self._wake.wait()
                continue
            await asyncio.sleep(duration * self.time_scale)
            for event in self.engine.complete(loop.time()):
                queue = self._queues.get(event.req_id)
                if queue is not None:
                    queue.put_nowait(event)
            self._observe_finished()

    def _observe_finished(self) -> None:
        done = self.engine.finished
        labels = (self.model, "0")
        ttft, e2e, queue = (h.labels(*labels) for h in (self._ttft, self._e2e, self._queue_time))
        for rec in done[self._finished_seen :]:
            ttft.observe(rec.ttft_s)
            e2e.observe(rec.e2e_s)
            queue.observe(rec.queue_s)
        if len(done) > 10_000:  # keep memory bounded in long runs
            del done[:-1000]
        self._finished_seen = len(done)

    def _submit(self, prompt_tokens: int, max_tokens: int) -> tuple[str, asyncio.Queue[TokenEvent]]:
        req_id = f"{next(_ids)}"
        queue: asyncio.Queue[TokenEvent] = asyncio.Queue()
        self._queues[req_id] = queue
        self.engine.add(req_id, prompt_tokens, max_tokens, asyncio.get_running_loop().time())
        self.requests_total += 1
        self._wake.set()
        return req_id, queue

    def _release(self, req_id: str) -> None:
        self._queues.pop(req_id, None)
        self.engine.abort(req_id)  # no-op when it finished

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
        shape = self.engine.shape
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
            raise _BadRequest(f"invalid JSON body: {exc}") from None
        if not isinstance(body, dict):
            raise _BadRequest("the request body must be a JSON object")
        if body.get("model", self.model) != self.model:
            raise _BadRequest(f"The model `{body.get('model')}` does not exist.", 404)
        return body

    def _max_tokens(self, body: dict[str, Any], key: str = "max_tokens") -> int:
        value = body.get(key, body.get("max_completion_tokens", 16))
        if value is None:
            value = 16
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise _BadRequest(f"{key} must be a positive integer")
        return value

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
                raise _BadRequest("prompt must be a string or a non-empty list of token ids")
            return await self._serve(request, body, tokens, chat=False)
        except _BadRequest as exc:
            return _error(str(exc), exc.status)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await self._body(request)
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise _BadRequest("messages must be a non-empty list")
            tokens = sum(chat_message_tokens(m) for m in messages)
            tools = body.get("tools")
            if tools is not None:
                if not isinstance(tools, list):
                    raise _BadRequest("tools must be a list")
                tokens += count_text_tokens(json.dumps(tools, separators=(",", ":")))
            return await self._serve(request, body, tokens, chat=True)
        except _BadRequest as exc:
            return _error(str(exc), exc.status)

    def _chunk(
        self, rid: str, created: int, chat: bool, text: str | None, finish: str | None, first: bool
    ) -> dict[str, Any]:
        if chat:
            delta: dict[str, Any] = {}
            if first:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            choice: dict[str, Any] = {
                "index": 0,
                "delta": delta,
                "logprobs": None,
                "finish_reason": finish,
            }
            kind = "chat.completion.chunk"
        else:
            choice = {
                "index": 0,
                "text": text or "",
                "logprobs": None,
                "finish_reason": finish,
                "stop_reason": None,
            }
            kind = "text_completion"
        return {
            "id": rid,
            "object": kind,
            "created": created,
            "model": self.model,
            "choices": [choice],
        }

    async def _serve(
        self, request: web.Request, body: dict[str, Any], prompt_tokens: int, chat: bool
    ) -> web.StreamResponse:
        max_tokens = self._max_tokens(body)
        limit = self.engine.shape.max_model_len
        if prompt_tokens + max_tokens > limit:
            raise _BadRequest(
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, "
                f"{max_tokens} in the completion). Please reduce the length of the messages or "
                "completion."
            )
        stream = body.get("stream", False) is True
        opts = body.get("stream_options")
        include_usage = isinstance(opts, dict) and opts.get("include_usage") is True
        if self.extra_latency_s > 0:
            await asyncio.sleep(self.extra_latency_s)
        rid = ("chatcmpl-" if chat else "cmpl-") + f"{next(_ids):x}"
        created = int(time.time())
        req_id, queue = self._submit(prompt_tokens, max_tokens)
        usage = {
            "prompt_tokens": prompt_tokens,
            "total_tokens": prompt_tokens,
            "completion_tokens": 0,
        }
        try:
            if not stream:
                generated = 0
                while True:
                    event = await queue.get()
                    generated += event.new_tokens
                    if event.finished:
                        break
                usage["completion_tokens"] = generated
                usage["total_tokens"] = prompt_tokens + generated
                text = " tok" * generated
                if chat:
                    choice: dict[str, Any] = {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "logprobs": None,
                        "finish_reason": "length",
                    }
                else:
                    choice = {
                        "index": 0,
                        "text": text,
                        "logprobs": None,
                        "finish_reason": "length",
                        "stop_reason": None,
                    }
                return web.json_response(
                    {
                        "id": rid,
                        "object": "chat.completion" if chat else "text_completion",
                        "created": created,
                        "model": self.model,
                        "choices": [choice],
                        "usage": usage,
                    }
                )
            resp = web.StreamResponse(
                headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
            )
            await resp.prepare(request)
            first = True
            generated = 0
            while True:
                event = await queue.get()
                generated += event.new_tokens
                finish = "length" if event.finished else None
                chunk = self._chunk(rid, created, chat, " tok" * event.new_tokens, finish, first)
                first = False
                await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                if event.finished:
                    break
            if include_usage:
                usage["completion_tokens"] = generated
                usage["total_tokens"] = prompt_tokens + generated
                tail: dict[str, Any] = {
                    "id": rid,
                    "object": "chat.completion.chunk" if chat else "text_completion",
                    "created": created,
                    "model": self.model,
                    "choices": [],
                    "usage": usage,
                }
                await resp.write(b"data: " + json.dumps(tail).encode() + b"\n\n")
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
            return resp
        finally:
            self._release(req_id)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--model", default="fake-model")
    parser.add_argument("--num-gpu-blocks", type=int, default=_SHAPE.num_gpu_blocks)
    parser.add_argument("--block-size", type=int, default=_SHAPE.block_size)
    parser.add_argument("--max-num-batched-tokens", type=int, default=_SHAPE.max_num_batched_tokens)
    parser.add_argument("--max-num-seqs", type=int, default=_SHAPE.max_num_seqs)
    parser.add_argument("--max-model-len", type=int, default=_SHAPE.max_model_len)
    parser.add_argument("--step-ms", type=float, default=0.0, help="fixed cost per step")
    parser.add_argument("--prefill-token-ms", type=float, default=0.0)
    parser.add_argument("--decode-seq-ms", type=float, default=0.0)
    parser.add_argument("--kv-token-ms", type=float, default=0.0)
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
    shape = EngineShape(
        num_gpu_blocks=args.num_gpu_blocks,
        block_size=args.block_size,
        max_num_batched_tokens=args.max_num_batched_tokens,
        max_num_seqs=args.max_num_seqs,
        max_model_len=args.max_model_len,
    )
    costs = StepCosts(
        step_base_s=args.step_ms / 1e3,
        prefill_token_s=args.prefill_token_ms / 1e3,
        decode_seq_s=args.decode_seq_ms / 1e3,
        kv_token_s=args.kv_token_ms / 1e3,
    )
    return FakeEngine(
        model=args.model,
        shape=shape,
        costs=costs,
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
    its own (--decode-seq-ms, ...) come through the LLMService's `engine.extraArgs`."""
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
