"""Sustained load through routers that are rolled and engines that die, as processes on loopback.

What a Deployment rollout does to the router, played with processes: a stand-in for kube-proxy
(`Balancer`: new TCP connections go to the routers whose `/ready` answers 200, as a Service's
endpoints follow readiness) in front of router processes; a new router is started, and once it
is ready the old one gets SIGTERM (the kubelet's part after the preStop sleep). An engine is
killed with SIGKILL mid-run (a crash or an evicted pod).

The load is open-loop Poisson arrivals, streamed and non-streamed completions; each request
ends as one `Outcome`. A request "started" when an engine may have processed it; the goal is
zero failures among those that had not, and every started stream ending with `[DONE]` or an
in-band error event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from halffull_dev.cluster.controlplane import free_port

PY = sys.executable


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    port: int
    admin_port: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, sig)

    def stop(self, timeout: float = 15.0) -> None:
        if self.popen.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.popen.wait()


def wait_http_ok(
    popen: subprocess.Popen[bytes],
    url: str,
    what: str,
    limit_s: float = 60.0,
    interval_s: float = 0.05,
) -> None:
    """Wait until `url` answers 200; fail at once if the process behind it exits."""
    deadline = time.monotonic() + limit_s
    while True:
        if popen.poll() is not None:
            raise RuntimeError(f"{what} exited with {popen.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: {url} never answered 200")
        time.sleep(interval_s)


def _spawn(name: str, cmd: list[str], log_dir: Path) -> subprocess.Popen[bytes]:
    log = (log_dir / f"{name}.log").open("ab")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env
    )


def start_engine(name: str, log_dir: Path, *extra: str) -> Proc:
    port = free_port()
    cmd = [PY, "-m", "halffull_dev.testing.fake_engine", "--port", str(port), *extra]
    proc = Proc(name, _spawn(name, cmd, log_dir), port)
    wait_http_ok(proc.popen, proc.url + "/health", proc.name)
    return proc


def start_router(name: str, engines: Sequence[Proc], log_dir: Path, *extra: str) -> Proc:
    port, admin = free_port(), free_port()
    cmd = [PY, "-m", "halffull.cli", "router", "--host", "127.0.0.1", "--port", str(port),
           "--admin-port", str(admin), "--poll-interval-ms", "50", *extra]  # fmt: skip
    for e in engines:
        cmd += ["--endpoint", e.url]
    proc = Proc(name, _spawn(name, cmd, log_dir), port, admin)
    wait_http_ok(proc.popen, f"http://127.0.0.1:{admin}/ready", proc.name)
    return proc


@contextlib.contextmanager
def cleanup(procs: list[Proc]) -> Iterator[list[Proc]]:
    try:
        yield procs
    finally:
        for p in procs:
            p.stop(5.0)


class Balancer:
    """kube-proxy's part: each new client connection goes to the next ready router. Readiness
    is read from each router's `/ready` every `check_s`, as the kubelet's probe and the
    endpoints controller would (in a cluster that takes seconds; here 50 ms)."""

    def __init__(self, check_s: float = 0.05) -> None:
        self.check_s = check_s
        self.backends: dict[str, Proc] = {}
        self.ready: list[Proc] = []
        self.port = 0
        self.refused = 0
        """Client connections closed unanswered: no ready router, or its port refused."""
        self.why: list[str] = []
        self._next = 0
        self._server: asyncio.Server | None = None
        self._checker: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add(self, proc: Proc) -> None:
        self.backends[proc.name] = proc

    async def wait_ready(self, proc: Proc, limit_s: float = 90.0) -> None:
        """Until the balancer sends new connections to `proc` (a Deployment replaces an old pod
        only once the new one is Ready, i.e. in the Service)."""
        deadline = asyncio.get_running_loop().time() + limit_s
        while proc not in self.ready:
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeError(f"{proc.name} never became ready in the balancer")
            await asyncio.sleep(self.check_s / 2)

    def remove(self, proc: Proc) -> None:
        self.backends.pop(proc.name, None)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._pipe, "127.0.0.1", 0, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]
        self._checker = asyncio.create_task(self._check_loop())

    async def stop(self) -> None:
        if self._checker is not None:
            self._checker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checker
        if self._server is not None:
            self._server.close()

    async def _check_loop(self) -> None:
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout) as s:

            async def probe(proc: Proc) -> Proc | None:
                try:
                    async with s.get(f"http://127.0.0.1:{proc.admin_port}/ready") as r:
                        return proc if r.status == 200 else None
                except (aiohttp.ClientError, TimeoutError):
                    return None

            while True:
                found = await asyncio.gather(*(probe(p) for p in list(self.backends.values())))
                self.ready = [p for p in found if p is not None]
                await asyncio.sleep(self.check_s)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.ready:
            self.refused += 1
            self.why.append("no ready router")
            writer.close()
            return
        proc = self.ready[self._next % len(self.ready)]
        self._next += 1
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", proc.port)
        except OSError as exc:
            self.refused += 1
            self.why.append(f"{proc.name}: {exc}")
            writer.close()
            return

        async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                with contextlib.suppress(ConnectionError, OSError, RuntimeError):
                    dst.close()

        await asyncio.gather(copy(reader, up_writer), copy(up_reader, writer))


@dataclass
class Outcome:
    kind: str
    """ok | stream_error_event | http_<status> | cut (an answer that ended or stalled without
    [DONE] or an error event) | conn_error (no answer at all: refused, dropped or timed out
    before the status line)."""
    started: bool
    """An engine may have processed the request (see `started_status`)."""
    detail: str = ""
    sent_at: float = 0.0
    """When it was sent (`time.monotonic()`), to place it against the faults' times."""


