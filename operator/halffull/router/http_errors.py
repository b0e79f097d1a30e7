"""Errors as the clients of an OpenAI-compatible server expect them: JSON in OpenAI's shape."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from halffull.router.requests import RequestError

log = logging.getLogger("halffull.router")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_KINDS = {
    400: "BadRequestError",
    401: "AuthenticationError",
    404: "NotFoundError",
    405: "MethodNotAllowed",
    413: "RequestTooLarge",
    500: "InternalServerError",
    502: "BadGateway",
    503: "ServiceUnavailable",
}


def error_body(
    status: int, message: str, kind: str | None = None, param: str | None = None
) -> bytes:
    """The JSON body of an error answer; `kind` defaults to the status's usual class name."""
    error = {
        "message": message,
        "type": kind or _KINDS.get(status, "Error"),
        "param": param,
        "code": status,
    }
    return json.dumps({"error": error}).encode()


def json_error(
    status: int, message: str, kind: str | None = None, param: str | None = None
) -> web.Response:
    """The same as an aiohttp response (the admin port)."""
    return web.Response(
        body=error_body(status, message, kind, param),
        status=status,
        content_type="application/json",
    )


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves as JSON: client errors with their message, router bugs as a 500 with
    the traceback in the log."""
    try:
        return await handler(request)
    except RequestError as exc:
        return json_error(exc.status, exc.message, param=exc.param)
    except web.HTTPRequestEntityTooLarge as exc:
        return json_error(413, f"the request body is too large: {exc.text}")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return json_error(exc.status, exc.reason)
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("unexpected error on %s %s", request.method, request.path)
        return json_error(500, "internal router error")
