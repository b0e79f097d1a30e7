"""The local cluster: the real control plane plus the kubelet stand-in, with our CRD installed."""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from pathlib import Path

from kubernetes import config

from halffull_dev.cluster.controlplane import ControlPlane
from halffull_dev.cluster.kubelet import KubeletStandIn
from halffull_dev.cluster.runtime import (
    CommandBuilder,
    ProcessRuntime,
    fake_engine_command,
    router_command,
)

DEMO_COMMANDS: Mapping[str, CommandBuilder] = {
    "vllm-larry": fake_engine_command,
    "router": router_command,
}
"""Images of the demo and the processes that stand in for them: the real router, and the fake
engine (vLLM's API and metrics without a GPU) for the engine image."""


def packaged(name: str) -> Path:
    """A file shipped inside the package (the CRD, the example)."""
    return Path(str(resources.files("halffull") / "data" / name))


class LocalCluster:
    def __init__(
        self,
        workdir: Path,
        with_kubelet: bool = True,
        commands: Mapping[str, CommandBuilder] | None = None,
    ) -> None:
        self.workdir = workdir
        self.control_plane = ControlPlane(workdir)
        self.with_kubelet = with_kubelet
        self.commands = commands
        self.kubelet: KubeletStandIn | None = None

    @property
    def kubeconfig(self) -> Path:
        return self.control_plane.kubeconfig

    def start(self) -> None:
        self.control_plane.start(crds=[packaged("crd.yaml")])
        if self.with_kubelet:
            api = config.new_client_from_config(str(self.kubeconfig))
            runtime = (
                ProcessRuntime(self.workdir / "runtime", api, self.commands)
                if self.commands
                else None
            )
            self.kubelet = KubeletStandIn(api, runtime=runtime)
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
