"""The local cluster: the real control plane plus the kubelet stand-in, with our CRD installed."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from kubernetes import config

from halffull.devcluster.controlplane import ControlPlane
from halffull.devcluster.kubelet import KubeletStandIn


def packaged(name: str) -> Path:
    """A file shipped inside the package (the CRD, the example)."""
    return Path(str(resources.files("halffull") / "data" / name))


class LocalCluster:
    def __init__(self, workdir: Path, with_kubelet: bool = True) -> None:
        self.control_plane = ControlPlane(workdir)
        self.with_kubelet = with_kubelet
        self.kubelet: KubeletStandIn | None = None

    @property
    def kubeconfig(self) -> Path:
        return self.control_plane.kubeconfig

    def start(self) -> None:
        self.control_plane.start(crds=[packaged("crd.yaml")])
        if self.with_kubelet:
            api = config.new_client_from_config(str(self.kubeconfig))
            self.kubelet = KubeletStandIn(api)
            self.kubelet.start()

    def stop(self) -> None:
        if self.kubelet is not None:
            self.kubelet.stop()
        self.control_plane.stop()

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = ["LocalCluster", "packaged"]
