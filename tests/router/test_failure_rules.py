"""The pure rules of the proxy: which failures may be retried, which headers cross, timeouts."""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import pytest
from aiohttp.client_reqrep import ConnectionKey
from multidict import CIMultiDict

from halffull.router.failures import classify
from halffull.router.headers import engine_header_block, to_client, to_engine
from halffull.router.watchdog import Watchdog

KEY = ConnectionKey("engine", 8000, False, True, None, None, None)


@pytest.mark.parametrize(
    ("exc", "reason", "retry", "down"),
    [
        (aiohttp.ClientConnectorError(KEY, ConnectionRefusedError(111, "refused")),
         "connect", True, True),
        (aiohttp.ClientConnectorDNSError(KEY, socket.gaierror(-2, "Name or service not known")),
         "dns", True, True),
        (aiohttp.ConnectionTimeoutError("connect timeout"), "connect_timeout", True, False),
        (aiohttp.ServerDisconnectedError(), "disconnected", False, False),
        (aiohttp.ClientOSError(104, "reset by peer"), "reset", False, False),
        (ConnectionResetError(104, "reset"), "reset", False, False),
        (aiohttp.ClientPayloadError("truncated"), "body_broken", False, False),
        (aiohttp.SocketTimeoutError("read"), "upstream", False, False),
    ],
)  # fmt: skip
def test_only_failures_before_the_request_left_are_retried(
    exc: BaseException, reason: str, retry: bool, down: bool
) -> None:
    f = classify(exc)
    assert (f.reason, f.retry, f.down) == (reason, retry, down)
    assert f.status == (503 if retry else 502) and f.message


def test_end_to_end_headers_cross_hop_by_hop_and_client_key_do_not() -> None:
    inbound = [
        (k.encode(), v.encode()) for k, v in
        [("Host", "router"), ("Authorization", "Bearer client-key"), ("Connection", "X-Hop"),
         ("X-Hop", "1"), ("Keep-Alive", "timeout=5"), ("Content-Length", "12"),
         ("Content-Type", "application/json"), ("X-Request-Id", "r1"),
         ("traceparent", "00-ab-cd-01"), ("OpenAI-Organization", "org")]
    ]  # fmt: skip
    out = to_engine(inbound, None)
    assert out == {
        "Content-Type": "application/json", "X-Request-Id": "r1",
        "traceparent": "00-ab-cd-01", "OpenAI-Organization": "org",
    }  # fmt: skip
    assert to_engine(inbound, "engine-key")["Authorization"] == "Bearer engine-key"
    assert engine_header_block(inbound, "k") == (
        b"Content-Type: application/json\r\nX-Request-Id: r1\r\ntraceparent: 00-ab-cd-01\r\n"
        b"OpenAI-Organization: org\r\nAuthorization: Bearer k\r\n"
    )

    upstream = CIMultiDict(
        [("Content-Type", "text/event-stream"), ("Transfer-Encoding", "chunked"),
         ("Content-Length", "5"), ("Server", "uvicorn"), ("x-request-id", "r1"),
         ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")]
    )  # fmt: skip
    back = to_client(upstream)
    assert back.getall("Set-Cookie") == ["a=1", "b=2"]
    assert set(back.keys()) == {"Content-Type", "x-request-id", "Set-Cookie"}


def test_watchdog_bounds_the_first_byte_then_each_silence() -> None:
    async def quiet(dog: Watchdog, chunks: list[float]) -> str:
        try:
            for gap in chunks:
                await asyncio.sleep(gap)
                dog.activity()
            return "done"
        except asyncio.CancelledError:
            failure = dog.claimed()
            if failure is None:
                raise
            return failure.reason
        finally:
            dog.stop()

    async def run(first: float, idle: float, chunks: list[float]) -> str:
        async def body() -> str:
            return await quiet(Watchdog(first, idle), chunks)

        return await asyncio.create_task(body())

    async def main() -> None:
        assert await run(0.05, 0.05, [0.2]) == "first_byte_timeout"
        assert await run(0.5, 0.05, [0.01, 0.01, 0.2]) == "stream_idle_timeout"
        assert await run(0.5, 0.2, [0.01, 0.05, 0.05, 0.05]) == "done"

        # a cancellation that is not the watchdog's goes through untouched
        async def cancelled_by_client() -> str:
            return await quiet(Watchdog(5, 5), [5])

        task = asyncio.create_task(cancelled_by_client())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
