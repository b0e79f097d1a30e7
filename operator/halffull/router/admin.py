"""The admin port: `/health` (the process answers), `/ready` (some endpoint is up and polled, with
the endpoint table) and `/metrics`. Never authenticated: keep it off the users' Service."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from halffull.router.http_errors import errors_middleware

if TYPE_CHECKING:
    from halffull.router.app import Router


def admin_app(router: Router) -> web.Application:
    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def ready(request: web.Request) -> web.Response:
        now = router.loop_time()
        table = [
            {
                "name": ep.name,
                "url": ep.url,
                "up": not ep.down,
                "statsAgeSeconds": ep.stats_age(now),
            }
            for ep in router.endpoints.values()
        ]
        ok = router.is_ready()
        return web.json_response({"ready": ok, "endpoints": table}, status=200 if ok else 503)

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(
            body=router.metrics.exposition(), content_type="text/plain", charset="utf-8"
        )

    app = web.Application(middlewares=[errors_middleware])
    app.add_routes(
        [web.get("/health", health), web.get("/ready", ready), web.get("/metrics", metrics)]
    )
    return app
