"""Helpers for the router tests: routers and fake engines on loopback in the test's event loop."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from halffull.api.runtime_config import RouterEndpoint
from halffull.router.app import Router
from halffull.router.config import Settings
from halffull_dev.testing import volumes

WEATHER_TOOLS: Any = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
"""One function tool, for the tool-calling conversations of the OpenAI client tests."""
TOOL_TURNS: Any = [
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": '{"celsius": 21}'},
]
"""An assistant turn that calls the tool (content null) and the tool's result."""


async def wait_for(condition: Callable[[], bool], what: str, limit_s: float = 60.0) -> None:
    """Wait until `condition()` holds; the limit only stops a broken test from hanging."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.005)


def make_settings(
    urls: Sequence[str], *, policy: str = "sal", poll_interval_ms: int = 100, **kw: Any
) -> Settings:
    endpoints = tuple(RouterEndpoint(name=f"e{i}", url=u) for i, u in enumerate(urls))
    return Settings(
        model=kw.pop("model", "fake-model"),
        policy=policy,
        beta=kw.pop("beta", 1.0),
        poll_interval_ms=poll_interval_ms,
        max_num_batched_tokens=kw.pop("max_num_batched_tokens", None),
        max_model_len=kw.pop("max_model_len", None),
        endpoints=endpoints,
        discovery=kw.pop("discovery", None),
        **kw,  # max_attempts, timeouts, shed_queued_batches, engine_metrics_port
    )


@contextlib.asynccontextmanager
async def running_router(
    settings: Settings, *, wait_polled: bool = True, **kwargs: Any
) -> AsyncIterator[Router]:
    router = Router(settings, **kwargs)
    await router.start("127.0.0.1", 0, 0)
    try:
        if wait_polled:
            await wait_for(
                lambda: all(ep.stats_at is not None for ep in router.endpoints.values()),
                "the first poll of every endpoint",
            )
        yield router
    finally:
        await router.stop()


def base(router: Router) -> str:
    return f"http://127.0.0.1:{router.port}"


def admin(router: Router) -> str:
    return f"http://127.0.0.1:{router.admin_port}"


async def read_sse(resp: aiohttp.ClientResponse) -> list[Any]:
    """The `data:` payloads of an SSE body, JSON-decoded ("[DONE]" kept as a string)."""
    events: list[Any] = []
    async for raw in resp.content:
        line = raw.decode().strip()
        if line.startswith("data: "):
            payload = line[len("data: ") :]
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def write_configmap(directory: Path, config: dict[str, Any]) -> None:
    """A new version of the router's ConfigMap volume, written the way the kubelet does."""
    volumes.publish(directory, {"router.json": json.dumps(config)})
