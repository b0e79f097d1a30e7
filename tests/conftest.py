"""Shared fixtures: the Kubernetes cluster the cluster tests run against, and helpers to drive it.

Cluster tests use the cluster in KUBECONFIG when it is set (a user's own cluster), otherwise the
local control plane (real etcd, kube-apiserver and kube-controller-manager, started once per
session). Each test gets a fresh namespace.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from halffull_dev.processes import stop_process
from halffull_dev.testing import prom

ROOT = Path(__file__).resolve().parent.parent
CRD = ROOT / "crds" / "llmservices.serving.halffull.dev.yaml"
T = TypeVar("T")


def wait_for(
    fn: Callable[[], T], timeout: float = 30.0, interval: float = 0.1, what: str = ""
) -> T:
    """Poll until `fn` returns something truthy; return it. Fails the test on timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = fn()
        except Exception as exc:  # the condition may raise until it holds
            last = exc
        if last and not isinstance(last, Exception):
            return last  # type: ignore[no-any-return]
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout} s waiting for {what or fn}: last={last!r}")


class Cluster:
    def __init__(
        self, kubeconfig: Path, workdir: Path, local: bool, control_plane: Any = None
    ) -> None:
        self.kubeconfig = kubeconfig
        self.workdir = workdir
        self.local = local  # True: our control plane (with the stand-in or a real node)
        self.control_plane = control_plane  # the local ControlPlane (fault tests restart it)

    def require_local(self, why: str) -> None:
        """Skip the calling test on a user's cluster (KUBECONFIG), saying `why` it needs ours."""
        if not self.local:
            pytest.skip(why)

    def kubectl(self, *args: str, check: bool = True, stdin: str | None = None) -> str:
        cmd = ["kubectl", "--kubeconfig", str(self.kubeconfig),
               "--cache-dir", str(self.workdir / "kubectl-cache"), *args]  # fmt: skip
        proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True)
        if check and proc.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc.stdout if proc.returncode == 0 else proc.stderr

    def run(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        cmd = ["kubectl", "--kubeconfig", str(self.kubeconfig),
               "--cache-dir", str(self.workdir / "kubectl-cache"), *args]  # fmt: skip
        return subprocess.run(cmd, input=stdin, capture_output=True, text=True)

    def apply(self, namespace: str, body: str) -> str:
        return self.kubectl("apply", "-n", namespace, "-f", "-", stdin=body)

    def patch(
        self, kind: str, name: str, namespace: str, patch: object, type_: str = "merge"
    ) -> str:
        return self.kubectl(
            "patch", kind, name, "-n", namespace, "--type", type_, "-p", json.dumps(patch)
        )

    def get(self, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
        proc = self.run("get", kind, name, "-n", namespace, "-o", "json")
        if proc.returncode != 0:
            if "NotFound" in proc.stderr:
                return None
            raise RuntimeError(proc.stderr)
        return json.loads(proc.stdout)  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    workdir = tmp_path_factory.mktemp("cluster")
    if os.environ.get("KUBECONFIG"):
        c = Cluster(Path(os.environ["KUBECONFIG"]), workdir, local=False)
        c.kubectl("apply", "-f", str(CRD))
        c.kubectl("wait", "--for=condition=Established", "crd/llmservices.serving.halffull.dev")
        yield c
        return
    # The kubelet stand-in: the operator's API objects at test scale, pods that only pretend
    # (INERT_IMAGES). What runs for real runs on the real node (`node_cluster`).
    yield from _local(workdir, "stand-in")


def _local(workdir: Path, node: str) -> Iterator[Cluster]:
    from halffull_dev.cluster.local import LocalCluster

    local = LocalCluster(workdir / "cluster", node=node)
    local.start()
    try:
        yield Cluster(local.kubeconfig, workdir, local=True, control_plane=local.control_plane)
    finally:
        local.stop()


NODE_TEST_IMAGES = ["pause", "operator", "router", "fake-engine"]
"""Built (cached by content) for the tests on the real node; vllm-cpu only where a test needs
the real engine (tests/node/test_cpu_example.py)."""


@pytest.fixture(scope="session")
def node_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The local cluster with a real node (containerd, kubelet, kube-proxy, kube-scheduler) and
    the images built, started once per session (one node per machine). With KUBECONFIG set,
    that cluster, whose nodes must pull the images named by HALFFULL_IMAGE_<NAME>."""
    workdir = tmp_path_factory.mktemp("node-cluster")
    if os.environ.get("KUBECONFIG"):
        yield Cluster(Path(os.environ["KUBECONFIG"]), workdir, local=False)
        return
    from halffull_dev.cluster import images

    images.build(NODE_TEST_IMAGES)
    yield from _local(workdir, "real")


def node_image(name: str) -> str:
    """The reference of a locally built image (HALFFULL_IMAGE_<NAME> overrides it)."""
    override = os.environ.get("HALFFULL_IMAGE_" + name.upper().replace("-", "_"))
    if override:
        return override
    from halffull_dev.cluster import images

    return images.ImageCache().require(name)


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    wait_for(
        lambda: cluster.run("get", "serviceaccount", "default", "-n", name).returncode == 0,
        what="default ServiceAccount",
    )
    yield name
    cluster.run("delete", "namespace", name, "--wait=false")


def free_port() -> int:
    from halffull_dev.cluster.controlplane import free_port as fp

    return fp()


INERT_IMAGES = ("example.invalid/vllm-larry:test", "example.invalid/router:test")


class OperatorProcess:
    """`halffull operator` as its own process, as it runs in a pod."""

    def __init__(
        self,
        cluster: Cluster,
        namespace: str,
        log: Path,
        images: tuple[str, str] = INERT_IMAGES,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.cluster, self.namespace, self.log_path = cluster, namespace, log
        self.images, self.extra_args = images, extra_args
        self.metrics_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "KUBECONFIG": str(self.cluster.kubeconfig)}
        cmd = [sys.executable, "-m", "halffull.cli", "operator", "-n", self.namespace,
               "--metrics-port", str(self.metrics_port), "--health-port", str(free_port()),
               "--resync-seconds", "5", "--engine-image", self.images[0],
               "--router-image", self.images[1], *self.extra_args]  # fmt: skip
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: self.metrics() is not None, what="operator metrics endpoint")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def metrics(self) -> list[prom.Sample] | None:
        try:
            return prom.scrape(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout_s=2)
        except OSError:
            return None

    def writes(self) -> float:
        return prom.total(self.metrics() or [], "halffull_operator_api_writes_total")

    def reconciles(self) -> float:
        return prom.total(self.metrics() or [], "halffull_operator_reconciles_total")


@pytest.fixture
def operator(cluster: Cluster, namespace: str, tmp_path: Path) -> Iterator[OperatorProcess]:
    op = OperatorProcess(cluster, namespace, tmp_path / "operator.log")
    op.start()
    yield op
    op.stop()
