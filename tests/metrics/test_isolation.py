"""A Prometheus that accepts connections and never answers, next to a real one: the hung source
costs its own LLMService a timeout and nothing else."""

from __future__ import annotations

import asyncio
import socket
import threading

import pytest

from halffull.controller.metrics_source import PrometheusError, PrometheusSource, Target
from halffull.controller.weights import Watch, WeightsLoop
from halffull_dev.cluster.controlplane import free_port
from halffull_dev.testing.fake_engine import FakeEngine
from tests.metrics.conftest import Prometheus
from tests.metrics.test_weights import NS, SHAPE, wait_until


class SilentServer:
    """Listens on loopback, accepts every connection, reads nothing and answers nothing."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.accepted:  # the clients still waiting get a closed connection
            conn.close()


@pytest.fixture
def silent() -> SilentServer:
    server = SilentServer()
    yield server  # type: ignore[misc]
    server.close()


def test_prometheus_query_has_an_http_timeout(silent: SilentServer) -> None:
    source = PrometheusSource(silent.url, timeout_s=0.5)
    with pytest.raises(PrometheusError, match=r"timed out|Timeout"):
        source.query(NS, ["pod-a"])
    assert len(silent.accepted) == 1  # the server took the connection; no retry followed


def test_hung_prometheus_never_delays_another_llmservice(
    prometheus: Prometheus, silent: SilentServer
) -> None:
    async def main() -> None:
        async with FakeEngine(shape=SHAPE, port=free_port()) as engine:
            prometheus.start({"pod-b": engine.url.removeprefix("http://")}, NS)
            source = PrometheusSource(prometheus.url)

            async def scraped() -> bool:
                got = await asyncio.to_thread(source.query, NS, ["pod-b"])
                return got["pod-b"].stats is not None

            await wait_until(scraped)

            triggered: list[tuple[str, str]] = []
            # A long HTTP timeout: the hung query stays in flight for the whole comparison.
            loop = WeightsLoop(lambda ns, n: triggered.append((ns, n)), prometheus_timeout_s=10.0)
            hung, healthy = (NS, "hung"), (NS, "healthy")
            for key, url, pod in ((hung, silent.url, "pod-a"), (healthy, prometheus.url, "pod-b")):
                target = Target(pod, engine.url)
                loop.watch(key, Watch((target,), 1.0, 512, 0.2, url))
            runner = asyncio.create_task(loop.run(tick_s=0.05))
            passes = 0

            async def healthy_sampled_again_and_again() -> bool:
                nonlocal passes
                published = loop.published(healthy)
                if published is not None and published.problem is None:
                    passes += 1
                    loop._states[healthy].published = None  # count each new table
                return passes >= 3

            await wait_until(healthy_sampled_again_and_again)
            # Meanwhile the hung LLMService's first pass is still waiting on its Prometheus.
            assert hung in loop._inflight, "the hung source's pass ended early"
            assert loop.published(hung) is None
            assert silent.accepted
            silent.close()  # its query fails now: the loop falls back to the pods directly

            async def hung_falls_back() -> bool:
                table = loop.published(hung)
                return table is not None and table.problem is not None

            await wait_until(hung_falls_back)
            table = loop.published(hung)
            assert table is not None and table.problem is not None
            assert table.problem[0] == "PrometheusUnavailable"
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
            await loop.close()

    asyncio.run(main())
