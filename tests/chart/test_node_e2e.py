"""The chart end to end on the real node: `helm install` of the previous release's chart runs the
operator image in a pod, which reaches the apiserver through the `kubernetes` Service and
reconciles an LLMService into serving pods; `helm upgrade` to this chart replaces the operator
pod and leaves the engine and router pods alone (their specs did not change).

What restarts on an upgrade: the operator pod, whenever its Deployment's template changes (the
chart's Deployment uses the Recreate strategy, so there is never a second operator). Engine and
router pods are the operator's children: they restart only if the new operator builds a
different pod template for them, which it must not do for an unchanged LLMService.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from halffull_dev.testing import prom
from tests.chart.conftest import CHART, Helm, new_namespace
from tests.cluster.test_operator import manifest
from tests.conftest import ROOT, Cluster, node_image, wait_for
from tests.node.conftest import conditions, pods, post
from tests.node.test_serving_e2e import FAKE_ENGINE

pytestmark = [pytest.mark.cluster, pytest.mark.node, pytest.mark.slow]

PREVIOUS_RELEASE = "763e9b3"
"""The commit of the previous chart: the last one before the CRD's newest fields, and the first
whose RBAC grants what today's operator watches (PodDisruptionBudgets, pod patches). The chart
has had no numbered release yet. Both releases run today's operator image: an operator image
from before `halffull.controller.login` cannot run on the local node at all (it logs in by the
DNS name `kubernetes.default.svc`, and the node has no cluster DNS)."""


def previous_chart(tmp_path: Path) -> Path:
    out = tmp_path / "previous"
    out.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", PREVIOUS_RELEASE,
                              "charts/halffull"], capture_output=True, check=True)  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive.stdout, check=True)
    return out / "charts" / "halffull"


def image_values() -> list[str]:
    values = []
    for key, name in (("image", "operator"), ("engineImage", "fake-engine"),
                      ("routerImage", "router")):  # fmt: skip
        repository, tag = node_image(name).rsplit(":", 1)
        values += ["--set", f"{key}.repository={repository}", "--set", f"{key}.tag={tag}"]
    return values


def pod_identities(cluster: Cluster, ns: str) -> dict[str, tuple[str, int]]:
    """pod name -> (uid, restarts) of the engine and router pods."""
    return {
        p["metadata"]["name"]: (
            p["metadata"]["uid"],
            sum(c.get("restartCount", 0) for c in p["status"].get("containerStatuses") or []),
        )
        for component in ("engine", "router")
        for p in pods(cluster, ns, component)
    }


def operator_pod(cluster: Cluster, ns: str) -> dict[str, Any] | None:
    items = json.loads(cluster.kubectl("get", "pods", "-n", ns, "-o", "json"))["items"]
    running = [p for p in items if p["status"].get("phase") == "Running"
               and "deletionTimestamp" not in p["metadata"]]  # fmt: skip
    return running[0] if len(running) == 1 else None


def test_install_previous_release_then_upgrade(
    helm: Helm, node_cluster: Cluster, tmp_path: Path
) -> None:
    cluster, kc = node_cluster, node_cluster.kubeconfig
    ns = f"halffull-system-{uuid.uuid4().hex[:6]}"
    helm.run("install", "halffull", str(previous_chart(tmp_path)), "-n", ns, "--create-namespace",
             *image_values(), "--wait", "--timeout", "300s", kubeconfig=kc)  # fmt: skip
    op = wait_for(lambda: operator_pod(cluster, ns), timeout=60, what="the operator pod")
    assert op["spec"]["nodeName"] == "halffull-dev-node"

    app = new_namespace(cluster, "app")
    cluster.apply(app, manifest("chart-e2e", replicas=1, engine=FAKE_ENGINE))
    wait_for(lambda: conditions(cluster.get("llms", "chart-e2e", app)).get("Ready", {})
             .get("status") == "True", timeout=240, interval=1,
             what="the in-cluster operator made the LLMService Ready")  # fmt: skip
    svc = cluster.get("service", "chart-e2e", app)
    assert svc is not None
    status, _ = post(
        f"http://{svc['spec']['clusterIP']}:8000/v1/completions",
        {"model": "Qwen/Qwen2.5-0.5B-Instruct", "prompt": [1, 2], "max_tokens": 2},
    )
    assert status == 200
    before = pod_identities(cluster, app)
    assert len(before) == 2

    helm.run("upgrade", "halffull", str(CHART), "-n", ns, *image_values(),
             "--set", "operator.resyncSeconds=20", "--wait", "--timeout", "300s",
             kubeconfig=kc)  # fmt: skip
    new_op = wait_for(
        lambda: (p := operator_pod(cluster, ns)) and p["metadata"]["uid"] != op["metadata"]["uid"]
        and p,
        timeout=120, what="the upgraded operator pod",
    )  # fmt: skip
    assert "--resync-seconds=20" in new_op["spec"]["containers"][0]["args"]
    # the new operator has reconciled the LLMService (its metrics, on the pod's address) ...
    port = next(p["containerPort"] for p in new_op["spec"]["containers"][0]["ports"]
                if p["name"] == "metrics")  # fmt: skip
    metrics = f"http://{new_op['status']['podIP']}:{port}/metrics"
    wait_for(lambda: prom.total(prom.scrape(metrics), "halffull_operator_reconciles_total") > 0,
             timeout=90, interval=1, what="the new operator's first reconcile")  # fmt: skip
    cluster.patch("llms", "chart-e2e", app, {"metadata": {"annotations": {"touched": "1"}}})
    wait_for(lambda: conditions(cluster.get("llms", "chart-e2e", app)).get("Ready", {})
             .get("status") == "True", timeout=60, what="Ready after the upgrade")  # fmt: skip
    # ... and the engine and router pods are the same pods, never restarted
    assert pod_identities(cluster, app) == before
    helm.run("uninstall", "halffull", "-n", ns, "--wait", kubeconfig=kc)
