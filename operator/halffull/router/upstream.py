"""The router's client to its engines: keep-alive HTTP/1.1 connections, one write per request.

Why not aiohttp's client: profiled under load (`bench/router_overhead.py`, py-spy and cProfile
on a CPU clock), building and tracking aiohttp's request and response objects took about half
of the router's CPU per proxied request, more than everything else the router does for it. Here
a request is one pre-serialised write on a pooled connection, and the answer is parsed by
`httptools` (llhttp, the parser Node.js uses) as its bytes arrive. The polls and the rare
`/v1/models` call keep using aiohttp.

What the proxy needs from a failure is whether the request can have reached the engine (see
`failures.py`), so the errors here say exactly that: `ConnectFailed` and `ConnectTimeout` happen
before a byte is written; `Disconnected` and `BodyBroken` after.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import httptools
from multidict import CIMultiDict

MAX_BUFFERED = 256 * 1024
"""Bytes of a streamed answer held before the engine connection stops being read (back
pressure: a slow client slows its engine connection, not the router's memory)."""


class UpstreamError(Exception):
    """A request to an engine failed; the subclass says how far it got."""


class ConnectFailed(UpstreamError):
    """No connection: refused, unreachable, or (`dns`) a name that does not resolve."""

    def __init__(self, message: str, *, dns: bool = False) -> None:
        super().__init__(message)
        self.dns = dns


class ConnectTimeout(UpstreamError):
    """The TCP (and TLS) connect did not finish within the connect bound."""


class Disconnected(UpstreamError):
    """The connection ended before a complete answer head (the request may have run)."""


class BodyBroken(UpstreamError):
    """The connection ended, or the engine sent bytes that are not HTTP, inside the answer."""


@dataclass(frozen=True, slots=True)
class Origin:
    """Where one endpoint's connections go: parsed once per endpoint URL."""

    host: str
    port: int
    tls: bool
    authority: bytes
    """The Host header value."""


def origin_of(url: str) -> Origin:
    parts = urlsplit(url)
    tls = parts.scheme == "https"
    host = parts.hostname or ""
    port = parts.port or (443 if tls else 80)
    return Origin(host, port, tls, parts.netloc.encode("ascii"))


class Response:
    """An engine's answer: status and headers once the head is in, then its body, read whole or
    as it arrives. `release()` (complete) or `close()` (otherwise) ends it."""

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn
        self.status = 0
        self.header_list: list[tuple[str, str]] = []
        """The answer's headers in order, as received."""
        self._headers: CIMultiDict[str] | None = None
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._done = False
        self._error: UpstreamError | None = None
        self._waiter: asyncio.Future[None] | None = None

    @property
    def headers(self) -> CIMultiDict[str]:
        """The headers by (case-insensitive) name; built on first use."""
        if self._headers is None:
            self._headers = CIMultiDict(self.header_list)
        return self._headers

    def header(self, name: str) -> str | None:
        """The first value of a header, without building the multidict."""
        low = name.lower()
        for key, value in self.header_list:
            if key.lower() == low:
                return value
        return None

    # -- fed by the connection ---------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > MAX_BUFFERED:
            self._conn.pause()
        self._wake()

    def _finish(self, error: UpstreamError | None = None) -> None:
        if not self._done:
            self._done = True
            self._error = error
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self) -> None:
        self._waiter = self._conn.loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    # -- for the proxy -----------------------------------------------------------------------

    @property
    def complete(self) -> bool:
        return self._done and self._error is None

    async def read(self) -> bytes:
        """The whole body."""
        while not self._done:
            await self._wait()
        if self._error is not None:
            raise self._error
        data = b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        return data

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives (decoded from chunked transfer coding)."""
        while True:
            if self._chunks:
                data = b"".join(self._chunks)
                self._chunks.clear()
                self._buffered = 0
                self._conn.resume()
                yield data
                continue
            if self._done:
                if self._error is not None:
                    raise self._error
                return
            await self._wait()

    def release(self) -> None:
        """The answer was read whole: its connection may carry the next request."""
        self._conn.finished(self)

    def close(self) -> None:
        """The answer was not read whole: its connection cannot be reused."""
        self._conn.abort()


class _Connection(asyncio.Protocol):
    """One connection to an engine, carrying one request at a time."""

    def __init__(self, pool: Upstream, origin: Origin) -> None:
        self.pool = pool
        self.origin = origin
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: Response | None = None
        self.head: asyncio.Future[Response] | None = None
        self.closed = False
        self.keep_alive = True
        self.paused = False
        self.idle_since = 0.0
        self._name = b""

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(BodyBroken(f"the replica's answer is not valid HTTP: {exc}"))
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        detail = f": {exc}" if exc else ""
        if self.head is not None and not self.head.done():
            self._fail(Disconnected(f"the replica closed the connection before answering{detail}"))
        elif self.response is not None:
            self._fail(BodyBroken(f"the replica broke off its answer{detail}"))

    # -- httptools callbacks ---------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.response is not None
        self.response.header_list.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        response = self.response
        assert response is not None and self.head is not None
        response.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()
        if not self.head.done():
            self.head.set_result(response)

    def on_body(self, body: bytes) -> None:
        assert self.response is not None
        self.response._feed(body)

    def on_message_complete(self) -> None:
        assert self.response is not None
        self.response._finish()

    # -- requests --------------------------------------------------------------------------------

    def send(self, data: bytes) -> asyncio.Future[Response]:
        assert self.transport is not None
        self.response = Response(self)
        self.head = self.loop.create_future()
        self.transport.write(data)
        return self.head

    def _fail(self, error: UpstreamError) -> None:
        if self.head is not None and not self.head.done():
            self.head.set_exception(error)
        elif self.response is not None:
            self.response._finish(error)

    def pause(self) -> None:
        if not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused and self.transport is not None and not self.closed:
            self.paused = False
            self.transport.resume_reading()

    def finished(self, response: Response) -> None:
        if response is self.response and response.complete and self.keep_alive and not self.closed:
            self.response = None
            self.head = None
            self.resume()
            self.pool._put(self)
        else:
            self.abort()

    def abort(self) -> None:
        self.response = None
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Upstream:
    """Pooled connections to every endpoint, with the connect bound."""

    def __init__(
        self,
        connect_timeout_s: float,
        keepalive_s: float = 4.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.keepalive_s = keepalive_s
        """Idle connections older than this are not reused (the engine's server closes its own
        idle connections after 5 s; reusing one it is closing would fail the request)."""
        self._ssl = ssl_context
        """For https endpoints: given, or the default context, built on the first use (loading
        the CA bundle takes milliseconds; once, not per connection)."""
        self._idle: dict[Origin, list[_Connection]] = {}
        self._origins: dict[str, Origin] = {}

    def origin(self, url: str) -> Origin:
        found = self._origins.get(url)
        if found is None:
            found = self._origins[url] = origin_of(url)
        return found

    async def request(
        self, base_url: str, method: str, path: str, headers: bytes, body: bytes
    ) -> Response:
        """Send one request and wait for the answer's head. `headers` is the serialised header
        block (each line ending in CRLF) without Host and Content-Length."""
        origin = self.origin(base_url)
        conn = self._take(origin) or await self._connect(origin)
        data = b"".join(
            (
                f"{method} {path} HTTP/1.1\r\nHost: ".encode("latin-1"),
                origin.authority,
                f"\r\nContent-Length: {len(body)}\r\n".encode("latin-1"),
                headers,
                b"\r\n",
                body,
            )
        )
        try:
            return await conn.send(data)
        except BaseException:
            conn.abort()
            raise

    def _take(self, origin: Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        if not idle:
            return None
        oldest_ok = time.monotonic() - self.keepalive_s
        while idle:
            conn = idle.pop()
            if not conn.closed and conn.idle_since >= oldest_ok:
                return conn
            conn.abort()
        return None

    def _put(self, conn: _Connection) -> None:
        conn.idle_since = time.monotonic()
        self._idle.setdefault(conn.origin, []).append(conn)

    async def _connect(self, origin: Origin) -> _Connection:
        loop = asyncio.get_running_loop()
        context = None
        if origin.tls:
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            context = self._ssl
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self, origin), origin.host, origin.port, ssl=context
                )
        except TimeoutError:
            raise ConnectTimeout(
                f"connecting to {origin.host}:{origin.port} took more than "
                f"{self.connect_timeout_s:g} s"
            ) from None
        except socket.gaierror as exc:
            raise ConnectFailed(f"{origin.host}: {exc}", dns=True) from exc
        except OSError as exc:
            raise ConnectFailed(f"{origin.host}:{origin.port}: {exc}") from exc
        return conn  # TCP_NODELAY: asyncio and uvloop both set it on TCP connections

    def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.abort()
        self._idle.clear()
