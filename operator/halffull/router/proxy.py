"""The public port: `POST /v1/completions`, `POST /v1/chat/completions` (SSE relayed chunk by
chunk), `GET /v1/models`, behind an optional bearer token.

A request is validated and its prompt tokens counted (`requests.py`), then the dispatcher gives
the endpoints to try, best first. It goes to the first; a connection refused or reset before any
response byte marks that endpoint down and tries the next. Whatever happens, the request's
`Ticket` is closed, so the dispatch accounting returns to zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import TYPE_CHECKING, Literal

import aiohttp
from aiohttp import web

from halffull.policy.endpoints import Endpoint, Ticket
from halffull.policy.routing import RouteRequest
from halffull.router.http_errors import Handler, errors_middleware, json_error
from halffull.router.poller import CONNECT_ERRORS
from halffull.router.requests import RequestError, parse_request

if TYPE_CHECKING:
    from halffull.router.app import Router

log = logging.getLogger("halffull.router")


class PublicApi:
    """The OpenAI-compatible app (`.app`) of one `Router`."""

    def __init__(self, router: Router, *, max_body_bytes: int) -> None:
        self.router = router
        self.app = web.Application(
            client_max_size=max_body_bytes, middlewares=[errors_middleware, self._auth]
        )
        self.app.add_routes(
            [
                web.post("/v1/completions", self._completions),
                web.post("/v1/chat/completions", self._chat),
                web.get("/v1/models", self._models),
            ]
        )

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        key = self.router.api_key
        if key is not None:
            key.refresh()
            if not key.accepts(request.headers.get("Authorization", "")):
                return json_error(401, "missing or wrong bearer token in the Authorization header")
        return await handler(request)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._proxy(request, "completions")

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._proxy(request, "chat")

    async def _proxy(
        self, request: web.Request, kind: Literal["completions", "chat"]
    ) -> web.StreamResponse:
        router = self.router
        metrics, clock = router.metrics, router.loop_time
        started = clock()
        route = request.path
        try:
            body = await request.read()
            parsed = parse_request(kind, body, router.settings.max_model_len, router.count_text)
        except (RequestError, web.HTTPException) as exc:
            metrics.answered(route, exc.status)
            raise
        headers = {"Content-Type": "application/json"}
        rid = request.headers.get("X-Request-Id")
        if rid:
            headers["X-Request-Id"] = rid
        session = router.session
        assert session is not None
        code = 503
        try:
            attempts = router.dispatcher.attempts(
                RouteRequest(prompt_tokens=parsed.prompt_tokens, max_tokens=parsed.max_tokens),
                clock(),
            )
            for i, attempt in enumerate(attempts):
                ep = attempt.endpoint
                if ep.down:  # went down while an earlier attempt was failing
                    continue
                if i:
                    metrics.retries.inc()
                ticket = attempt.dispatch(parsed.stream)
                metrics.chosen(ep.name)
                try:
                    upstream = await session.post(ep.url + route, data=body, headers=headers)
                except CONNECT_ERRORS as exc:
                    ticket.close()
                    metrics.upstream_error(ep.name, "connect")
                    if not ep.down:
                        log.warning("endpoint %s down (request): %s", ep.name, exc)
                    router.dispatcher.unreachable(ep, clock())
                    continue
                except aiohttp.ClientError as exc:  # it may have reached the engine: no retry
                    ticket.close()
                    metrics.upstream_error(ep.name, "upstream")
                    code = 502
                    return json_error(502, f"the engine replica failed to answer: {exc}")
                except BaseException:
                    ticket.close()
                    raise
                response = await self._relay(request, upstream, ticket, ep, started)
                code = response.status
                return response
            return json_error(503, "no engine replica is available; try again later")
        except asyncio.CancelledError:
            metrics.disconnects.inc()
            code = 499
            raise
        finally:
            metrics.answered(route, code, clock() - started)

    async def _relay(
        self,
        request: web.Request,
        upstream: aiohttp.ClientResponse,
        ticket: Ticket,
        ep: Endpoint,
        started: float,
    ) -> web.StreamResponse:
        """Pass the engine's answer to the client; always ends the ticket and the upstream
        response (closing the connection when the answer did not complete, which makes vLLM
        abort the request)."""
        metrics = self.router.metrics
        complete = False
        try:
            ctype = upstream.headers.get("Content-Type", "application/json")
            if upstream.status != 200 or not ctype.startswith("text/event-stream"):
                try:
                    data = await upstream.read()
                except aiohttp.ClientError as exc:
                    metrics.upstream_error(ep.name, "body_broken")
                    return json_error(502, f"the engine replica broke off its answer: {exc}")
                ticket.first_token()
                complete = True
                if upstream.status >= 500:
                    metrics.upstream_error(ep.name, f"http_{upstream.status}")
                return web.Response(
                    body=data, status=upstream.status, headers={"Content-Type": ctype}
                )
            out = web.StreamResponse(
                status=200, headers={"Content-Type": ctype, "Cache-Control": "no-cache"}
            )
            await out.prepare(request)
            try:
                async for chunk in upstream.content.iter_any():
                    if ticket.in_prefill:
                        ticket.first_token()
                        metrics.ttft.observe(self.router.loop_time() - started)
                    await out.write(chunk)
                complete = True
            except aiohttp.ClientPayloadError as exc:
                # the engine died mid-answer: headers are sent, so tell the client in-band
                metrics.upstream_error(ep.name, "stream_broken")
                event = {
                    "error": {
                        "message": f"upstream stream broken: {exc}",
                        "type": "UpstreamError",
                        "code": 502,
                    }
                }
                with contextlib.suppress(ConnectionResetError):
                    await out.write(b"data: " + json.dumps(event).encode() + b"\n\n")
            except ConnectionResetError:  # the client went away while we wrote
                metrics.disconnects.inc()
                return out
            with contextlib.suppress(ConnectionResetError):
                await out.write_eof()
            return out
        finally:
            ticket.close()
            if complete:
                upstream.release()
            else:
                upstream.close()

    async def _models(self, request: web.Request) -> web.StreamResponse:
        router = self.router
        assert router.session is not None
        for ep in router.dispatcher.candidates():
            try:
                async with router.session.get(ep.url + "/v1/models") as upstream:
                    data = await upstream.read()
                    return web.Response(
                        body=data,
                        status=upstream.status,
                        headers={
                            "Content-Type": upstream.headers.get("Content-Type", "application/json")
                        },
                    )
            except CONNECT_ERRORS:
                router.dispatcher.unreachable(ep, router.loop_time())
        return json_error(503, "no engine replica is available; try again later")
