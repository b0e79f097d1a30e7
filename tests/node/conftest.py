"""Fixtures and helpers of the tests on the real node (`node_cluster` in tests/conftest.py)."""

from __future__ import annotations

import json
import socket
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


def ready_ips(cluster: Cluster, namespace: str, service: str) -> list[str]:
    """The ready addresses of a Service's Endpoints."""
    eps = cluster.get("endpoints", service, namespace) or {}
    return [a["ip"] for s in eps.get("subsets") or [] for a in s.get("addresses") or []]


def serve_ready(cluster: Cluster, namespace: str, name: str, manifest: str, engines: int) -> str:
    """Apply an LLMService, wait until it is Ready with all its engines behind their Service,
    and return the URL of its Service's cluster IP."""
    cluster.apply(namespace, manifest)
    wait_for(lambda: conditions(cluster.get("llms", name, namespace)).get("Ready", {})
             .get("status") == "True", timeout=180, what=f"{name} Ready=True")  # fmt: skip
    wait_for(lambda: len(ready_ips(cluster, namespace, f"{name}-engine")) == engines,
             timeout=60, what="every engine in the engine Service's Endpoints")  # fmt: skip
    return service_url(cluster, namespace, name)


def service_url(cluster: Cluster, namespace: str, name: str) -> str:
    """The URL of a router Service's cluster IP, once kube-proxy forwards it to a router.

    Ready pods are not enough: until kube-proxy has written the Service's rules, its cluster IP
    refuses connections (kube-proxy rejects Services without endpoints), as clients of a new
    Service see on any cluster."""
    svc = cluster.get("service", name, namespace)
    assert svc is not None
    ip = svc["spec"]["clusterIP"]

    def accepts() -> bool:
        socket.create_connection((ip, 8000), timeout=2).close()
        return True

    wait_for(accepts, timeout=120, interval=0.5, what=f"{ip}:8000 forwarded by kube-proxy")
    return f"http://{ip}:8000"


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
