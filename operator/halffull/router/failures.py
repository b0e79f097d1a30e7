"""What an upstream failure means for the request and for the endpoint.

A request may move to another replica only while it cannot have reached an engine: the
connection was refused, the name did not resolve, the TCP connect timed out. From the moment the
body may have been written, a retry could run it twice (and a request that crashes its engine
would crash the next replica too), so the client gets 502 (504 for a timeout) and the endpoint
is only *suspect*: one ambiguous error is no evidence that it is down.
"""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp

from halffull.router import upstream


@dataclass(frozen=True, slots=True)
class Failure:
    reason: str
    """Label of `halffull_router_upstream_errors_total{endpoint, reason}`."""
    status: int
    """What the client gets when the request is not retried."""
    retry: bool
    """True when the request cannot have reached the engine: another replica may take it."""
    down: bool
    """True when the failure is evidence the endpoint cannot be reached at all."""
    message: str


DISCONNECTED = (
    "the replica closed the connection before answering (the request may have been processed; "
    "it was not retried)"
)


def classify(exc: BaseException) -> Failure:
    """Sort an exception from sending a request or reading its answer: the proxy's own client
    (`upstream`) and aiohttp's (the engine polls) raise their own types for the same failures."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, aiohttp.ClientConnectorDNSError) or (
        isinstance(exc, upstream.ConnectFailed) and exc.dns
    ):
        return Failure("dns", 503, True, True, f"the replica's name does not resolve: {text}")
    # aiohttp: refused, unreachable, TLS handshake
    if isinstance(exc, (upstream.ConnectFailed, aiohttp.ClientConnectorError)):
        return Failure("connect", 503, True, True, f"cannot connect to the replica: {text}")
    if isinstance(exc, (upstream.ConnectTimeout, aiohttp.ConnectionTimeoutError)):
        return Failure("connect_timeout", 503, True, False, f"connecting timed out: {text}")
    if isinstance(exc, (upstream.Disconnected, aiohttp.ServerDisconnectedError)):
        return Failure("disconnected", 502, False, False, DISCONNECTED)
    if isinstance(exc, upstream.BodyBroken):
        return Failure("body_broken", 502, False, False, text)
    if isinstance(exc, aiohttp.ClientPayloadError):
        return Failure(
            "body_broken", 502, False, False, f"the replica broke off its answer: {text}"
        )
    if isinstance(exc, (aiohttp.ClientOSError, ConnectionError)):
        return Failure(
            "reset", 502, False, False,
            f"the connection to the replica failed after the request was sent: {text}",
        )  # fmt: skip
    return Failure("upstream", 502, False, False, f"the replica failed to answer: {text}")


def timed_out(first_byte: bool, seconds: float) -> Failure:
    """A replica that took the request and went quiet: 504, endpoint suspect."""
    if first_byte:
        return Failure(
            "first_byte_timeout", 504, False, False,
            f"the replica sent no answer within {seconds:g} s (first-byte timeout)",
        )  # fmt: skip
    return Failure(
        "stream_idle_timeout", 504, False, False,
        f"the replica's answer stalled for {seconds:g} s (stream-idle timeout)",
    )  # fmt: skip
