"""The public port: `POST /v1/completions`, `POST /v1/chat/completions` (SSE relayed chunk by
chunk), `GET /v1/models`, behind an optional bearer token.

A request is validated and its prompt tokens counted (`requests.py`), then the dispatcher gives
the endpoints to try, best first. When every replica is saturated beyond the shedding bound the
answer is 429 with Retry-After. Otherwise it goes to the first endpoint with the client's
end-to-end headers (`headers.py`; the router's own engine key instead of the client's). It moves
to the next only while the request cannot have reached an engine (`failures.py`: refused, no such
name, connect timeout); any later failure is a 502 (504 for the first-byte and stream-idle
bounds, `watchdog.py`) and the endpoint becomes suspect, not down. Whatever happens, the
request's `Ticket` is closed, so the dispatch accounting returns to zero, and a stream that has
started ends with `[DONE]` or an error event, never a silent cut.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import TYPE_CHECKING, Literal

import aiohttp

from halffull import defaults as D
from halffull.policy.endpoints import Endpoint, Ticket
from halffull.policy.routing import RouteRequest
from halffull.router.failures import Failure, classify
from halffull.router.headers import client_pairs, engine_header_block, to_client, to_engine
from halffull.router.requests import ParsedRequest, RequestError, parse_request
from halffull.router.server import Answer, LeanServer, Request, Stream, json_answer
from halffull.router.upstream import Response, UpstreamError
from halffull.router.watchdog import Watchdog

if TYPE_CHECKING:
    from halffull.router.app import Router

log = logging.getLogger("halffull.router")

SHUTTING_DOWN = "the router is shutting down and its grace period ran out; retry the request"
_ROUTES: dict[str, Literal["completions", "chat"]] = {
    "/v1/completions": "completions",
    "/v1/chat/completions": "chat",
}


async def _error_event(out: Stream, message: str, code: int) -> None:
    """End a stream that has started with an error event (OpenAI clients raise it)."""
    event = {"error": {"message": message, "type": "UpstreamError", "code": code}}
    with contextlib.suppress(ConnectionResetError):
        await out.write(b"data: " + json.dumps(event).encode() + b"\n\n")


class PublicApi:
    """The OpenAI-compatible port of one `Router` (`.server`, see `server.py`)."""

    def __init__(self, router: Router, *, max_body_bytes: int) -> None:
        self.router = router
        self.max_body_bytes = max_body_bytes
        self.active: set[asyncio.Task[object]] = set()
        """The proxied requests in progress (their handler tasks), for the drain at shutdown."""
        self.server = LeanServer(
            self._handle, max_body_bytes=max_body_bytes, draining=lambda: router.draining
        )

    async def _handle(self, request: Request, out: Stream) -> Answer | None:
        """Authentication, then the route."""
        key = self.router.api_key
        if key is not None:
            key.refresh()
            if not key.accepts(request.header(b"authorization") or ""):
                return json_answer(401, "missing or wrong bearer token in the Authorization header")
        kind = _ROUTES.get(request.path)
        if kind is not None:
            if request.method != "POST":
                return _not_allowed("POST")
            return await self._proxy(request, out, kind)
        if request.path == "/v1/models":
            if request.method not in ("GET", "HEAD"):
                return _not_allowed("GET, HEAD")
            return await self._models(request)
        return json_answer(404, "Not Found")

    async def _proxy(
        self, request: Request, out: Stream, kind: Literal["completions", "chat"]
    ) -> Answer | None:
        router = self.router
        metrics, clock = router.metrics, router.loop_time
        started = clock()
        route = request.path
        if request.too_large:
            metrics.answered(route, 413)
            return json_answer(
                413, f"the request body is too large: more than {self.max_body_bytes} bytes"
            )
        body = request.body
        try:
            prefix = router.dispatcher.policy.uses_prefix
            parsed = parse_request(
                kind,
                body,
                router.settings.max_model_len,
                router.count_text,
                prefix_block_tokens=router.dispatcher.prefix_index.block_tokens if prefix else None,
                encode=router.encode,
            )
        except RequestError as exc:
            metrics.answered(route, exc.status)
            return json_answer(exc.status, exc.message, param=exc.param)
        task: asyncio.Task[object] = asyncio.current_task()  # type: ignore[assignment]
        self.active.add(task)
        try:
            return await self._route(request, out, parsed, route, started)
        finally:
            self.active.discard(task)

    async def finish(self, grace_s: float) -> None:
        """Shutdown: wait up to `grace_s` for the requests in flight, then end the rest (each
        tells its client in-band or with a 503, see `SHUTTING_DOWN`)."""
        if self.active:
            await asyncio.wait(list(self.active), timeout=grace_s)
        rest = [t for t in self.active if not t.done()]
        for task in rest:
            task.cancel()
        if rest:
            await asyncio.wait(rest, timeout=2.0)

    async def _route(
        self, request: Request, out: Stream, parsed: ParsedRequest, route: str, started: float
    ) -> Answer | None:
        router = self.router
        metrics, clock = router.metrics, router.loop_time
        engine_key = router.engine_key
        if engine_key is not None:
            engine_key.refresh()
        headers = engine_header_block(request.raw_headers, engine_key.token if engine_key else None)
        pool = router.upstream
        assert pool is not None
        settings = router.settings
        dispatcher = router.dispatcher
        code = 503
        last: Failure | None = None
        try:
            now = clock()
            attempts = dispatcher.attempts(
                RouteRequest(
                    prompt_tokens=parsed.prompt_tokens,
                    max_tokens=parsed.max_tokens,
                    block_hashes=parsed.block_hashes,
                ),
                now,
            )
            if dispatcher.overloaded(attempts, settings.shed_queued_batches, now):
                metrics.shed.inc()
                code = 429
                return json_answer(
                    429,
                    f"every engine replica has more than {settings.shed_queued_batches} "
                    "steps of prefill queued; retry later",
                    "RateLimitError",
                    retry_after=D.SHED_RETRY_AFTER_S,
                )
            timeouts = settings.timeouts
            for i, attempt in enumerate(attempts):
                ep = attempt.endpoint
                if ep.down:  # went down while an earlier attempt was failing
                    continue
                if i:
                    metrics.retries.inc()
                ticket = attempt.dispatch(parsed.stream)
                metrics.chosen(ep.name)
                dog = Watchdog(timeouts.first_byte_seconds, timeouts.stream_idle_seconds)
                try:
                    upstream = await pool.request(ep.url, "POST", route, headers, request.body)
                except (UpstreamError, OSError) as exc:
                    dog.stop()
                    ticket.close()
                    failure = self._failed(ep, classify(exc))
                    if failure.retry:
                        last = failure
                        continue
                    code = failure.status
                    return json_answer(code, failure.message)
                except asyncio.CancelledError:
                    dog.stop()
                    ticket.close()
                    timeout = dog.claimed()
                    if timeout is None:
                        raise
                    self._failed(ep, timeout)
                    code = 504
                    return json_answer(504, timeout.message, "GatewayTimeout")
                except BaseException:
                    dog.stop()
                    ticket.close()
                    raise
                answer, code = await self._relay(out, upstream, ticket, ep, started, dog)
                return answer
            message = "no engine replica is available; try again later"
            if last is not None:
                message += f" (last: {last.message})"
            return json_answer(503, message)
        except asyncio.CancelledError:
            if router.draining and not out.client_gone() and not out.started:
                # the drain grace ran out before the engine answered: say so, do not just hang up
                asyncio.current_task().uncancel()  # type: ignore[union-attr]
                code = 503
                return json_answer(503, SHUTTING_DOWN)
            metrics.disconnects.inc()
            code = 499
            raise
        finally:
            metrics.answered(route, code, clock() - started)

    def _failed(self, ep: Endpoint, failure: Failure) -> Failure:
        """Count a failure and act on what it says about the endpoint: down on evidence (refused,
        no such name), suspect when ambiguous."""
        router = self.router
        router.metrics.upstream_error(ep.name, failure.reason)
        if failure.down:
            if not ep.down:
                log.warning("endpoint %s down: %s", ep.name, failure.message)
            router.dispatcher.unreachable(ep, router.loop_time())
        else:
            log.warning("endpoint %s suspect: %s", ep.name, failure.message)
            router.dispatcher.suspect(ep, router.loop_time())
        return failure

    async def _relay(
        self,
        out: Stream,
        upstream: Response,
        ticket: Ticket,
        ep: Endpoint,
        started: float,
        dog: Watchdog,
    ) -> tuple[Answer | None, int]:
        """Pass the engine's answer (status, end-to-end headers, body) to the client, and the
        status for the metrics; always ends the watchdog, the ticket and the upstream response
        (closing the connection when the answer did not complete, which makes vLLM abort the
        request)."""
        metrics = self.router.metrics
        complete = False
        try:
            ctype = upstream.header("Content-Type") or "application/json"
            if upstream.status != 200 or not ctype.startswith("text/event-stream"):
                try:
                    data = await upstream.read()
                except (UpstreamError, OSError) as exc:
                    failure = self._failed(ep, classify(exc))
                    return json_answer(failure.status, failure.message), failure.status
                except asyncio.CancelledError:
                    timeout = dog.claimed()
                    if timeout is None:
                        raise
                    self._failed(ep, timeout)
                    return json_answer(504, timeout.message, "GatewayTimeout"), 504
                ticket.first_token()
                complete = True
                if upstream.status >= 500:
                    metrics.upstream_error(ep.name, f"http_{upstream.status}")
                else:
                    ep.answered()
                answer = Answer(upstream.status, data, client_pairs(upstream.header_list))
                return answer, upstream.status
            out.start(200, client_pairs(upstream.header_list))
            try:
                async for chunk in upstream.chunks():
                    dog.activity()
                    if ticket.in_prefill:
                        ticket.first_token()
                        metrics.ttft.observe(self.router.loop_time() - started)
                    await out.write(chunk)
                complete = True
                ep.answered()
            except (UpstreamError, OSError) as exc:
                if isinstance(exc, ConnectionResetError) and out.client_gone():
                    metrics.disconnects.inc()  # the client went away while we wrote
                    return None, 200
                # the engine died mid-answer: headers are sent, so tell the client in-band
                failure = self._failed(ep, classify(exc))
                await _error_event(out, failure.message, failure.status)
            except asyncio.CancelledError:
                timeout = dog.claimed()
                if timeout is not None:
                    self._failed(ep, timeout)
                    await _error_event(out, timeout.message, 504)
                elif self.router.draining and not out.client_gone():
                    # the drain grace ran out: end the stream in-band rather than cut it
                    asyncio.current_task().uncancel()  # type: ignore[union-attr]
                    metrics.upstream_error(ep.name, "shutdown")
                    await _error_event(out, SHUTTING_DOWN, 503)
                else:
                    raise
            return None, 200
        finally:
            dog.stop()
            ticket.close()
            if complete:
                upstream.release()
            else:
                upstream.close()

    async def _models(self, request: Request) -> Answer:
        router = self.router
        assert router.session is not None
        engine_key = router.engine_key
        headers = to_engine(request.raw_headers, engine_key.token if engine_key else None)
        for ep in router.dispatcher.candidates(router.loop_time()):
            try:
                async with router.session.get(
                    ep.url + "/v1/models", headers=headers, timeout=router.client_timeout
                ) as upstream:
                    data = await upstream.read()
                    return Answer(upstream.status, data, to_client(upstream.headers).items())
            except (aiohttp.ClientError, OSError) as exc:
                failure = self._failed(ep, classify(exc))
                if not failure.retry:
                    return json_answer(failure.status, failure.message)
        return json_answer(503, "no engine replica is available; try again later")


def _not_allowed(allowed: str) -> Answer:
    answer = json_answer(405, "Method Not Allowed")
    answer.headers = [*answer.headers, ("Allow", allowed)]
    return answer
