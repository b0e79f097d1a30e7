"""What the router checks in a request body, and how many prompt tokens it counts.

The router validates only what it needs to route and to refuse early with a clear 4xx: the body
is a JSON object; `prompt` (completions) or `messages` (chat) has the right shape; `max_tokens`,
`stream` and `stream_options` have the right types. Every other field passes through untouched
and the engine judges it (its 4xx comes back to the client as it is).

Prompt tokens: token-id prompts are counted exactly. Text is estimated at one token per 4 UTF-8
bytes (`estimate_text_tokens`; docs/router.md gives its measured error against real tokenizers),
or counted with the model's tokenizer when the router is given one (`load_tokenizer`). Chat adds 4
tokens per message for the role and template markers, and counts what the chat template renders
into the prompt besides plain content: text parts, an assistant's tool calls (name and
arguments), and the `tools` definitions.
"""

from __future__ import annotations

import importlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

BYTES_PER_TOKEN = 4.0
CHAT_TOKENS_PER_MESSAGE = 4


class RequestError(Exception):
    """A client error: status and a message that names the problem."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param


class _StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    include_usage: bool | None = None


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stream: bool | None = False
    stream_options: _StreamOptions | None = None


class CompletionBody(_Body):
    prompt: str | list[int] | list[str] | list[list[int]] = Field(min_length=1)


class _TextPart(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    type: str
    text: str | None = None


class _Function(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    name: str | None = None
    arguments: str | None = None


class _ToolCall(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    function: _Function | None = None


class _Message(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    role: str = Field(min_length=1)
    content: str | list[_TextPart] | None = None
    tool_calls: list[_ToolCall] | None = None


class ChatBody(_Body):
    messages: list[_Message] = Field(min_length=1)
    tools: list[dict[str, Any]] | None = None


@dataclass(frozen=True, slots=True)
class ParsedRequest:
    kind: Literal["completions", "chat"]
    prompt_tokens: int
    """All prompts of the request together (a batch of prompts goes to one replica)."""
    exact: bool
    """True when `prompt_tokens` is a count (token ids, or text through a real tokenizer), False
    when estimated."""
    longest_prompt_tokens: int
    max_tokens: int | None
    stream: bool


def estimate_text_tokens(text: str) -> int:
    return max(1, math.ceil(len(text.encode("utf-8")) / BYTES_PER_TOKEN))


def _describe(exc: ValidationError) -> tuple[str, str | None]:
    first = exc.errors(include_url=False)[0]
    where = ".".join(str(p) for p in first["loc"])
    if first["type"] == "json_invalid":
        return f"the body is not valid JSON: {first['msg']}", None
    if not where:
        return f"the body must be a JSON object ({first['msg']})", None
    return f"invalid field '{where}': {first['msg']}", where


def load_tokenizer(path: str) -> Callable[[str], int]:
    """A token counter from a Hugging Face `tokenizer.json` (the `tokenizers` package is optional:
    it comes with vLLM and transformers). Counts include the special tokens the tokenizer adds,
    as vLLM's completions endpoint does."""
    try:
        module: Any = importlib.import_module("tokenizers")
    except ImportError as exc:
        raise ValueError("--tokenizer needs the 'tokenizers' package installed") from exc
    try:
        tokenizer = module.Tokenizer.from_file(path)
    except Exception as exc:  # the library raises bare Exceptions for unreadable files
        raise ValueError(f"cannot load tokenizer {path}: {exc}") from exc

    def count(text: str) -> int:
        return max(1, len(tokenizer.encode(text).ids))

    return count


def _message_tokens(m: _Message, count: Callable[[str], int]) -> int:
    content = m.content
    texts = [content] if isinstance(content, str) else [p.text for p in content or () if p.text]
    for call in m.tool_calls or ():
        if call.function is not None:
            texts += [call.function.name or "", call.function.arguments or ""]
    return CHAT_TOKENS_PER_MESSAGE + sum(count(t) for t in texts if t)


def parse_request(
    kind: Literal["completions", "chat"],
    body: bytes,
    max_model_len: int | None = None,
    count_text: Callable[[str], int] | None = None,
) -> ParsedRequest:
    """Validate `body` and count its prompt tokens; raise `RequestError` (4xx) when it is bad.

    `count_text`: a real tokenizer's counter (`load_tokenizer`); then completion text prompts count
    as exact. Chat stays an estimate (the chat template's tokens are unknown here)."""
    text_exact = count_text is not None
    count = count_text or estimate_text_tokens
    if not body:
        raise RequestError(400, "the request body is empty; a JSON object is expected")
    model: type[_Body] = CompletionBody if kind == "completions" else ChatBody
    try:
        parsed: Any = model.model_validate_json(body)
    except ValidationError as exc:
        message, param = _describe(exc)
        raise RequestError(400, message, param) from None
    lengths: list[int]
    exact = True
    if isinstance(parsed, CompletionBody):
        prompt = parsed.prompt
        if isinstance(prompt, str):
            lengths, exact = [count(prompt)], text_exact
        # pydantic matched one list type of the union, so the first item tells which
        elif isinstance(prompt[0], int):
            lengths = [len(prompt)]
        elif isinstance(prompt[0], str):
            lengths, exact = [count(str(p)) for p in prompt], text_exact
        else:
            lengths = [len(p) for p in prompt if isinstance(p, list)]
            if any(n == 0 for n in lengths):
                raise RequestError(
                    400, "invalid field 'prompt': a token-id prompt is empty", "prompt"
                )
    else:
        assert isinstance(parsed, ChatBody)
        total = sum(_message_tokens(m, count) for m in parsed.messages)
        if parsed.tools:
            total += count(json.dumps(parsed.tools, separators=(",", ":")))
        lengths, exact = [total], False
    max_tokens = (
        parsed.max_tokens if parsed.max_tokens is not None else parsed.max_completion_tokens
    )
    longest = max(lengths)
    if exact and max_model_len is not None and longest + (max_tokens or 0) > max_model_len:
        raise RequestError(
            400,
            f"the prompt is {longest} tokens and max_tokens is {max_tokens or 0}: together more "
            f"than the model's maximum context length of {max_model_len} tokens",
            "prompt",
        )
    return ParsedRequest(
        kind=kind,
        prompt_tokens=sum(lengths),
        exact=exact,
        longest_prompt_tokens=longest,
        max_tokens=max_tokens,
        stream=parsed.stream is True,
    )
