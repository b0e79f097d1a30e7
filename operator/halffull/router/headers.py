"""Which headers cross the router, each way.

End-to-end headers pass in both directions (X-Request-Id, tracing headers, OpenAI-Organization,
the engine's own response headers). Hop-by-hop headers (RFC 9110 section 7.6.1, plus those named
in `Connection`) belong to one connection and stop here. The client's `Authorization` is the
router's business, never the engine's: when engines need a key the router sends its own.
Content-Length and Host are recomputed for the next hop.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from multidict import CIMultiDict, MultiMapping

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_NOT_FORWARDED = HOP_BY_HOP | {"host", "content-length", "authorization", "expect"}
"""Expect: the router reads the whole body before it forwards a request."""
_NOT_RETURNED = HOP_BY_HOP | {"content-length", "server", "date"}
"""Server and Date are the router's own, set on every answer it sends."""


def _connection_tokens(values: Iterable[str]) -> set[str]:
    """The header names listed in `Connection` header values (hop-by-hop for this hop only)."""
    return {t.strip().lower() for value in values for t in value.split(",") if t.strip()}


RawHeaders = Sequence[tuple[bytes, bytes]]
"""Headers as the client sent them (name and value bytes, in order)."""
_NOT_FORWARDED_RAW = frozenset(name.encode("latin-1") for name in _NOT_FORWARDED)


def _forwarded(raw: RawHeaders) -> Iterator[tuple[bytes, bytes]]:
    """Compared as bytes, without decoding: this runs for every proxied request."""
    named: frozenset[bytes] = frozenset()
    for name, value in raw:
        if name.lower() == b"connection":
            tokens = _connection_tokens([value.decode("latin-1")])
            named = named | {t.encode("latin-1") for t in tokens}
    for name, value in raw:
        low = name.lower()
        if low not in _NOT_FORWARDED_RAW and low not in named:
            yield name, value


def to_engine(raw: RawHeaders, engine_key: str | None) -> dict[str, str]:
    """The headers sent with a request to an engine (for aiohttp's client)."""
    out = {k.decode("latin-1"): v.decode("latin-1") for k, v in _forwarded(raw)}
    if engine_key:
        out["Authorization"] = f"Bearer {engine_key}"
    return out


def engine_header_block(raw: RawHeaders, engine_key: str | None) -> bytes:
    """The same headers serialised for `Upstream.request`: one CRLF-ended line each, as the
    client sent them (the server's parser refuses CR and LF inside a value)."""
    parts: list[bytes] = []
    for name, value in _forwarded(raw):
        parts += (name, b": ", value, b"\r\n")
    if engine_key:
        parts.append(f"Authorization: Bearer {engine_key}\r\n".encode("latin-1"))
    return b"".join(parts)


def client_pairs(headers: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """The engine's response headers the client gets, in order (repeated ones, like
    Set-Cookie, kept)."""
    drop = _NOT_RETURNED
    connection = [v for k, v in headers if k.lower() == "connection"]
    if connection:
        drop = drop | _connection_tokens(connection)
    return [(k, v) for k, v in headers if k.lower() not in drop]


def to_client(headers: MultiMapping[str]) -> CIMultiDict[str]:
    """The same for a multidict of headers (aiohttp's client)."""
    return CIMultiDict(client_pairs(list(headers.items())))
