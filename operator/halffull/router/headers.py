"""Which headers cross the router, each way.

End-to-end headers pass in both directions (X-Request-Id, tracing headers, OpenAI-Organization,
the engine's own response headers). Hop-by-hop headers (RFC 9110 section 7.6.1, plus those named
in `Connection`) belong to one connection and stop here. The client's `Authorization` is the
router's business, never the engine's: when engines need a key the router sends its own.
Content-Length and Host are recomputed for the next hop.
"""

from __future__ import annotations

from collections.abc import Mapping

from multidict import CIMultiDict

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
_NOT_FORWARDED = HOP_BY_HOP | {"host", "content-length", "authorization"}
_NOT_RETURNED = HOP_BY_HOP | {"content-length", "server", "date"}
"""Server and Date are the router's own, set on every answer it sends."""


def _named_in_connection(headers: Mapping[str, str]) -> set[str]:
    value = headers.get("Connection")
    if not value:
        return set()
    return {t.strip().lower() for t in value.split(",") if t.strip()}


def to_engine(headers: Mapping[str, str], engine_key: str | None) -> CIMultiDict[str]:
    """The headers sent with a request to an engine."""
    drop = _NOT_FORWARDED | _named_in_connection(headers)
    out = CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in drop)
    if engine_key:
        out["Authorization"] = f"Bearer {engine_key}"
    return out


def to_client(headers: Mapping[str, str]) -> CIMultiDict[str]:
    """The engine's response headers the client gets (repeated ones, like Set-Cookie, kept)."""
    drop = _NOT_RETURNED | _named_in_connection(headers)
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in drop)
