"""Engines that misbehave on request: fake engines with a middleware keyed on a word in the body.

- `POISON`: the engine process exits at once (`os._exit`), as a request that crashes vLLM would
  (run it as its own process: `python tests/router/misbehaving.py --port N`);
- `HANG`: the engine takes the request and never answers;
- `STALL`: the engine starts a stream, sends one chunk, then goes quiet.

Every request's headers are recorded in `seen_headers`, and every answer carries `X-Engine`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web
from multidict import CIMultiDict

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "dev"))

from halffull_dev.testing.fake_engine import FakeEngine


def misbehaving(name: str = "engine", **kw: object) -> FakeEngine:
    fake = FakeEngine(**kw)  # type: ignore[arg-type]
    seen: list[CIMultiDict[str]] = []
    fake.seen_headers = seen  # type: ignore[attr-defined]

    @web.middleware
    async def faults(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.method == "POST":
            seen.append(CIMultiDict(request.headers))
            body = await request.read()
            if b"POISON" in body:
                os._exit(3)
            if b"HANG" in body:
                await asyncio.Event().wait()
            if b"STALL" in body:
                resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
                await resp.prepare(request)
                await resp.write(b'data: {"choices": [{"index": 0, "text": "x"}]}\n\n')
                await asyncio.Event().wait()
        resp = await handler(request)
        resp.headers["X-Engine"] = name
        return resp

    fake.app.middlewares.append(faults)
    return fake


async def _serve(port: int, name: str) -> None:
    async with misbehaving(name, port=port) as fake:
        print(f"misbehaving engine on {fake.url}", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--name", default="engine")
    args = ap.parse_args()
    asyncio.run(_serve(args.port, args.name))
