"""The local cluster: the real control plane, with our CRD installed, and either a real node
(containerd, kubelet, kube-proxy, kube-scheduler: `node.py`) or the kubelet stand-in.

The real node is what `halffull dev` and the end-to-end tests use. The stand-in stays only for
what a real node cannot do here (see kubelet.py): pods of images that are never built, reported
Ready at once, and GPUs to schedule them on, for the tests and benchmarks of the operator's API
objects (dozens of LLMServices, hundreds of pods, on two cores).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from kubernetes import config

from halffull_dev.cluster import network
from halffull_dev.cluster.controlplane import ControlPlane
from halffull_dev.cluster.kubelet import KubeletStandIn
from halffull_dev.cluster.node import NODE_NAME, Node


def packaged(name: str) -> Path:
    """A file shipped inside the package (the CRD, the example)."""
    return Path(str(resources.files("halffull") / "data" / name))


class LocalCluster:
    """`node="real"`: the real node; `"stand-in"`: the kubelet stand-in; `"none"`: no node."""

    def __init__(
        self,
        workdir: Path,
        node: str = "stand-in",
        crds: list[Path] | None = None,
    ) -> None:
        if node not in ("real", "stand-in", "none"):
            raise ValueError(f"node must be real, stand-in or none, not {node!r}")
        self.workdir = workdir
        self.mode = node
        real = node == "real"
        self.control_plane = ControlPlane(
            workdir,
            address=network.GATEWAY if real else "127.0.0.1",
            node_name=NODE_NAME if real else "",
        )
        self.node = Node(workdir / "node", self.control_plane) if real else None
        self.crds = [packaged("crd.yaml")] if crds is None else crds
        self.kubelet: KubeletStandIn | None = None

    @property
    def kubeconfig(self) -> Path:
        return self.control_plane.kubeconfig

    def start(self) -> None:
        if self.node is not None:
            self.node.prepare()
        try:
            self.control_plane.start(crds=self.crds)
            if self.node is not None:
                self.node.start()
            elif self.mode == "stand-in":
                api = config.new_client_from_config(str(self.kubeconfig))
                self.kubelet = KubeletStandIn(api)
                self.kubelet.start()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.kubelet is not None:
            self.kubelet.stop()
            self.kubelet = None
        try:
            if self.node is not None:
                self.node.stop()
        finally:
            self.control_plane.stop()

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
