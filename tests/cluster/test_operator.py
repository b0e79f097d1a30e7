"""The operator against a real kube-apiserver: CRD behaviour, children, tuning, drift, restarts."""

from __future__ import annotations

import json
from typing import Any

import pytest

from halffull import defaults as D
from tests.conftest import ROOT, Cluster, OperatorProcess, wait_for

pytestmark = pytest.mark.cluster

CHILDREN = [
    ("deployment", "{n}-engine"),
    ("service", "{n}-engine"),
    ("configmap", "{n}-scheduler"),
    ("deployment", "{n}-router"),
    ("configmap", "{n}-router"),
    ("service", "{n}"),
]


def manifest(name: str, **spec: Any) -> str:
    body = {
        "apiVersion": "serving.halffull.dev/v1alpha1",
        "kind": "LLMService",
        "metadata": {"name": name},
        "spec": {"model": "Qwen/Qwen2.5-0.5B-Instruct", **spec},
    }
    return json.dumps(body)


def children(cluster: Cluster, ns: str, name: str) -> dict[str, dict[str, Any] | None]:
    return {
        f"{kind}/{pattern.format(n=name)}": cluster.get(kind, pattern.format(n=name), ns)
        for kind, pattern in CHILDREN
    }


def all_children(cluster: Cluster, ns: str, name: str) -> dict[str, dict[str, Any]]:
    def check() -> dict[str, dict[str, Any]] | None:
        found = children(cluster, ns, name)
        return None if any(v is None for v in found.values()) else found  # type: ignore[return-value]

    return wait_for(check, timeout=30, what=f"children of {name}")


def versions(objs: dict[str, dict[str, Any]]) -> dict[str, str]:
    return {k: v["metadata"]["resourceVersion"] for k, v in objs.items()}


def test_crd_columns_and_explain(cluster: Cluster, namespace: str) -> None:
    cluster.kubectl(
        "apply", "-n", namespace, "-f", str(ROOT / "examples" / "llmservice-tuned.yaml")
    )
    out = cluster.kubectl("get", "llms", "-n", namespace)
    header = out.splitlines()[0].split()
    assert header == [
        "NAME",
        "MODEL",
        "DESIRED",
        "READY",
        "SCHEDULER",
        "ALPHA",
        "ROUTER",
        "STATUS",
        "AGE",
    ]
    # no operator runs here: Ready and Status are still empty and print as blanks
    row = out.splitlines()[1].split()
    assert row[:6] == ["llama-8b", "meta-llama/Llama-3.1-8B-Instruct", "4", "larry", "0.05", "sal"]
    explain = cluster.kubectl("explain", "llmservice.spec.scheduler.alpha")
    assert "weight of waiting time" in explain
    explain = cluster.kubectl("explain", "llmservice.spec.source")
    assert "exactly one of huggingFace" in explain and "persistentVolumeClaim" in explain
    tuned = cluster.get("llms", "llama-8b", namespace) or {}
    assert tuned["spec"]["source"]["huggingFace"]["tokenSecret"] == {"name": "hf-token",
                                                                     "key": "token"}  # fmt: skip
    # the short name works too, and server-side dry run of the other example passes
    basic = ROOT / "examples" / "llmservice-basic.yaml"
    stored = cluster.kubectl("apply", "--dry-run=server", "-o", "json", "-n", namespace,
                             "-f", str(basic))  # fmt: skip
    assert json.loads(stored)["spec"]["source"] == {"huggingFace": {}}  # absent: the Hub
    sources = ROOT / "examples" / "llmservice-sources.yaml"
    cluster.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", str(sources))


