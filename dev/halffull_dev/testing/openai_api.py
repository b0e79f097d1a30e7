"""The OpenAI-compatible API as vLLM 0.32 serves it, as far as the fake engine speaks it: request
checks and token counts, error bodies, and the shapes of answers and stream chunks."""

from __future__ import annotations

import math
from typing import Any

from aiohttp import web

CHARS_PER_TOKEN = 4
"""The fake tokenizer: one token per 4 UTF-8 bytes."""


def count_text_tokens(text: str) -> int:
    """The fake engine's tokenizer: one token per 4 UTF-8 bytes, at least one."""
    return max(1, math.ceil(len(text.encode("utf-8")) / CHARS_PER_TOKEN))


class BadRequest(Exception):
    """A request vLLM would refuse: `status` 400 (or 404 for an unknown model)."""

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
        raise BadRequest("each message needs a role")
    content = m.get("content")
    texts: list[str] = []
    if isinstance(content, str):
        texts.append(content)
    elif isinstance(content, list):
        for part in content:
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise BadRequest("each content part needs a type")
            if isinstance(part.get("text"), str):
                texts.append(part["text"])
    elif content is not None:
        raise BadRequest("content must be a string, a list of parts or null")
    calls = m.get("tool_calls") or []
    if not isinstance(calls, list):
        raise BadRequest("tool_calls must be a list")
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            texts += [str(function.get("name") or ""), str(function.get("arguments") or "")]
    if content is None and not calls:
        raise BadRequest("a message without content needs tool_calls")
    return 4 + sum(count_text_tokens(t) for t in texts if t)


def error_response(message: str, status: int) -> web.Response:
    kind = "NotFoundError" if status == 404 else "BadRequestError"
    return web.json_response(
        {"error": {"message": message, "type": kind, "param": None, "code": status}},
        status=status,
    )


def max_tokens(body: dict[str, Any], key: str = "max_tokens") -> int:
    """`max_tokens` (or `max_completion_tokens`) of a request body, 16 when absent."""
    value = body.get(key, body.get("max_completion_tokens", 16))
    if value is None:
        value = 16
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise BadRequest(f"{key} must be a positive integer")
    return value


def stream_chunk(
    rid: str,
    created: int,
    model: str,
    chat: bool,
    text: str | None,
    finish: str | None,
    first: bool,
) -> dict[str, Any]:
    """One `data:` event of a streamed answer."""
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
        "model": model,
        "choices": [choice],
    }


def answer(
    rid: str, created: int, model: str, chat: bool, text: str, usage: dict[str, int]
) -> dict[str, Any]:
    """The body of a non-streamed answer (it always ends by length: the fake has no EOS)."""
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
    return {
        "id": rid,
        "object": "chat.completion" if chat else "text_completion",
        "created": created,
        "model": model,
        "choices": [choice],
        "usage": usage,
    }


def usage_chunk(
    rid: str, created: int, model: str, chat: bool, usage: dict[str, int]
) -> dict[str, Any]:
    """The last event of a stream with `stream_options.include_usage`."""
    return {
        "id": rid,
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": created,
        "model": model,
        "choices": [],
        "usage": usage,
    }
