"""The public port's own HTTP/1.1 server (`router/server.py`), byte by byte on raw sockets:
keep-alive, pipelining, HTTP/1.0, Expect: 100-continue, chunked request bodies, the body bound,
malformed HTTP, unknown routes and methods, all answered as JSON errors where they fail."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

from router_helpers import make_settings, running_router, wait_for

from halffull.router.app import Router
from halffull.sim.profiles import StepModel
from halffull_dev.testing.fake_engine import FakeEngine

BODY = json.dumps({"model": "fake-model", "prompt": [1, 2, 3], "max_tokens": 2}).encode()


def post(body: bytes = BODY, path: str = "/v1/completions", extra: bytes = b"") -> bytes:
    return (
        b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n%s\r\n%s" % (path.encode(), len(body), extra, body)
    )


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One answer: status, headers (lower-case names), body (Content-Length or chunked)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        return status, headers, await reader.readexactly(int(headers["content-length"]))
    body = b""
    if headers.get("transfer-encoding") == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                return status, headers, body
            body += chunk[:-2]
    return status, headers, await reader.read()


def with_router(
    test: Callable[[Router, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    **kw: object,
) -> None:
    async def main() -> None:
        async with FakeEngine() as fake, running_router(make_settings([fake.url]), **kw) as r:
            reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
            try:
                await test(r, reader, writer)
            finally:
                writer.close()

    asyncio.run(main())


def test_keep_alive_and_pipelined_requests_answer_in_order() -> None:
    async def test(r: Router, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        one = post(json.dumps({"prompt": [1], "max_tokens": 1}).encode())
        three = post(json.dumps({"prompt": [1], "max_tokens": 3}).encode())
        writer.write(one + three + post(b"{", path="/v1/chat/completions"))
        statuses = []
        for want in (1, 3):
            status, headers, body = await read_answer(reader)
            statuses.append(status)
            assert json.loads(body)["usage"]["completion_tokens"] == want
            assert headers["server"] == "halffull-router" and "date" in headers
        status, headers, body = await read_answer(reader)
        assert status == 400 and headers["content-type"].startswith("application/json")
        assert json.loads(body)["error"]["code"] == 400
        assert statuses == [200, 200]

    with_router(test)


def test_streams_are_chunked_and_http10_gets_a_closed_connection() -> None:
    async def test(r: Router, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        body = json.dumps({"prompt": [1, 2], "max_tokens": 3, "stream": True}).encode()
        writer.write(post(body))
        status, headers, data = await read_answer(reader)
        assert status == 200 and headers["transfer-encoding"] == "chunked"
        assert data.rstrip().endswith(b"data: [DONE]")
        reader2, writer2 = await asyncio.open_connection("127.0.0.1", r.port)
        writer2.write(post(body).replace(b"HTTP/1.1", b"HTTP/1.0", 1))
        status, headers, data = await read_answer(reader2)  # read to EOF: the server closes
        assert status == 200 and headers["connection"] == "close"
        assert "transfer-encoding" not in headers and data.rstrip().endswith(b"data: [DONE]")
        writer2.close()

    with_router(test)


def test_expect_continue_and_a_chunked_request_body() -> None:
    async def test(r: Router, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(post(extra=b"Expect: 100-continue\r\n").split(b"\r\n\r\n")[0] + b"\r\n\r\n")
        assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(BODY)
        assert (await read_answer(reader))[0] == 200
        half = len(BODY) // 2
        writer.write(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n"
            % (half, BODY[:half], len(BODY) - half, BODY[half:])
        )
        status, _, body = await read_answer(reader)
        assert status == 200 and json.loads(body)["usage"]["completion_tokens"] == 2

    with_router(test)


def test_the_body_bound_holds_for_declared_and_chunked_bodies() -> None:
    async def test(r: Router, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        big = json.dumps({"prompt": "x" * 3000, "max_tokens": 1}).encode()
        writer.write(post(big))
        status, _, body = await read_answer(reader)
        assert status == 413 and "too large" in json.loads(body)["error"]["message"]
        pieces = [big[i : i + 500] for i in range(0, len(big), 500)]
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces)
        writer.write(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            + chunks
            + b"0\r\n\r\n"
        )
        assert (await read_answer(reader))[0] == 413
        writer.write(post())  # the connection still serves
        assert (await read_answer(reader))[0] == 200

    with_router(test, max_body_bytes=2048)


def test_unknown_routes_methods_and_malformed_http_get_json_errors() -> None:
    async def test(r: Router, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, body = await read_answer(reader)
        assert status == 404 and json.loads(body)["error"]["code"] == 404
        writer.write(b"GET /v1/completions HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, body = await read_answer(reader)
        assert status == 405 and headers["allow"] == "POST"
        assert json.loads(body)["error"]["code"] == 405
        writer.write(b"HEAD /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")  # a head and no body
        assert head.startswith(b"HTTP/1.1 200 ")
        writer.write(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, body = await read_answer(reader)
        assert status == 200 and json.loads(body)["data"][0]["id"] == "fake-model"

        reader2, writer2 = await asyncio.open_connection("127.0.0.1", r.port)
        writer2.write(b"NOT HTTP AT ALL\r\n\r\n")
        status, headers, body = await read_answer(reader2)
        assert status == 400 and headers["connection"] == "close"
        assert "malformed" in json.loads(body)["error"]["message"]
        assert await reader2.read() == b""  # closed
        writer2.close()

    with_router(test)


def test_a_client_that_goes_away_cancels_its_request() -> None:
    async def main() -> None:
        async with (
            FakeEngine(step_model=StepModel.flat(0.02)) as fake,
            running_router(make_settings([fake.url])) as r,
        ):
            reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
            body = json.dumps({"prompt": [1], "max_tokens": 500, "stream": True}).encode()
            writer.write(post(body))
            await reader.readuntil(b"data: ")  # streaming
            ep = next(iter(r.endpoints.values()))
            assert ep.inflight_requests == 1
            writer.close()
            await wait_for(lambda: ep.inflight_requests == 0, "the request to end")
            assert r.metrics.disconnects._value.get() == 1

    asyncio.run(main())


def test_a_half_closed_client_gets_its_answer_then_the_close() -> None:
    async def test(r: Router, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(post())
        writer.write_eof()
        status, _, body = await read_answer(reader)
        assert status == 200 and json.loads(body)["usage"]["completion_tokens"] == 2
        assert await asyncio.wait_for(reader.read(), 10) == b""

    with_router(test)


def test_an_idle_connection_is_still_served_after_the_listener_closes() -> None:
    """A stopping router leaves idle keep-alive connections to their clients: closing them
    would race with a request being written on one (see `LeanServer.wind_down`). A request that
    comes on one after the listener closed is answered, with `Connection: close`."""

    async def test(r: Router, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(post())
        status, headers, _ = await read_answer(reader)
        assert status == 200 and headers.get("connection") != "close"  # kept alive, now idle
        stopping = asyncio.create_task(r.stop())

        async def refused() -> bool:
            try:
                _, w = await asyncio.open_connection("127.0.0.1", r.port)
            except OSError:
                return True
            w.close()
            return False

        for _ in range(200):  # until the listener is closed
            if await refused():
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the listener never closed")
        assert not stopping.done()  # waiting for this client's connection
        writer.write(post())
        status, headers, body = await read_answer(reader)
        assert status == 200 and headers["connection"] == "close"
        assert json.loads(body)["usage"]["completion_tokens"] == 2
        assert await asyncio.wait_for(reader.read(), 10) == b""
        await asyncio.wait_for(stopping, 10)  # the last connection gone, the drain ends

    with_router(test)