def test_children_created_with_expected_content_and_collected(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    cluster.apply(namespace, manifest("svc-a", replicas=2, engine={"gpus": 2, "maxNumSeqs": 64}))
    objs = all_children(cluster, namespace, "svc-a")
    llms = cluster.get("llms", "svc-a", namespace)
    assert llms is not None
    for obj in objs.values():
        (ref,) = obj["metadata"]["ownerReferences"]
        assert ref["uid"] == llms["metadata"]["uid"] and ref["controller"] is True
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "halffull-operator"
    engine = objs["deployment/svc-a-engine"]
    assert engine["spec"]["replicas"] == 2
    container = engine["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    args = container["args"]
    assert args[args.index("--scheduler-cls") + 1] == "halffull.engine.scheduler.LarryScheduler"
    assert args[args.index("--tensor-parallel-size") + 1] == "2"
    assert args[args.index("--max-num-seqs") + 1] == "64"
    assert objs["service/svc-a-engine"]["spec"]["clusterIP"] == "None"
    assert objs["service/svc-a"]["spec"]["ports"][0]["port"] == 8000
    sched = json.loads(objs["configmap/svc-a-scheduler"]["data"]["scheduler.json"])
    assert sched == {"alpha": D.ALPHA, "maxWaitSeconds": D.MAX_WAIT_SECONDS, "policy": "larry"}

    cluster.kubectl("delete", "llms", "svc-a", "-n", namespace)
    wait_for(
        lambda: all(v is None for v in children(cluster, namespace, "svc-a").values()),
        timeout=60,
        what="garbage collection of the children",
    )


def test_alpha_patch_changes_only_the_configmap(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    cluster.apply(namespace, manifest("svc-b"))
    all_children(cluster, namespace, "svc-b")
    before = cluster.get("deployment", "svc-b-engine", namespace)
    router_before = cluster.get("deployment", "svc-b-router", namespace)
    assert before is not None and router_before is not None
    patch = {"spec": {"scheduler": {"alpha": 0.25, "policy": "fcfs"}, "router": {"beta": 3.5}}}
    cluster.patch("llms", "svc-b", namespace, patch)

    def tuned() -> bool:
        cm = cluster.get("configmap", "svc-b-scheduler", namespace)
        rcm = cluster.get("configmap", "svc-b-router", namespace)
        assert cm and rcm
        sched = json.loads(cm["data"]["scheduler.json"])
        return sched == {
            "alpha": 0.25,
            "maxWaitSeconds": D.MAX_WAIT_SECONDS,
            "policy": "fcfs",
        } and (json.loads(rcm["data"]["router.json"])["beta"] == 3.5)

    wait_for(tuned, what="tuned ConfigMaps")
    after = cluster.get("deployment", "svc-b-engine", namespace)
    router_after = cluster.get("deployment", "svc-b-router", namespace)
    assert after is not None and router_after is not None
    assert after["metadata"]["generation"] == before["metadata"]["generation"]
    assert after["spec"]["template"] == before["spec"]["template"]
    assert router_after["metadata"]["generation"] == router_before["metadata"]["generation"]
    status = wait_for(
        lambda: (
            (cluster.get("llms", "svc-b", namespace) or {})
            .get("status", {})
            .get("scheduler", {})
            .get("alpha")
            == 0.25
        ),
        what="status.scheduler.alpha",
    )
    assert status


def test_scale_subresource_reaches_engine_deployment(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    cluster.apply(namespace, manifest("svc-c"))
    all_children(cluster, namespace, "svc-c")
    cluster.kubectl("scale", "llms/svc-c", "--replicas=3", "-n", namespace)
    wait_for(
        lambda: (
            (cluster.get("deployment", "svc-c-engine", namespace) or {})["spec"]["replicas"] == 3
        ),
        what="engine Deployment scaled to 3",
    )
    # the scale subresource reads back through status.replicas and the selector
    scale = json.loads(
        cluster.kubectl(
            "get",
            "--raw",
            f"/apis/serving.halffull.dev/v1alpha1/namespaces/{namespace}/llmservices/svc-c/scale",
        )
    )
    assert scale["spec"]["replicas"] == 3
    assert "app.kubernetes.io/component=engine" in scale["status"]["selector"]


def test_child_deleted_or_edited_by_hand_is_restored(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    cluster.apply(namespace, manifest("svc-d"))
    objs = all_children(cluster, namespace, "svc-d")
    old_uid = objs["configmap/svc-d-scheduler"]["metadata"]["uid"]
    cluster.kubectl("delete", "configmap", "svc-d-scheduler", "-n", namespace)
    restored = wait_for(
        lambda: (
            (cm := cluster.get("configmap", "svc-d-scheduler", namespace))
            and cm["metadata"]["uid"] != old_uid
            and cm
        ),
        what="deleted ConfigMap restored",
    )
    assert json.loads(restored["data"]["scheduler.json"])["policy"] == "larry"

    edit = [{"op": "replace", "path": "/spec/replicas", "value": 7}]
    cluster.patch("deployment", "svc-d-engine", namespace, edit, type_="json")
    edit_cm = {"data": {"scheduler.json": '{"policy":"fcfs"}'}}
    cluster.patch("configmap", "svc-d-scheduler", namespace, edit_cm)
    wait_for(
        lambda: (
            (cluster.get("deployment", "svc-d-engine", namespace) or {})["spec"]["replicas"] == 1
        ),
        what="edited Deployment restored",
    )
    wait_for(
        lambda: (
            json.loads(
                (cluster.get("configmap", "svc-d-scheduler", namespace) or {})["data"][
                    "scheduler.json"
                ]
            )["policy"]
            == "larry"
        ),
        what="edited ConfigMap restored",
    )


def test_restart_writes_nothing(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    for name in ("svc-e", "svc-f"):
        cluster.apply(namespace, manifest(name, replicas=2))
    for name in ("svc-e", "svc-f"):
        all_children(cluster, namespace, name)
        wait_for(
            lambda n=name: (
                (cluster.get("llms", n, namespace) or {})
                .get("status", {})
                .get("observedGeneration")
            ),
            what="status written",
        )
    # let the rollout settle: the status stops changing
    settle_reconciles = operator.reconciles()
    wait_for(
        lambda: operator.reconciles() > settle_reconciles + 2,
        timeout=30,
        what="a few more reconciles (resync every 5 s)",
    )
    before = {n: versions(all_children(cluster, namespace, n)) for n in ("svc-e", "svc-f")}
    status_before = {
        n: (cluster.get("llms", n, namespace) or {})["metadata"]["resourceVersion"]
        for n in ("svc-e", "svc-f")
    }
    operator.stop()
    operator.start()
    # wait until the new process has reconciled both objects at least twice (startup + resync)
    wait_for(lambda: operator.reconciles() >= 4, timeout=30, what="reconciles after restart")
    assert operator.writes() == 0
    after = {n: versions(all_children(cluster, namespace, n)) for n in ("svc-e", "svc-f")}
    assert after == before
    assert {
        n: (cluster.get("llms", n, namespace) or {})["metadata"]["resourceVersion"]
        for n in ("svc-e", "svc-f")
    } == status_before


def test_ready_condition_when_pods_run(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    cluster.require_local("needs the kubelet stand-in: a real cluster cannot pull the test images")
    cluster.apply(namespace, manifest("svc-g", replicas=2))

    def ready() -> dict[str, Any] | None:
        obj = cluster.get("llms", "svc-g", namespace) or {}
        conds = {c["type"]: c for c in obj.get("status", {}).get("conditions", [])}
        return conds if conds.get("Ready", {}).get("status") == "True" else None

    conds = wait_for(ready, timeout=60, what="Ready=True")
    assert conds["Ready"]["reason"] == "Serving"
    assert conds["Degraded"]["status"] == "False"
    obj = cluster.get("llms", "svc-g", namespace)
    assert obj is not None
    assert obj["status"]["readyReplicas"] == 2
    assert obj["status"]["url"] == f"http://svc-g.{namespace}.svc.cluster.local:8000/v1"
    router_cm = cluster.get("configmap", "svc-g-router", namespace)
    assert router_cm is not None
    endpoints = json.loads(router_cm["data"]["router.json"])["endpoints"]
    assert len(endpoints) == 2 and all(e["url"].startswith("http://127.") for e in endpoints)
    events = cluster.kubectl(
        "get", "events", "-n", namespace, "--field-selector", "involvedObject.name=svc-g"
    )
    assert "Serving" in events


def test_invalid_combination_gets_degraded_not_a_crash_loop(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    cluster.apply(namespace, manifest("svc-h", engine={"extraArgs": ["--port=9999"]}))

    def degraded() -> dict[str, Any] | None:
        obj = cluster.get("llms", "svc-h", namespace) or {}
        conds = {c["type"]: c for c in obj.get("status", {}).get("conditions", [])}
        return conds.get("Degraded") if conds.get("Degraded", {}).get("status") == "True" else None

    cond = wait_for(degraded, what="Degraded=True")
    assert cond["reason"] == "InvalidSpec"
    assert "spec.engine.extraArgs[0]" in cond["message"] and "--port" in cond["message"]
    assert cluster.get("deployment", "svc-h-engine", namespace) is None
    # fixing the spec clears the condition and creates the children
    fixed = {"spec": {"engine": {"extraArgs": ["--enable-prefix-caching"]}}}
    cluster.patch("llms", "svc-h", namespace, fixed)
    all_children(cluster, namespace, "svc-h")
    wait_for(lambda: degraded() is None, what="Degraded cleared")
    assert operator.proc is not None and operator.proc.poll() is None


def test_local_control_plane_reports_its_real_version(cluster: Cluster) -> None:
    cluster.require_local("a user's cluster runs whatever version it runs")
    version = json.loads(cluster.kubectl("version", "-o", "json"))["serverVersion"]
    assert (version["gitVersion"], version["major"], version["minor"]) == ("v1.20.2", "1", "20")
