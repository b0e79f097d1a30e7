"""Rollouts under load on the real node: a rolling update of the router Deployment and the
deletion of an engine pod, each while open-loop streaming load flows through the Service's
cluster IP (kube-proxy), lose no request that had not started.

The process-level version of this (bench/router_rollout.py, tests/router/test_drain.py) plays
kube-proxy with a stand-in; here the kubelet runs the preStop hook and the termination grace
period the operator sets, the endpoints controller drops the terminating pod from the Service,
and kube-proxy rewrites its rules, as on a user's cluster.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from halffull_dev.testing.rollout import LoadReport, open_loop
from tests.cluster.test_operator import manifest
from tests.conftest import Cluster, OperatorProcess, wait_for
from tests.node.conftest import conditions, pods, ready_ips, serve_ready
from tests.node.test_serving_e2e import FAKE_ENGINE, MODEL

pytestmark = [pytest.mark.cluster, pytest.mark.node, pytest.mark.slow]

RATE = 30.0
"""Requests per second: streams of 16 tokens at 20 ms each keep about 10 in flight."""


def names(found: list[dict[str, Any]]) -> set[str]:
    return {p["metadata"]["name"] for p in found}


async def roll_and_delete(cluster: Cluster, namespace: str) -> dict[str, float]:
    """Roll the router, then delete an engine pod; returns when each step was done (load time)."""
    t0 = time.monotonic()
    marks: dict[str, float] = {}

    def kubectl(*args: str) -> str:
        return cluster.kubectl(*args, "-n", namespace)

    await asyncio.sleep(5)
    old_routers = names(pods(cluster, namespace, "router"))
    await asyncio.to_thread(kubectl, "rollout", "restart", "deployment/roll-router")
    await asyncio.to_thread(
        kubectl, "rollout", "status", "deployment/roll-router", "--timeout=180s"
    )
    await asyncio.to_thread(
        wait_for,
        lambda: not names(pods(cluster, namespace, "router")) & old_routers,
        timeout=120,
        what="the old router pod gone (preStop, drain, exit)",
    )
    marks["router rolled"] = time.monotonic() - t0

    await asyncio.sleep(3)
    victim = pods(cluster, namespace, "engine")[0]["metadata"]["name"]
    await asyncio.to_thread(kubectl, "delete", "pod", victim, "--wait=false")

    def replaced() -> bool:
        now = pods(cluster, namespace, "engine")
        ready = [p for p in now if conditions(p).get("Ready", {}).get("status") == "True"]
        return victim not in names(now) and len(ready) == 2

    await asyncio.to_thread(
        wait_for, replaced, timeout=180, what="the deleted engine replaced and Ready"
    )
    marks["engine replaced"] = time.monotonic() - t0
    return marks


def test_router_rollout_and_engine_deletion_lose_no_request(
    node_cluster: Cluster, node_namespace: str, node_operator: OperatorProcess
) -> None:
    cluster, namespace = node_cluster, node_namespace
    url = serve_ready(cluster, namespace, "roll", manifest("roll", replicas=2, engine=FAKE_ENGINE,
                      router={"pollIntervalMs": 50}), engines=2)  # fmt: skip
    wait_for(lambda: len(ready_ips(cluster, namespace, "roll")) == 1, timeout=60,
             what="the router in its Service's Endpoints")  # fmt: skip
    old_router = names(pods(cluster, namespace, "router"))
    old_engines = names(pods(cluster, namespace, "engine"))

    async def run() -> tuple[LoadReport, dict[str, float]]:
        stop = asyncio.Event()
        load = asyncio.create_task(open_loop(url, RATE, 600, model=MODEL, max_tokens=16,
                                             stop=stop))  # fmt: skip
        marks = await roll_and_delete(cluster, namespace)
        await asyncio.sleep(5)  # requests through the new router and the new engine too
        stop.set()
        return await load, marks

    report, marks = asyncio.run(run())
    counts = report.counts()
    print(f"rollout on the node: {dict(counts)}; {marks}")
    assert names(pods(cluster, namespace, "router")).isdisjoint(old_router)
    assert len(names(pods(cluster, namespace, "engine")) - old_engines) == 1
    assert len(report.outcomes) > RATE * marks["engine replaced"] * 0.5
    assert report.failed_not_started() == [], report.failed_not_started()[:5]
    assert report.cut_streams() == [], report.cut_streams()[:5]
    assert counts["ok"] > 0.98 * len(report.outcomes)
