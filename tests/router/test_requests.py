"""Request validation and prompt-token counting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from halffull.router.requests import (
    RequestError,
    estimate_text_tokens,
    load_tokenizer,
    parse_request,
)


def body(obj: object) -> bytes:
    return json.dumps(obj).encode()


def test_token_ids_are_counted_exactly() -> None:
    p = parse_request("completions", body({"prompt": list(range(37)), "max_tokens": 5}))
    assert (p.prompt_tokens, p.exact, p.max_tokens, p.stream) == (37, True, 5, False)


def test_batch_of_token_prompts_sums() -> None:
    p = parse_request("completions", body({"prompt": [[1, 2, 3], [4] * 10], "stream": True}))
    assert (p.prompt_tokens, p.longest_prompt_tokens, p.exact, p.stream) == (13, 10, True, True)


def test_text_is_estimated_at_four_bytes_per_token() -> None:
    p = parse_request("completions", body({"prompt": "x" * 400}))
    assert (p.prompt_tokens, p.exact) == (100, False)
    assert estimate_text_tokens("é") == 1  # 2 bytes, rounded up


def test_chat_counts_contents_and_per_message_overhead() -> None:
    msgs = [
        {"role": "system", "content": "a" * 40},
        {"role": "user", "content": [{"type": "text", "text": "b" * 80}]},
    ]
    p = parse_request("chat", body({"messages": msgs, "max_completion_tokens": 9}))
    assert (p.prompt_tokens, p.exact, p.max_tokens) == (10 + 4 + 20 + 4, False, 9)


def test_chat_accepts_and_counts_what_vllm_accepts() -> None:
    """Roles, content parts, an assistant turn with tool calls and no content, a tool result,
    tools and response_format: all accepted; tool calls and tool definitions count as prompt."""
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    msgs = [
        {"role": "developer", "content": "d" * 40},
        {"role": "system", "content": [{"type": "text", "text": "s" * 40}]},
        {"role": "user", "content": [{"type": "text", "text": "u" * 40},
                                     {"type": "image_url", "image_url": {"url": "data:,"}}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "ffff", "arguments": "a" * 36}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "r" * 40},
    ]  # fmt: skip
    p = parse_request(
        "chat",
        body({"messages": msgs, "tools": tools, "response_format": {"type": "json_object"},
              "max_completion_tokens": 9}),
    )  # fmt: skip
    tools_tokens = estimate_text_tokens(json.dumps(tools, separators=(",", ":")))
    assert p.prompt_tokens == 5 * 4 + 4 * 10 + (1 + 9) + tools_tokens
    assert p.max_tokens == 9


def test_too_long_token_prompt_is_refused_with_its_numbers() -> None:
    with pytest.raises(RequestError) as err:
        parse_request("completions", body({"prompt": [1] * 500, "max_tokens": 20}), 512)
    assert err.value.status == 400 and "500" in err.value.message and "512" in err.value.message
    # exactly at the limit is fine
    parse_request("completions", body({"prompt": [1] * 492, "max_tokens": 20}), 512)


@pytest.mark.parametrize(
    ("kind", "raw", "needle"),
    [
        ("completions", b"", "empty"),
        ("completions", b"{", "not valid JSON"),
        ("completions", b"[1, 2]", "JSON object"),
        ("completions", body({}), "prompt"),
        ("completions", body({"prompt": []}), "prompt"),
        ("completions", body({"prompt": ""}), "prompt"),
        ("completions", body({"prompt": [1, "a"]}), "prompt"),
        ("completions", body({"prompt": [[1], []]}), "prompt"),
        ("completions", body({"prompt": 5}), "prompt"),
        ("completions", body({"prompt": "x", "max_tokens": 0}), "max_tokens"),
        ("completions", body({"prompt": "x", "max_tokens": 1.5}), "max_tokens"),
        ("completions", body({"prompt": "x", "max_tokens": "3"}), "max_tokens"),
        ("completions", body({"prompt": "x", "stream": "yes"}), "stream"),
        ("completions", body({"prompt": "x", "stream_options": []}), "stream_options"),
        ("completions", body({"prompt": "x", "model": 3}), "model"),
        ("chat", body({"messages": []}), "messages"),
        ("chat", body({"messages": [{"content": "hi"}]}), "role"),
        ("chat", body({"messages": [{"role": "user", "content": 7}]}), "content"),
        ("chat", body({"prompt": "x"}), "messages"),
    ],
)
def test_malformed_bodies_name_the_problem(kind: str, raw: bytes, needle: str) -> None:
    with pytest.raises(RequestError) as err:
        parse_request(kind, raw)  # type: ignore[arg-type]
    assert err.value.status == 400
    assert needle in err.value.message


def test_a_real_tokenizer_counts_text_exactly(tmp_path: Path) -> None:
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {"[UNK]": 0, "hello": 1, "world": 2, "again": 3}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    count = load_tokenizer(str(path))
    p = parse_request("completions", body({"prompt": "hello world again xyz"}), None, count)
    assert (p.prompt_tokens, p.exact) == (4, True)
    with pytest.raises(RequestError) as err:  # text can now be refused for length too
        parse_request("completions", body({"prompt": "hello " * 10, "max_tokens": 3}), 12, count)
    assert "10 tokens" in err.value.message
    chat = parse_request(
        "chat", body({"messages": [{"role": "user", "content": "hello"}]}), None, count
    )
    assert (chat.prompt_tokens, chat.exact) == (1 + 4, False)  # the template stays an estimate
    with pytest.raises(ValueError, match="cannot load tokenizer"):
        load_tokenizer(str(tmp_path / "missing.json"))
