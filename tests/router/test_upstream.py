"""The router's engine client (`halffull.router.upstream`) against raw TCP servers that answer
byte by byte as a test needs: keep-alive reuse, chunked streams, back pressure, and each way a
connection can fail, sorted by whether the request can have reached the engine."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable

import pytest

from halffull.router.failures import classify
from halffull.router.upstream import (
    MAX_BUFFERED,
    BodyBroken,
    ConnectFailed,
    ConnectTimeout,
    Disconnected,
    Upstream,
)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head, await reader.readexactly(length)


def run(handler: Handler, test: Callable[[str, list[bytes]], Awaitable[None]]) -> None:
    """Serve `handler` on a free port; `test(url, heads)` gets the request heads seen."""
    heads: list[bytes] = []

    async def main() -> None:
        connections = 0

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal connections
            connections += 1
            heads.append(b"connection %d" % connections)
            try:
                await handler(reader, writer)
            finally:
                writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            await test(f"http://127.0.0.1:{port}", heads)

    asyncio.run(main())


def answer(body: bytes, extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n%sContent-Length: %d\r\n\r\n%s"
        % (
            extra,
            len(body),
            body,
        )
    )


def test_one_connection_carries_request_after_request() -> None:
    async def engine(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                _, body = await read_request(reader)
            except asyncio.IncompleteReadError:
                return
            writer.write(answer(b'{"echo": %s}' % body, b"X-Engine: e1\r\nSet-Cookie: a\r\n"))

    async def test(url: str, heads: list[bytes]) -> None:
        pool = Upstream(connect_timeout_s=2.0)
        for i in range(3):
            resp = await pool.request(
                url, "POST", "/v1/completions", b"X-Request-Id: r\r\n", b"%d" % i
            )
            assert resp.status == 200
            assert resp.headers["X-Engine"] == "e1"
            assert await resp.read() == b'{"echo": %d}' % i
            resp.release()
        assert heads == [b"connection 1"]  # reused, not reconnected
        pool.close()

    run(engine, test)


def test_request_head_carries_host_length_and_given_headers() -> None:
    seen: list[bytes] = []

    async def engine(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head, body = await read_request(reader)
        seen.append(head + body)
        writer.write(answer(b"{}"))

    async def test(url: str, heads: list[bytes]) -> None:
        pool = Upstream(connect_timeout_s=2.0)
        resp = await pool.request(url, "POST", "/v1/chat/completions", b"X-A: 1\r\n", b"{}")
        await resp.read()
        resp.release()
        pool.close()
        host = url.removeprefix("http://").encode()
        assert seen == [
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: " + host
            + b"\r\nContent-Length: 2\r\nX-A: 1\r\n\r\n{}"
        ]  # fmt: skip

    run(engine, test)


def test_a_chunked_stream_arrives_as_it_is_sent() -> None:
    first_seen = asyncio.Event()

    async def engine(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n"
        )
        await writer.drain()
        await first_seen.wait()  # the second chunk only once the client has the first
        writer.write(b"6\r\nsecond\r\n0\r\n\r\n")

    async def test(url: str, heads: list[bytes]) -> None:
        pool = Upstream(connect_timeout_s=2.0)
        resp = await pool.request(url, "POST", "/v1/completions", b"", b"{}")
        assert resp.headers["Content-Type"] == "text/event-stream"
        got = []

        async def read() -> None:
            async for chunk in resp.chunks():
                got.append(chunk)
                first_seen.set()

        # a client that held the first chunk back for more would wait here forever
        await asyncio.wait_for(read(), timeout=10)
        assert got == [b"first", b"second"]
        resp.release()
        pool.close()

    run(engine, test)


def test_a_slow_reader_stops_the_engine_connection_being_read() -> None:
    total = 8 * MAX_BUFFERED

    async def engine(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total)
        writer.write(b"x" * total)
        await writer.drain()

    async def test(url: str, heads: list[bytes]) -> None:
        pool = Upstream(connect_timeout_s=2.0)
        resp = await pool.request(url, "POST", "/", b"", b"")
        async with asyncio.timeout(10):  # the engine writes all it can; nobody reads
            while not resp._conn.paused:  # noqa: ASYNC110  (a transport's pause has no event)
                await asyncio.sleep(0.01)
        assert resp._buffered < 2 * MAX_BUFFERED + 256 * 1024
        received = 0
        async for chunk in resp.chunks():
            received += len(chunk)
        assert received == total
        resp.release()
        pool.close()

    run(engine, test)


async def _refused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again: nothing listens there


def test_connect_failures_cannot_have_reached_the_engine() -> None:
    async def main() -> None:
        pool = Upstream(connect_timeout_s=2.0)
        port = await _refused_port()
        with pytest.raises(ConnectFailed) as refused:
            await pool.request(f"http://127.0.0.1:{port}", "POST", "/", b"", b"")
        assert (classify(refused.value).reason, classify(refused.value).retry) == ("connect", True)
        with pytest.raises(ConnectFailed) as dns:
            await pool.request("http://no-such-engine.invalid:8000", "POST", "/", b"", b"")
        assert dns.value.dns and classify(dns.value).reason == "dns"
        # a listener that never accepts, its queue full: the kernel drops further SYNs, so a
        # connect neither succeeds nor is refused (all on loopback)
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(0)
            fillers = [socket.socket() for _ in range(3)]
            try:
                for f in fillers:
                    f.setblocking(False)
                    with contextlib.suppress(BlockingIOError):
                        f.connect(listener.getsockname())
                short = Upstream(connect_timeout_s=0.3)
                with pytest.raises(ConnectTimeout) as slow:
                    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
                    await short.request(url, "POST", "/", b"", b"")
            finally:
                for f in fillers:
                    f.close()
        assert (classify(slow.value).reason, classify(slow.value).retry) == (
            "connect_timeout",
            True,
        )

    asyncio.run(main())


def test_a_close_before_the_answer_is_not_retried() -> None:
    async def engine(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)  # took the request, then went away

    async def test(url: str, heads: list[bytes]) -> None:
        pool = Upstream(connect_timeout_s=2.0)
        with pytest.raises(Disconnected) as exc:
            await pool.request(url, "POST", "/", b"", b"{}")
        failure = classify(exc.value)
        assert (failure.reason, failure.retry, failure.status) == ("disconnected", False, 502)

    run(engine, test)


@pytest.mark.parametrize(
    "answer_bytes",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nnot a chunk size",
    ],
)
def test_an_answer_cut_short_is_a_broken_body(answer_bytes: bytes) -> None:
    async def engine(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer_bytes)
        await writer.drain()

    async def test(url: str, heads: list[bytes]) -> None:
        pool = Upstream(connect_timeout_s=2.0)
        resp = await pool.request(url, "POST", "/", b"", b"")
        with pytest.raises(BodyBroken) as exc:
            await resp.read()
        assert classify(exc.value).reason == "body_broken"
        resp.close()

    run(engine, test)


def test_a_connection_the_engine_closed_while_idle_is_not_reused() -> None:
    async def engine(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer(b"{}", b"Connection: close\r\n"))

    async def test(url: str, heads: list[bytes]) -> None:
        pool = Upstream(connect_timeout_s=2.0)
        for _ in range(2):
            resp = await pool.request(url, "POST", "/", b"", b"")
            assert await resp.read() == b"{}"
            resp.release()
        assert heads == [b"connection 1", b"connection 2"]
        pool.close()

    run(engine, test)
