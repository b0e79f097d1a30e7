"""helm install, upgrade and uninstall against a real kube-apiserver, with the same commands as
docs/helm.md. The module's control plane starts without the LLMService CRD: the chart brings it,
and uninstalling leaves it (and the users' LLMServices) in place."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.chart.conftest import CHART, REGISTRY, REGISTRY_VALUES, Helm, new_namespace
from tests.conftest import ROOT, Cluster, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

CRD_NAME = "llmservices.serving.halffull.dev"
RELEASE = "halffull"
FULLNAME = "halffull"  # the release name holds the chart name: no prefix


def crd_established(cluster: Cluster) -> bool:
    crd = cluster.get("crd", CRD_NAME, "default")
    conds = ((crd or {}).get("status") or {}).get("conditions") or []
    return any(c["type"] == "Established" and c["status"] == "True" for c in conds)


def container(cluster: Cluster, ns: str) -> dict[str, Any]:
    dep = cluster.get("deployment", FULLNAME, ns)
    assert dep is not None
    return dep["spec"]["template"]["spec"]["containers"][0]  # type: ignore[no-any-return]


def env_of(c: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in c["env"]}


def gone(cluster: Cluster, kind: str, name: str, ns: str) -> Callable[[], bool]:
    return lambda: cluster.get(kind, name, ns) is None


def available(cluster: Cluster, ns: str) -> bool:
    dep = cluster.get("deployment", FULLNAME, ns) or {}
    st = dep.get("status") or {}
    return bool(
        st.get("observedGeneration") == dep["metadata"]["generation"]
        and st.get("updatedReplicas") == 1
        and st.get("availableReplicas") == 1
    )


def test_install_upgrade_uninstall(helm: Helm, chart_cluster: Cluster, tmp_path: Path) -> None:
    kc = chart_cluster.kubeconfig
    ns = f"halffull-system-{uuid.uuid4().hex[:6]}"
    if chart_cluster.local:
        assert chart_cluster.get("crd", CRD_NAME, "default") is None, "a bare control plane"

    # Bad values never reach the cluster.
    bad = helm.run("install", RELEASE, str(CHART), "-n", ns, "--create-namespace",
                   "--set", "replicaCount=-1", kubeconfig=kc, check=False)  # fmt: skip
    assert bad.returncode != 0 and "replicaCount: Must be greater than or equal to 0" in bad.stderr
    assert helm.run("status", RELEASE, "-n", ns, kubeconfig=kc, check=False).returncode != 0

    # install
    out = helm.run("install", RELEASE, str(CHART), "-n", ns, "--create-namespace",
                   *REGISTRY_VALUES, "--wait", "--timeout", "120s",
                   kubeconfig=kc).stdout  # fmt: skip
    assert f"kubectl -n {ns} rollout status deployment/{FULLNAME}" in out  # NOTES
    assert "kubectl apply -n default -f -" in out and "port-forward" in out
    assert crd_established(chart_cluster)
    wait_for(lambda: available(chart_cluster, ns), timeout=60, what="operator Deployment ready")
    dep = chart_cluster.get("deployment", FULLNAME, ns)
    assert dep is not None and dep["spec"]["strategy"]["type"] == "RollingUpdate"
    labels = dep["metadata"]["labels"]
    assert labels["app.kubernetes.io/managed-by"] == "Helm"
    assert labels["app.kubernetes.io/instance"] == RELEASE
    for kind, name, where in (
        ("serviceaccount", FULLNAME, ns), ("service", f"{FULLNAME}-metrics", ns),
        ("networkpolicy", FULLNAME, ns), ("clusterrole", FULLNAME, ""),
        ("clusterrolebinding", FULLNAME, ""), ("role", f"{FULLNAME}-leader-election", ns),
        ("rolebinding", f"{FULLNAME}-leader-election", ns),
    ):  # fmt: skip
        assert chart_cluster.get(kind, name, where or "default") is not None, (kind, name)
    c = container(chart_cluster, ns)
    assert env_of(c)["HALFFULL_ENGINE_IMAGE"] == f"{REGISTRY}/vllm-larry:0.1.0"

    # A user's LLMService, which must outlive the operator's release.
    app = new_namespace(chart_cluster, "app")
    chart_cluster.apply(app, (ROOT / "examples" / "llmservice-basic.yaml").read_text())

    # upgrade: a value changes, the pod is replaced (rolling: the new one is a standby until the
    # old one releases the leader Lease), history has two revisions
    before = chart_cluster.get("deployment", FULLNAME, ns)
    assert before is not None
    helm.run("upgrade", RELEASE, str(CHART), "-n", ns, "--reuse-values",
             "--set", "engineImage.tag=0.2.0", "--set", "operator.resyncSeconds=30",
             "--wait", "--timeout", "120s", kubeconfig=kc)  # fmt: skip
    c = container(chart_cluster, ns)
    assert env_of(c)["HALFFULL_ENGINE_IMAGE"] == f"{REGISTRY}/vllm-larry:0.2.0"
    assert "--resync-seconds=30" in c["args"]
    after = chart_cluster.get("deployment", FULLNAME, ns)
    assert after is not None
    assert after["metadata"]["generation"] > before["metadata"]["generation"]
    wait_for(lambda: available(chart_cluster, ns), timeout=60, what="upgraded operator ready")
    history = json.loads(helm.run("history", RELEASE, "-n", ns, "-o", "json", kubeconfig=kc).stdout)
    assert [(h["revision"], h["status"]) for h in history] == [(1, "superseded"), (2, "deployed")]

    # uninstall: the operator's objects go, the CRD and the LLMService stay
    helm.run("uninstall", RELEASE, "-n", ns, "--wait", "--timeout", "120s", kubeconfig=kc)
    for kind, name, where in (
        ("deployment", FULLNAME, ns), ("serviceaccount", FULLNAME, ns),
        ("service", f"{FULLNAME}-metrics", ns), ("networkpolicy", FULLNAME, ns),
        ("clusterrole", FULLNAME, "default"), ("clusterrolebinding", FULLNAME, "default"),
    ):  # fmt: skip
        wait_for(gone(chart_cluster, kind, name, where), what=f"{kind}/{name} removed")
    assert crd_established(chart_cluster), "helm uninstall must keep the CRD"
    assert chart_cluster.get("llmservice", "qwen-small", app) is not None

    # installing again over the kept CRD works (helm skips an existing CRD)
    helm.run("install", RELEASE, str(CHART), "-n", ns, *REGISTRY_VALUES, "--wait",
             "--timeout", "120s", kubeconfig=kc)  # fmt: skip
    wait_for(lambda: available(chart_cluster, ns), timeout=60, what="reinstalled operator ready")
    helm.run("uninstall", RELEASE, "-n", ns, "--wait", kubeconfig=kc)
