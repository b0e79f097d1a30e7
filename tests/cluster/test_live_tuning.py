"""The live-tuning fast path's API writes on a real kube-apiserver: after a tuning patch the
operator patches the config-hash annotation on exactly the pods that read the changed ConfigMap
(engine pods for alpha, router pods for beta), once each, and never touches a pod template.
How fast a real kubelet then projects the file is bench/live_tuning.py's question."""

from __future__ import annotations

import json
from typing import Any

import pytest

from halffull.builders.live_config import CONFIG_HASH_ANNOTATION
from tests.cluster.test_operator import manifest
from tests.conftest import Cluster, OperatorProcess, wait_for

pytestmark = pytest.mark.cluster


def annotations(cluster: Cluster, ns: str, component: str) -> dict[str, str | None]:
    out = cluster.kubectl("get", "pods", "-n", ns, "-o", "json",
                          "-l", f"app.kubernetes.io/component={component}")  # fmt: skip
    return {
        p["metadata"]["name"]: (p["metadata"].get("annotations") or {}).get(CONFIG_HASH_ANNOTATION)
        for p in json.loads(out)["items"]
        if not p["metadata"].get("deletionTimestamp")
    }


def pod_writes(op: OperatorProcess) -> float:
    return sum(
        s.value
        for s in op.metrics() or []
        if s.name == "halffull_operator_api_writes_total" and s.labels.get("kind") == "Pod"
    )


def settled(cluster: Cluster, ns: str, n_engine: int) -> dict[str, dict[str, str | None]]:
    def check() -> dict[str, dict[str, str | None]] | None:
        got = {c: annotations(cluster, ns, c) for c in ("engine", "router")}
        sizes_ok = len(got["engine"]) == n_engine and len(got["router"]) == 1
        values = [v for c in got.values() for v in c.values()]
        one_each = all(len(set(got[c].values())) == 1 for c in got)
        return got if sizes_ok and all(values) and one_each else None

    return wait_for(check, timeout=60, what="every pod annotated with its component's digest")


def test_tuning_patch_touches_exactly_the_pods_that_read_it(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    cluster.require_local("counts the operator's pod writes on a cluster where nothing else runs")
    cluster.apply(namespace, manifest("lt", replicas=2))
    # both engines in the routers' endpoint table: the router's digest no longer moves
    wait_for(
        lambda: (
            ((cluster.get("llms", "lt", namespace) or {}).get("status") or {}).get("readyReplicas")
            == 2
        ),
        what="two ready engines",
    )
    before = settled(cluster, namespace, 2)
    dep: dict[str, Any] = cluster.get("deployment", "lt-engine", namespace) or {}
    writes = pod_writes(operator)

    cluster.patch("llms", "lt", namespace, {"spec": {"scheduler": {"alpha": 0.7}}})
    wait_for(
        lambda: (
            set(annotations(cluster, namespace, "engine").values()) - set(before["engine"].values())
        ),
        what="engine pods re-annotated after the alpha patch",
    )
    after_alpha = settled(cluster, namespace, 2)
    assert after_alpha["router"] == before["router"]  # the router does not read alpha
    assert pod_writes(operator) - writes == 2  # one patch per engine pod, nothing else

    cluster.patch("llms", "lt", namespace, {"spec": {"router": {"beta": 9.0}}})
    wait_for(
        lambda: annotations(cluster, namespace, "router") != after_alpha["router"],
        what="router pod re-annotated after the beta patch",
    )
    after_beta = settled(cluster, namespace, 2)
    assert after_beta["engine"] == after_alpha["engine"]
    assert pod_writes(operator) - writes == 3
    now: dict[str, Any] = cluster.get("deployment", "lt-engine", namespace) or {}
    assert now["metadata"]["generation"] == dep["metadata"]["generation"]
    assert CONFIG_HASH_ANNOTATION not in str(now["spec"]["template"])
