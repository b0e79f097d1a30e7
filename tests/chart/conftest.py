"""Fixtures for the Helm chart tests: the helm and checkov binaries, rendering, a bare control
plane (no CRD: the chart installs it), and the operator run as the chart's pod would run it.

helm comes from hack/install-helm.sh (or HALFFULL_HELM), checkov from hack/install-checkov.sh
(or HALFFULL_CHECKOV); a missing tool fails the tests that need it with the command to run.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from halffull_dev.processes import stop_process
from tests.chart.apiproxy import token_kubeconfig
from tests.conftest import ROOT, Cluster, free_port, wait_for

CHART = ROOT / "charts" / "halffull"
CACHE = Path(os.environ.get("HALFFULL_CACHE", Path.home() / ".cache" / "halffull"))


def _tool(env: str, name: str, install: str) -> Path:
    path = Path(os.environ.get(env) or CACHE / "bin" / name)
    if not os.access(path, os.X_OK):
        pytest.fail(f"{name} not found at {path}: run `bash {install}` (or set {env})")
    return path


class Helm:
    def __init__(self, binary: Path, home: Path) -> None:
        self.binary = binary
        # Private config/cache/data dirs: no repositories or plugins of the user's leak in.
        self.env = {
            **os.environ,
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_DATA_HOME": str(home / "data"),
        }

    def run(
        self, *args: str, kubeconfig: Path | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        env = dict(self.env)
        if kubeconfig is not None:
            env["KUBECONFIG"] = str(kubeconfig)
        proc = subprocess.run(
            [str(self.binary), *args], env=env, capture_output=True, text=True, timeout=300
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def template(
        self, *args: str, namespace: str = "halffull-system", registry: bool = True
    ) -> list[dict[str, Any]]:
        values = [*REGISTRY_VALUES, *args] if registry else list(args)
        out = self.run("template", "rel", str(CHART), "--namespace", namespace, *values).stdout
        return [d for d in yaml.safe_load_all(out) if d]


REGISTRY = "registry.example/halffull"
REGISTRY_VALUES = ("--set", f"image.registry={REGISTRY}")
"""The one value the chart requires: where `REGISTRY=... make images` pushed the images."""


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    binary = _tool("HALFFULL_HELM", "helm", "hack/install-helm.sh")
    return Helm(binary, tmp_path_factory.mktemp("helm-home"))


@pytest.fixture(scope="session")
def checkov() -> Path:
    return _tool("HALFFULL_CHECKOV", "checkov", "hack/install-checkov.sh")


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = find(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


# --- a control plane of the chart tests' own -----------------------------------------------


@pytest.fixture(scope="module")
def chart_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A bare control plane per test module, without the LLMService CRD (the chart brings it),
    with the kubelet stand-in. With KUBECONFIG set, that cluster instead."""
    workdir = tmp_path_factory.mktemp("chart-cluster")
    if os.environ.get("KUBECONFIG"):
        yield Cluster(Path(os.environ["KUBECONFIG"]), workdir, local=False)
        return
    from kubernetes import config

    from halffull_dev.cluster.controlplane import ControlPlane
    from halffull_dev.cluster.kubelet import KubeletStandIn

    plane = ControlPlane(workdir / "control-plane")
    plane.start(crds=[])
    kubelet = KubeletStandIn(config.new_client_from_config(str(plane.kubeconfig)))
    kubelet.start()
    try:
        yield Cluster(plane.kubeconfig, workdir, local=True)
    finally:
        kubelet.stop()
        plane.stop()


def new_namespace(cluster: Cluster, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    wait_for(
        lambda: cluster.run("get", "serviceaccount", "default", "-n", name).returncode == 0,
        what=f"default ServiceAccount in {name}",
    )
    return name


def service_account_token(cluster: Cluster, namespace: str, name: str) -> str:
    """A token the API server issued for a ServiceAccount: its token Secret, which the
    serviceaccount-token controller creates (Kubernetes up to 1.23, our 1.20 control plane), or
    else one from the TokenRequest API (`kubectl create token`, 1.24 and later)."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        sa = cluster.get("serviceaccount", name, namespace) or {}
        if sa.get("secrets"):
            secret = cluster.get("secret", sa["secrets"][0]["name"], namespace)
            if secret is not None and (secret.get("data") or {}).get("token"):
                return base64.b64decode(secret["data"]["token"]).decode()
        time.sleep(0.2)
    return cluster.kubectl("create", "token", name, "-n", namespace).strip()


def sa_kubeconfig(cluster: Cluster, namespace: str, name: str, out: Path, server: str = "") -> Path:
    return token_kubeconfig(
        cluster.kubeconfig, service_account_token(cluster, namespace, name), out, server
    )


# --- the operator, as the chart's Deployment runs it ---------------------------------------


class ChartOperator:
    """`halffull operator` with the container args and env of the rendered Deployment (ports
    made free), authenticated by `kubeconfig`: the chart's pod, minus the pod."""

    def __init__(self, deployment: dict[str, Any], kubeconfig: Path, log: Path) -> None:
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert container["command"] == ["halffull"]
        self.health_port, self.metrics_port = free_port(), free_port()
        ports = {"--health-port": self.health_port, "--metrics-port": self.metrics_port}
        args = []
        for arg in container["args"]:
            flag = arg.split("=", 1)[0]
            args.append(f"{flag}={ports[flag]}" if flag in ports else arg)
        self.args = args
        self.env = {e["name"]: e["value"] for e in container["env"]}
        self.kubeconfig, self.log_path = kubeconfig, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, **self.env, "KUBECONFIG": str(self.kubeconfig)}
        env.pop("KUBERNETES_SERVICE_HOST", None)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "halffull.cli", *self.args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_for(self.healthy, timeout=60, what="operator /healthz")

    def healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            pytest.fail(f"operator exited {self.proc.returncode}: {self.log()[-3000:]}")
        try:
            url = f"http://127.0.0.1:{self.health_port}/healthz"
            with urllib.request.urlopen(url, timeout=2) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is None:
            return
        stop_process(self.proc)
        self.proc = None


def live_json(cluster: Cluster, *args: str) -> dict[str, Any]:
    return json.loads(cluster.kubectl(*args, "-o", "json"))  # type: ignore[no-any-return]
