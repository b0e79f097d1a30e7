"""The public port's HTTP/1.1 server: one asyncio protocol per connection, parsed by httptools.

Why not aiohttp's server: profiled under a closed loop (`bench/router_overhead.py`, py-spy on
the router), aiohttp's request objects, middleware chain and response writer took about 40% of
the router's CPU per proxied request once the engine client had been replaced (`upstream.py`).
The public port needs little of it: three routes, bodies read whole (bounded), answers either
whole or relayed chunk by chunk. Here a request is the parser's callbacks filling one `Request`,
the handler runs as one task per request, and an answer is one write (or one write per chunk).

Kept from aiohttp's behaviour: keep-alive (HTTP/1.1 by default, HTTP/1.0 on request),
pipelined requests answered in order, `Expect: 100-continue`, a body bound answered with 413,
chunked request bodies, the handler cancelled when its client goes away, back pressure on
streamed answers (writes wait while the client's socket buffer is full), idle keep-alive
connections closed after `KEEPALIVE_S`. Malformed HTTP gets a 400 in the router's JSON shape and
the connection closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus

import httptools

from halffull.router.http_errors import error_body

log = logging.getLogger("halffull.router")

KEEPALIVE_S = 75.0
"""Idle keep-alive connections are closed after this long (aiohttp's default)."""
MAX_PIPELINED = 16
"""Requests parsed ahead of the one being answered before the connection stops being read."""
_REASONS = {s.value: s.phrase.encode("latin-1") for s in HTTPStatus}
_SERVER = b"halffull-router"


@dataclass(slots=True)
class Request:
    """One parsed request: the body is read whole before the handler runs."""

    method: str
    path: str
    raw_headers: list[tuple[bytes, bytes]]
    body: bytes
    keep_alive: bool
    http10: bool
    too_large: bool
    """The body was over the bound and was discarded (`body` is empty)."""

    def header(self, name: bytes) -> str | None:
        """The first value of a header (`name` in lower case)."""
        for key, value in self.raw_headers:
            if key.lower() == name:
                return value.decode("latin-1")
        return None


@dataclass(slots=True)
class Answer:
    """A whole answer: status, end-to-end headers and body."""

    status: int
    body: bytes
    headers: Iterable[tuple[str, str]] = ()


def json_answer(
    status: int,
    message: str,
    kind: str | None = None,
    *,
    param: str | None = None,
    retry_after: int | None = None,
) -> Answer:
    """An error in OpenAI's JSON shape (see `http_errors.error_body`)."""
    headers = [("Content-Type", "application/json; charset=utf-8")]
    if retry_after is not None:
        headers.append(("Retry-After", str(retry_after)))
    return Answer(status, error_body(status, message, kind, param), headers)


Handler = Callable[["Request", "Stream"], Awaitable["Answer | None"]]
"""Answers whole (returns an `Answer`) or streams through the `Stream` (returns None)."""


_date_cache: list[object] = [0, b""]


def _date() -> bytes:
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[0] = now
        _date_cache[1] = formatdate(now, usegmt=True).encode("ascii")
    return _date_cache[1]  # type: ignore[return-value]


def _head(status: int, headers: Iterable[tuple[str, str]], close: bool, framing: bytes) -> bytes:
    parts = [
        b"HTTP/1.1 %d %s\r\nServer: %s\r\nDate: %s\r\n"
        % (status, _REASONS.get(status, b"Unknown"), _SERVER, _date())
    ]
    for name, value in headers:
        parts.append(f"{name}: {value}\r\n".encode("latin-1"))
    if close:
        parts.append(b"Connection: close\r\n")
    parts.append(framing)
    return b"".join(parts)


class Stream:
    """The answer of the request being handled, relayed as it comes (chunked transfer coding;
    HTTP/1.0 clients get the raw body and the connection closes at its end)."""

    __slots__ = ("_conn", "_request", "ended", "started")

    def __init__(self, conn: HttpConnection, request: Request) -> None:
        self._conn = conn
        self._request = request
        self.started = False
        self.ended = False

    def client_gone(self) -> bool:
        return self._conn.closing()

    def start(self, status: int, headers: Iterable[tuple[str, str]]) -> None:
        conn, request = self._conn, self._request
        close = conn.must_close(request)
        if request.http10:  # no chunked coding: the end of the body is the end of the connection
            framing = b"\r\n"
            close = True
        else:
            framing = b"Transfer-Encoding: chunked\r\n\r\n"
        self.started = True
        request.keep_alive = not close
        conn.write(_head(status, headers, close, framing))

    async def write(self, data: bytes) -> None:
        """One chunk; waits while the client is not reading. ConnectionResetError once the
        client has gone."""
        conn = self._conn
        if conn.closing():
            raise ConnectionResetError("the client closed the connection")
        if not data:
            return
        if self._request.http10:
            conn.write(data)
        else:
            conn.write(b"%x\r\n%b\r\n" % (len(data), data))
        if conn.write_paused:
            await conn.drain()

    def end(self) -> None:
        if self.ended:
            return
        self.ended = True
        if not self._request.http10 and not self._conn.closing():
            self._conn.write(b"0\r\n\r\n")


class LeanServer:
    """The listener's shared state: the handler, the body bound, the open connections."""

    def __init__(
        self, handler: Handler, *, max_body_bytes: int, draining: Callable[[], bool]
    ) -> None:
        self.handler = handler
        self.max_body_bytes = max_body_bytes
        self.draining = draining
        """While true, every answer closes its connection."""
        self.connections: set[HttpConnection] = set()
        self._server: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._none_left: asyncio.Event | None = None

    async def start(self, host: str, port: int) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: HttpConnection(self), host, port, reuse_address=True, backlog=1024
        )
        self._sweeper = loop.call_later(KEEPALIVE_S / 4, self._sweep)
        sockets = self._server.sockets or ()
        return int(sockets[0].getsockname()[1]) if sockets else port

    def _sweep(self) -> None:
        oldest = time.monotonic() - KEEPALIVE_S
        for conn in list(self.connections):
            if conn.idle() and conn.last_active < oldest:
                conn.close()
        self._sweeper = asyncio.get_running_loop().call_later(KEEPALIVE_S / 4, self._sweep)

    def stop_listening(self) -> None:
        """No new connections. Those already open are still served (while `draining`, each
        answer closes its connection): see `wind_down`."""
        if self._server is not None:
            self._server.close()

    async def wind_down(self, limit_s: float) -> None:
        """After `stop_listening`, wait until no connection is left (or `limit_s` passed).

        Connections still open keep being served, each answer closing its connection (see
        `draining`). Idle ones are not closed from here: HTTP/1.1 cannot tell a client that an
        idle connection is going away, and closing it races with a request the client may be
        writing on it right then, which then fails without having reached us (a rolling update
        at 100 req/s lost 90 requests that way). Clients drop idle connections on their own
        keep-alive timeout, shorter than ours by convention (5-15 s in httpx and aiohttp), and
        the usual sweep closes any left after `KEEPALIVE_S`."""
        if not self.connections:
            return
        self._none_left = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._none_left.wait(), limit_s)

    def forget(self, conn: HttpConnection) -> None:
        """`conn` has closed."""
        self.connections.discard(conn)
        if not self.connections and self._none_left is not None:
            self._none_left.set()

    def close(self) -> None:
        """Every connection closes now (their handlers are cancelled)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        self.stop_listening()
        for conn in list(self.connections):
            conn.close()


class HttpConnection(asyncio.Protocol):
    """One client connection: requests parsed as bytes arrive, answered one at a time in
    order."""

    def __init__(self, server: LeanServer) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.pending: deque[Request] = deque()
        self.task: asyncio.Task[None] | None = None
        self.write_paused = False
        self.read_paused = False
        self._drain: asyncio.Future[None] | None = None
        self._closed = False
        self._eof = False
        self.last_active = time.monotonic()
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._size = 0
        self._too_large = False

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport
        self.server.connections.add(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(400, "protocol upgrades are not supported")
        except httptools.HttpParserError as exc:
            self._refuse(400, f"malformed HTTP request: {exc}")

    def eof_received(self) -> bool:
        # a client that half-closes after its request still gets the answer, then the close
        self._eof = True
        return self.task is not None or bool(self.pending)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self.server.forget(self)
        self.pending.clear()
        if self.task is not None:
            self.task.cancel()
        self._wake_drain()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._wake_drain()

    # -- httptools callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._body = []
        self._size = 0
        self._too_large = False

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        length = None
        expect = False
        for name, value in self._headers:
            low = name.lower()
            if low == b"content-length":
                with contextlib.suppress(ValueError):
                    length = int(value)
            elif low == b"expect" and value.lower() == b"100-continue":
                expect = True
        if length is not None and length > self.server.max_body_bytes:
            self._too_large = True
        elif expect and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        if self._too_large:
            return
        self._size += len(body)
        if self._size > self.server.max_body_bytes:
            self._too_large = True
            self._body = []
        else:
            self._body.append(body)

    def on_message_complete(self) -> None:
        parser = self.parser
        path = self._url.split(b"?", 1)[0].decode("latin-1")
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        request = Request(
            parser.get_method().decode("latin-1"),
            path,
            self._headers,
            body,
            parser.should_keep_alive(),
            parser.get_http_version() == "1.0",
            self._too_large,
        )
        self._body = []
        self.pending.append(request)
        if self.task is None:
            self._next()
        elif len(self.pending) > MAX_PIPELINED and self.transport is not None:
            self.read_paused = True
            self.transport.pause_reading()

    # -- answering -----------------------------------------------------------------------------

    def _next(self) -> None:
        request = self.pending.popleft()
        self.task = self.loop.create_task(self._run(request))
        if self.read_paused and len(self.pending) <= MAX_PIPELINED and self.transport is not None:
            self.read_paused = False
            self.transport.resume_reading()

    async def _run(self, request: Request) -> None:
        stream = Stream(self, request)
        try:
            try:
                answer = await self.server.handler(request, stream)
            except Exception:
                log.exception("unexpected error on %s %s", request.method, request.path)
                answer = None if stream.started else json_answer(500, "internal router error")
            if answer is not None:
                self.send(request, answer)
            else:
                stream.end()
        except asyncio.CancelledError:
            self._closed = True  # cancelled: the client went away, or the server is closing
        finally:
            self.task = None
            self.last_active = time.monotonic()
            if self.pending and not self._closed and request.keep_alive:
                self._next()
            elif self._closed or self._eof or not request.keep_alive:
                self.close()

    def send(self, request: Request, answer: Answer) -> None:
        close = self.must_close(request)
        request.keep_alive = not close
        body = answer.body
        framing = b"Content-Length: %d\r\n\r\n" % len(body)
        head = _head(answer.status, answer.headers, close, framing)
        self.write(head if request.method == "HEAD" else head + body)

    def must_close(self, request: Request) -> bool:
        return not request.keep_alive or self.server.draining()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self._closed:
            self.transport.write(data)

    async def drain(self) -> None:
        while self.write_paused and not self._closed:
            self._drain = self.loop.create_future()
            try:
                await self._drain
            finally:
                self._drain = None

    def _wake_drain(self) -> None:
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def _refuse(self, status: int, message: str) -> None:
        """Malformed input: answer (unless an answer is in progress) and close."""
        if self.task is None and not self._closed:
            answer = json_answer(status, message)
            length = b"Content-Length: %d\r\n\r\n" % len(answer.body)
            self.write(_head(status, answer.headers, True, length) + answer.body)
        self.pending.clear()
        self.close()

    def idle(self) -> bool:
        return self.task is None and not self.pending

    def closing(self) -> bool:
        return self._closed or self.transport is None or self.transport.is_closing()

    def close(self) -> None:
        self._closed = True
        if self.transport is not None:
            self.transport.close()
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()