def started_status(status: int, body: bytes) -> bool:
    """A non-200 answer after the request reached an engine (502, 504, or an engine's own
    error) counts as started; the router's own 429/503 and client errors do not."""
    if status in (502, 504):
        return True
    if status >= 500 or status == 429:
        return False
    with contextlib.suppress(ValueError, AttributeError):
        return "no engine replica" not in json.loads(body)["error"]["message"]
    return True


@dataclass
class LoadReport:
    outcomes: list[Outcome] = field(default_factory=list)

    def counts(self) -> Counter[str]:
        return Counter(o.kind for o in self.outcomes)

    def failed_not_started(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.kind != "ok" and not o.started]

    def cut_streams(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.kind == "cut"]


async def one_request(
    session: aiohttp.ClientSession, url: str, stream: bool, max_tokens: int,
    model: str = "fake-model",
) -> Outcome:  # fmt: skip
    body = {"model": model, "prompt": list(range(1, 65)), "max_tokens": max_tokens,
            "stream": stream}  # fmt: skip
    answered = False
    try:
        async with session.post(url + "/v1/completions", json=body) as r:
            answered = True
            if r.status != 200:
                data = await r.read()
                return Outcome(
                    f"http_{r.status}", started_status(r.status, data), data[:200].decode()
                )
            if not stream:
                await r.read()
                return Outcome("ok", True)
            done = error = False
            try:
                async for line in r.content:
                    if line.startswith(b"data: [DONE]"):
                        done = True
                    elif line.startswith(b'data: {"error"'):
                        error = True
            except aiohttp.ClientPayloadError as exc:
                return Outcome("cut", True, str(exc))
            if done:
                return Outcome("ok", True)
            return Outcome("stream_error_event" if error else "cut", True)
    except (aiohttp.ClientError, OSError) as exc:  # a client timeout (TimeoutError) too
        if answered:  # the status line had come: an answer that stopped (or stalled) midway
            return Outcome("cut", True, repr(exc))
        return Outcome("conn_error", False, repr(exc))


async def open_loop(
    url: str, rate: float, seconds: float, *, stream_share: float = 0.5, max_tokens: int = 32,
    seed: int = 1, model: str = "fake-model", timeout_s: float = 120.0,
) -> LoadReport:  # fmt: skip
    """Poisson arrivals at `rate` for `seconds`; waits for every request to end."""
    rng = random.Random(seed)
    report = LoadReport()
    loop = asyncio.get_running_loop()
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def timed(stream: bool) -> Outcome:
            sent_at = time.monotonic()
            outcome = await one_request(session, url, stream, max_tokens, model)
            outcome.sent_at = sent_at
            return outcome

        tasks = []
        t = loop.time()
        end = t + seconds
        while t < end:
            delay = t - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            stream = rng.random() < stream_share
            tasks.append(asyncio.create_task(timed(stream)))
            t += rng.expovariate(rate)
        report.outcomes = list(await asyncio.gather(*tasks))
    return report
