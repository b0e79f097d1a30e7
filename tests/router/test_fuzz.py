"""Property-based: generated malformed requests get 4xx JSON errors; the router keeps serving."""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from router_helpers import make_settings

from halffull.router.app import Router
from halffull_dev.testing.fake_engine import DEFAULT_SHAPE, FakeEngine

MAX_BODY = 64 * 1024
MAX_MODEL_LEN = 512


class _Served:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.port = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self._stop: asyncio.Event | None = None

    def _run(self) -> None:
        self.loop.run_until_complete(self._main())

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        shape = replace(DEFAULT_SHAPE, max_model_len=MAX_MODEL_LEN)
        async with FakeEngine(shape=shape) as fake:
            router = Router(
                make_settings([fake.url], max_model_len=MAX_MODEL_LEN), max_body_bytes=MAX_BODY
            )
            await router.start("127.0.0.1", 0, 0)
            self.port = router.port
            self.ready.set()
            await self._stop.wait()
            await router.stop()

    def stop(self) -> None:
        assert self._stop is not None
        self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(30)


@pytest.fixture(scope="module")
def router_port() -> Iterator[int]:
    served = _Served()
    served.thread.start()
    assert served.ready.wait(30)
    yield served.port
    served.stop()


def post(port: int, path: str, body: bytes) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


json_scalar = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20)
)
json_value = st.recursive(
    json_scalar,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)
bad_prompt = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.just(""),
    st.just([]),
    st.lists(st.one_of(st.floats(allow_nan=False), st.none(), st.booleans()), min_size=1),
    st.dictionaries(st.text(max_size=5), json_scalar, max_size=3),
    st.lists(st.integers(0, 100), min_size=MAX_MODEL_LEN + 1, max_size=MAX_MODEL_LEN + 50),
)
bad_max_tokens = st.one_of(
    st.integers(max_value=0), st.floats(allow_nan=False), st.text(max_size=5), st.lists(json_scalar)
)
not_bool = st.one_of(st.integers(), st.text(max_size=5), st.lists(json_scalar, max_size=2))
bad_messages: st.SearchStrategy[Any] = st.one_of(
    st.just([]),
    json_scalar,
    st.lists(
        st.one_of(
            json_scalar,
            st.fixed_dictionaries({"content": st.text(max_size=5)}),
            st.fixed_dictionaries(
                {"role": st.text(min_size=1, max_size=5), "content": st.integers()}
            ),
        ),
        min_size=1,
        max_size=3,
    ),
)


@st.composite
def malformed(draw: st.DrawFn) -> tuple[str, bytes]:
    path = draw(st.sampled_from(["/v1/completions", "/v1/chat/completions"]))
    chat = path.endswith("chat/completions")
    kind = draw(st.sampled_from(["bytes", "not-object", "bad-field", "missing", "oversized"]))
    if kind == "bytes":
        raw = draw(st.binary(max_size=200))
        try:  # keep only byte strings that are not a JSON object
            if isinstance(json.loads(raw), dict):
                raw = b"{" + raw
        except (ValueError, UnicodeDecodeError):
            pass
        return path, raw
    if kind == "not-object":
        value = draw(json_value.filter(lambda v: not isinstance(v, dict)))
        return path, json.dumps(value).encode()
    good: dict[str, Any] = (
        {"messages": [{"role": "user", "content": "hi"}]} if chat else {"prompt": [1, 2, 3]}
    )
    if kind == "missing":
        partial = draw(
            st.dictionaries(st.sampled_from(["model", "max_tokens", "foo"]), json_scalar)
        )
        return path, json.dumps(partial).encode()
    if kind == "oversized":
        return path, json.dumps({**good, "pad": "x" * MAX_BODY}).encode()
    field = draw(st.sampled_from(["main", "max_tokens", "stream", "stream_options", "model"]))
    body: dict[str, Any] = dict(good)
    if field == "main":
        body["messages" if chat else "prompt"] = draw(bad_messages if chat else bad_prompt)
    elif field == "max_tokens":
        body["max_tokens"] = draw(bad_max_tokens)
    elif field == "stream":
        body["stream"] = draw(not_bool)
    elif field == "stream_options":
        body["stream_options"] = draw(st.one_of(not_bool, st.just({"include_usage": 3})))
    else:
        body["model"] = draw(st.one_of(st.integers(), st.lists(json_scalar, max_size=2)))
    return path, json.dumps(body).encode()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(req=malformed())
def test_malformed_requests_get_4xx_json(router_port: int, req: tuple[str, bytes]) -> None:
    path, body = req
    status, payload = post(router_port, path, body)
    assert 400 <= status < 500, (status, payload[:200])
    error = json.loads(payload)["error"]
    assert error["code"] == status and error["message"]


def test_valid_request_after_fuzzing(router_port: int) -> None:
    """Runs after the fuzz test (file order): the router still serves."""
    status, payload = post(
        router_port, "/v1/completions", json.dumps({"prompt": [1, 2], "max_tokens": 2}).encode()
    )
    assert status == 200
    assert json.loads(payload)["usage"]["completion_tokens"] == 2
