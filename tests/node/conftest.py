"""Fixtures and helpers of the tests on the real node (`node_cluster` in tests/conftest.py)."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from halffull_dev.testing import prom
from tests.conftest import Cluster, OperatorProcess, node_image, wait_for


def conditions(obj: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in (obj or {}).get("status", {}).get("conditions", [])}


def post(url: str, body: dict[str, Any], timeout: float = 20) -> tuple[int, bytes]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.status, resp.read()


def router_metric(ip: str, name: str) -> float:
    return prom.total(prom.scrape(f"http://{ip}:9000/metrics"), name)


def pods(cluster: Cluster, namespace: str, component: str) -> list[dict[str, Any]]:
    out = cluster.kubectl("get", "pods", "-n", namespace, "-l",
                          f"app.kubernetes.io/component={component}", "-o", "json")  # fmt: skip
    return json.loads(out)["items"]  # type: ignore[no-any-return]


def node_ctr(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """`ctr` against the local node's containerd, namespace k8s.io."""
    from halffull_dev.cluster.node import STATE_DIR

    cmd = ["ctr", "--address", str(STATE_DIR / "containerd.sock"), "-n", "k8s.io", *args]
    return subprocess.run(cmd, capture_output=True, text=True, check=check)


def kill_container(pod: dict[str, Any]) -> None:
    """SIGKILL the pod's first container through containerd, as a crash would end it."""
    cid = pod["status"]["containerStatuses"][0]["containerID"].removeprefix("containerd://")
    node_ctr("tasks", "kill", "-s", "SIGKILL", cid)


@pytest.fixture
def node_namespace(node_cluster: Cluster) -> Iterator[str]:
    name = f"n-{int(time.time() * 1000) % 10**8}"
    node_cluster.kubectl("create", "namespace", name)
    wait_for(lambda: node_cluster.run("get", "sa", "default", "-n", name).returncode == 0,
             what="default ServiceAccount")  # fmt: skip
    yield name
    node_cluster.run("delete", "namespace", name, "--wait=false")


@pytest.fixture
def node_operator(
    node_cluster: Cluster, node_namespace: str, tmp_path: Path
) -> Iterator[OperatorProcess]:
    images = (node_image("fake-engine"), node_image("router"))
    op = OperatorProcess(node_cluster, node_namespace, tmp_path / "operator.log", images=images)
    op.start()
    yield op
    op.stop()
