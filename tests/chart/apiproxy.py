"""A recording reverse proxy in front of the kube-apiserver, and the RBAC attributes of what
passed through it.

The RBAC tests run the operator through this proxy, authenticated as the chart's ServiceAccount,
and compare the (verb, API group, resource) of every request it made with the rules the chart
grants: every request allowed (the rules suffice) and every granted rule used (none to spare).
It forwards bytes unchanged (bodies, compression, watch streams chunk by chunk) and only listens
on loopback.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import aiohttp
import yaml
from aiohttp import web

HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "transfer-encoding", "upgrade", "host", "content-length",
}  # fmt: skip


RETRY_AFTER_S = 2
"""The Retry-After the proxy sends with an injected 429."""


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: str
    status: int


@dataclass(frozen=True, order=True)
class Access:
    """One RBAC check: `verb` on `resource` (with "/subresource") in API group `group`."""

    verb: str
    group: str
    resource: str


def access_of(method: str, path: str, query: str) -> Access | None:
    """What RBAC checks for one request; None for discovery and other non-resource paths."""
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 2 and parts[0] == "api":
        group, rest = "", parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        group, rest = parts[1], parts[3:]
    else:
        return None
    if not rest:
        return None
    if rest[0] == "namespaces" and len(rest) >= 3:
        rest = rest[2:]  # a namespaced resource; /namespaces and /namespaces/NAME are themselves
    resource, name = rest[0], rest[1] if len(rest) > 1 else None
    if len(rest) > 2:
        resource = f"{resource}/{rest[2]}"
    watch = parse_qs(query).get("watch", ["false"])[0] in ("true", "1")
    verb = {
        "GET": "get" if name else ("watch" if watch else "list"),
        "POST": "create",
        "PUT": "update",
        "PATCH": "patch",
        "DELETE": "delete" if name else "deletecollection",
    }.get(method)
    return None if verb is None else Access(verb, group, resource)


def granted(rules: list[dict[str, Any]]) -> set[Access]:
    """The accesses a Role's or ClusterRole's rules allow, expanded (no wildcards expected)."""
    out = set()
    for rule in rules:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    out.add(Access(verb, group, resource))
    return out


def _cluster_of(kubeconfig: dict[str, Any]) -> dict[str, Any]:
    ctx_name = kubeconfig["current-context"]
    ctx = next(c["context"] for c in kubeconfig["contexts"] if c["name"] == ctx_name)
    return next(c["cluster"] for c in kubeconfig["clusters"] if c["name"] == ctx["cluster"])


def token_kubeconfig(admin_kubeconfig: Path, token: str, out: Path, server: str = "") -> Path:
    """A kubeconfig for `token`: the admin kubeconfig's cluster (or `server`), no other user."""
    doc = yaml.safe_load(admin_kubeconfig.read_text())
    cluster = dict(_cluster_of(doc))
    if "certificate-authority" in cluster:  # relative to the admin kubeconfig's directory
        cluster["certificate-authority"] = str(
            admin_kubeconfig.parent / cluster["certificate-authority"]
        )
    if server:
        cluster = {"server": server}
    out.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": cluster}],
                "users": [{"name": "u", "user": {"token": token}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "c",
            }
        )
    )
    return out


class ApiRecorder:
    """`start()` serves on a free loopback port in a thread of its own; `stop()` ends it."""

    def __init__(self, admin_kubeconfig: Path) -> None:
        cluster = _cluster_of(yaml.safe_load(admin_kubeconfig.read_text()))
        self.upstream = str(cluster["server"]).rstrip("/")
        self.ssl = self._ssl_context(cluster, admin_kubeconfig.parent)
        self.requests: list[Request] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._lock = threading.Lock()
        self.fault: Callable[[str, str], int | None] | None = None
        """(method, path) -> an HTTP status to answer instead of forwarding (fault tests)."""

    @staticmethod
    def _ssl_context(cluster: dict[str, Any], base: Path) -> ssl.SSLContext | bool:
        if cluster.get("insecure-skip-tls-verify"):
            return False
        if "certificate-authority-data" in cluster:
            pem = base64.b64decode(cluster["certificate-authority-data"]).decode()
            return ssl.create_default_context(cadata=pem)
        if "certificate-authority" in cluster:
            return ssl.create_default_context(cafile=str(base / cluster["certificate-authority"]))
        return ssl.create_default_context()

    @property
    def server(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> ApiRecorder:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def recorded(self) -> list[Request]:
        with self._lock:
            return list(self.requests)

    def accesses(self) -> dict[Access, set[int]]:
        """Each access made, with the HTTP statuses it got."""
        out: dict[Access, set[int]] = {}
        for r in self.recorded():
            acc = access_of(r.method, r.path, r.query)
            if acc is None:
                continue
            out.setdefault(acc, set()).add(r.status)
            if acc.verb == "patch" and r.status == 201:
                # A server-side apply that created the object: the API server checked `create`
                # as well (without it, the apply is refused with 403).
                out.setdefault(Access("create", acc.group, acc.resource), set()).add(r.status)
        return out

    async def _start(self) -> None:
        self._session = aiohttp.ClientSession(
            auto_decompress=False, timeout=aiohttp.ClientTimeout(total=None, sock_connect=10)
        )
        app = web.Application(client_max_size=64 * 1024**2)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()
        # Watch relays still open when the client went away without closing them.
        me = asyncio.current_task()
        pending = [t for t in asyncio.all_tasks() if t is not me]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        refused = self.fault(request.method, request.path) if self.fault else None
        if refused is not None:
            with self._lock:
                self.requests.append(
                    Request(request.method, request.path, request.query_string, refused)
                )
            status = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": refused,
                      "message": f"HTTP {refused} injected by the test proxy"}  # fmt: skip
            headers = {"Retry-After": str(RETRY_AFTER_S)} if refused == 429 else {}
            return web.json_response(status, status=refused, headers=headers)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        body = await request.read()
        async with self._session.request(
            request.method,
            self.upstream + request.raw_path,
            headers=headers,
            data=body or None,
            ssl=self.ssl,
            allow_redirects=False,
            # Forward no Content-Type where the client sent none (the apiserver reads JSON then;
            # aiohttp would add application/octet-stream, which it refuses).
            skip_auto_headers=() if "Content-Type" in request.headers else ("Content-Type",),
        ) as upstream:
            with self._lock:
                self.requests.append(
                    Request(request.method, request.path, request.query_string, upstream.status)
                )
            response = web.StreamResponse(
                status=upstream.status,
                headers={k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP},
            )
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response
