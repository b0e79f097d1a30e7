"""The router as users meet it: driven by the official `openai` client, in front of fake engines.

Each error the router or an engine gives must reach the client as the client's own exception
class for it (the client picks the class from the status code and reads `error.message`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import openai
import pytest
from router_helpers import TOOL_TURNS, WEATHER_TOOLS, base, make_settings, running_router

from halffull.router.app import Router
from halffull.sim.profiles import StepModel
from halffull_dev.testing.fake_engine import FakeEngine

MODEL = "fake-model"


def client(router: Router, key: str = "unused") -> openai.AsyncOpenAI:
    # no client-side retries: each call must show what the router answered
    return openai.AsyncOpenAI(base_url=base(router) + "/v1", api_key=key, max_retries=0)


def with_router(
    test: Callable[[Router, openai.AsyncOpenAI], Awaitable[None]], engines: int = 2, **kw: Any
) -> None:
    async def main() -> None:
        fakes = [FakeEngine(model=MODEL) for _ in range(engines)]
        for f in fakes:
            await f.start()
        try:
            settings = make_settings([f.url for f in fakes])
            async with running_router(settings, **kw) as router, client(router) as c:
                await test(router, c)
        finally:
            for f in fakes:
                await f.stop()

    asyncio.run(main())


def test_completions_streamed_and_not_with_usage() -> None:
    async def test(router: Router, c: openai.AsyncOpenAI) -> None:
        done = await c.completions.create(model=MODEL, prompt="hello there", max_tokens=5)
        assert done.choices[0].finish_reason == "length"
        assert done.usage is not None and done.usage.completion_tokens == 5
        assert done.usage.prompt_tokens > 0

        stream = await c.completions.create(
            model=MODEL, prompt=[1, 2, 3], max_tokens=4, stream=True,
            stream_options={"include_usage": True},
        )  # fmt: skip
        chunks = [ch async for ch in stream]
        text = "".join(ch.choices[0].text for ch in chunks if ch.choices)
        assert text.strip() and chunks[-1].usage is not None
        assert chunks[-1].usage.prompt_tokens == 3 and chunks[-1].usage.completion_tokens == 4

    with_router(test)


def test_chat_streamed_and_not_with_usage() -> None:
    async def test(router: Router, c: openai.AsyncOpenAI) -> None:
        msgs: Any = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
        done = await c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=3)
        assert done.choices[0].message.role == "assistant"
        assert done.usage is not None and done.usage.completion_tokens == 3

        stream = await c.chat.completions.create(
            model=MODEL, messages=msgs, max_completion_tokens=3, stream=True,
            stream_options={"include_usage": True},
        )  # fmt: skip
        chunks = [ch async for ch in stream]
        assert chunks[0].choices[0].delta.role == "assistant"
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3

    with_router(test)


def test_models_lists_the_served_model() -> None:
    async def test(router: Router, c: openai.AsyncOpenAI) -> None:
        assert [m.id async for m in c.models.list()] == [MODEL]

    with_router(test, engines=1)


def test_client_errors_arrive_as_the_clients_exceptions() -> None:
    async def test(router: Router, c: openai.AsyncOpenAI) -> None:
        with pytest.raises(openai.BadRequestError, match="max_tokens"):
            await c.completions.create(model=MODEL, prompt="x", max_tokens=-1)
        with pytest.raises(openai.BadRequestError, match="maximum context length"):
            await c.completions.create(model=MODEL, prompt=[1] * 10, max_tokens=10**6)
        with pytest.raises(openai.NotFoundError, match="does not exist"):
            await c.completions.create(model="no-such-model", prompt="x", max_tokens=1)

    with_router(test)


def test_missing_key_is_an_authentication_error(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("s3cret\n")

    async def test(router: Router, c: openai.AsyncOpenAI) -> None:
        with pytest.raises(openai.AuthenticationError, match="bearer token"):
            await c.completions.create(model=MODEL, prompt="x", max_tokens=1)
        async with client(router, key="s3cret") as good:
            await good.completions.create(model=MODEL, prompt="x", max_tokens=1)

    with_router(test, engines=1, api_key_file=key)


def test_no_replica_is_a_server_error() -> None:
    async def main() -> None:
        fake = FakeEngine(model=MODEL)
        await fake.start()
        async with running_router(make_settings([fake.url]), first_backoff_s=30) as router:
            await fake.stop()
            async with client(router) as c:
                with pytest.raises(openai.InternalServerError) as err:
                    await c.completions.create(model=MODEL, prompt="x", max_tokens=1)
                assert err.value.status_code == 503
                assert "no engine replica" in err.value.message

    asyncio.run(main())


def test_body_too_large_is_a_status_error() -> None:
    async def test(router: Router, c: openai.AsyncOpenAI) -> None:
        with pytest.raises(openai.APIStatusError) as err:
            await c.completions.create(model=MODEL, prompt="x" * 5000, max_tokens=1)
        assert err.value.status_code == 413 and "too large" in err.value.message

    with_router(test, engines=1, max_body_bytes=4096)


TOOLS = WEATHER_TOOLS


def test_chat_accepts_what_vllm_accepts() -> None:
    """Content parts, developer and system roles, max_completion_tokens, tools and
    response_format, and a whole tool-calling conversation: an assistant turn with tool_calls and
    no content, then the tool's result."""

    async def test(router: Router, c: openai.AsyncOpenAI) -> None:
        parts: Any = [
            {"role": "developer", "content": "answer in JSON"},
            {"role": "system", "content": [{"type": "text", "text": "be brief"}]},
            {"role": "user", "content": [{"type": "text", "text": "weather in Paris?"}]},
        ]
        first = await c.chat.completions.create(
            model=MODEL, messages=parts, tools=TOOLS, max_completion_tokens=4,
            response_format={"type": "json_object"},
        )  # fmt: skip
        assert first.choices[0].message.role == "assistant"
        assert first.usage is not None and first.usage.prompt_tokens > 0
        conversation: Any = [*parts, *TOOL_TURNS]
        second = await c.chat.completions.create(
            model=MODEL, messages=conversation, tools=TOOLS, tool_choice="auto", max_tokens=3
        )
        assert second.usage is not None
        # the tool call and its result are part of the prompt
        assert second.usage.prompt_tokens > first.usage.prompt_tokens
        stream = await c.chat.completions.create(
            model=MODEL, messages=conversation, tools=TOOLS, max_tokens=3, stream=True
        )
        assert [ch async for ch in stream][-1].choices[0].finish_reason == "length"

    with_router(test)


def test_overload_is_a_rate_limit_error() -> None:
    """The router's 429 (every replica saturated) with Retry-After, as the client's
    RateLimitError."""

    async def main() -> None:
        slow = FakeEngine(model=MODEL, step_model=StepModel.flat(step_s=0.05, token_s=1e-3))
        await slow.start()
        settings = make_settings([slow.url], max_num_batched_tokens=256, shed_queued_batches=2)
        try:
            async with running_router(settings) as router, client(router) as c:

                async def one(n: int) -> BaseException | None:
                    try:
                        await c.completions.create(model=MODEL, prompt=[n + 1] * 256, max_tokens=1)
                    except openai.APIStatusError as exc:
                        return exc
                    return None

                results = await asyncio.gather(*(one(n) for n in range(12)))
                shed = [r for r in results if r is not None]
                assert shed and len(shed) < len(results)
                for exc in shed:
                    assert isinstance(exc, openai.RateLimitError), exc
                    assert int(exc.response.headers["Retry-After"]) >= 1
        finally:
            await slow.stop()

    asyncio.run(main())
