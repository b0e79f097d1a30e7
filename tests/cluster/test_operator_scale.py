"""The operator at scale and under faults, against a real kube-apiserver, with its requests
recorded on the wire: server-side selection, reads from the cache, stale status keys, two
replicas with a leader, an API server restart, a deleted namespace, RBAC refusals."""

from __future__ import annotations

import itertools
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
import yaml
from kubernetes import client, config, watch

from halffull.builders.children import Defaults
from halffull.controller.cache import slim
from halffull.controller.failures import ApiCallError
from halffull.controller.kube import API_READS, API_WRITES, Kube, served_pdb_api_version
from halffull.controller.reconcile import Reconciler
from halffull_dev.testing import prom
from tests.chart.apiproxy import RETRY_AFTER_S, ApiRecorder, Request, token_kubeconfig
from tests.chart.conftest import sa_kubeconfig
from tests.cluster.test_operator import all_children, manifest
from tests.conftest import INERT_IMAGES, Cluster, OperatorProcess, wait_for

pytestmark = pytest.mark.cluster

OWNER_LABEL = "serving.halffull.dev/llmservice"
CHILD_RESOURCES = ("pods", "configmaps", "services", "deployments")


def admin_token(cluster: Cluster) -> str:
    doc = yaml.safe_load(cluster.kubeconfig.read_text())
    return str(doc["users"][0]["user"]["token"])


@pytest.fixture
def recorder(cluster: Cluster) -> Iterator[ApiRecorder]:
    with ApiRecorder(cluster.kubeconfig) as rec:
        yield rec


def proxied(cluster: Cluster, rec: ApiRecorder, path: Path, token: str | None = None) -> Cluster:
    """The cluster as seen through the recording proxy (admin unless `token` is given)."""
    kc = token_kubeconfig(cluster.kubeconfig, token or admin_token(cluster), path, rec.server)
    return Cluster(kc, cluster.workdir, cluster.local)


def resource_of(r: Request) -> str:
    parts = [p for p in r.path.split("/") if p]
    if "namespaces" in parts and len(parts) > parts.index("namespaces") + 2:
        parts = parts[parts.index("namespaces") + 2 :]
    else:
        parts = parts[2:] if parts[0] == "api" else parts[3:]
    return "/".join(parts)


def is_leader(op: OperatorProcess) -> bool:
    return prom.total(op.metrics() or [], "halffull_operator_leader") == 1


def writes_to(rec: ApiRecorder, ns: str, since: int = 0) -> list[str]:
    """PATCH/POST/PUT/DELETE paths the operator sent for children in `ns` (not status, events or
    the Lease)."""
    out = []
    for r in rec.recorded()[since:]:
        if r.method in ("PATCH", "POST", "PUT", "DELETE") and f"/namespaces/{ns}/" in r.path:
            res = resource_of(r)
            if res.split("/")[0] in CHILD_RESOURCES:
                out.append(f"{r.method} {res}")
    return out


def test_child_watches_are_filtered_by_the_api_server_and_reconciles_read_the_cache(
    cluster: Cluster, namespace: str, recorder: ApiRecorder, tmp_path: Path
) -> None:
    cluster.kubectl("create", "configmap", "unrelated", "-n", namespace)
    op = OperatorProcess(proxied(cluster, recorder, tmp_path / "kc"), namespace,
                         tmp_path / "operator.log")  # fmt: skip
    op.start()
    try:
        for name in ("sel-a", "sel-b"):
            cluster.apply(namespace, manifest(name, replicas=2))
        for name in ("sel-a", "sel-b"):
            all_children(cluster, namespace, name)
        # several passes per object: events, then the 5 s resync
        wait_for(lambda: op.reconciles() >= 8, timeout=60, what="reconciles")
    finally:
        op.stop()

    reads = [r for r in recorder.recorded() if r.method == "GET" and "/namespaces/" in r.path]
    child_reads = [r for r in reads if resource_of(r) in CHILD_RESOURCES]
    watches = [r for r in child_reads if parse_qs(r.query).get("watch") == ["true"]]
    assert {resource_of(r) for r in watches} == set(CHILD_RESOURCES)
    for r in child_reads:  # every list and watch of children: filtered by the API server
        selector = parse_qs(r.query).get("labelSelector", [""])[0]
        assert OWNER_LABEL in selector.split(",")[0] and "managed-by" in selector, r
    llms_reads = [r for r in reads if resource_of(r).startswith("llmservices")]
    assert all("labelSelector" not in r.query for r in llms_reads)
    # No GET per reconcile: the children were listed at start-up (the cache's first fill and
    # kopf's), then only watched; no LLMService was read by name.
    by_name = [r for r in child_reads if "fieldSelector=metadata.name" in r.query]
    lists = [r for r in child_reads if r not in watches and r not in by_name]
    assert len(lists) <= 2 * len(CHILD_RESOURCES), lists
    # The only reads by name: before the first change of a child the operator created (the
    # router ConfigMaps', as endpoints appear), to fold the create's field ownership, once.
    names = [parse_qs(r.query)["fieldSelector"][0] for r in by_name]
    assert len(names) == len(set(names)) <= 2, names
    assert not [r for r in llms_reads if resource_of(r).startswith("llmservices/")]


def test_status_recomputed_so_a_key_that_no_longer_applies_disappears(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    cluster.apply(namespace, manifest("stale", router={"policy": "round-robin"}))
    wait_for(lambda: ((cluster.get("llms", "stale", namespace) or {}).get("status") or {})
             .get("router"), what="status.router")  # fmt: skip
    cluster.patch("llms", "stale", namespace, {"spec": {"router": {"enabled": False}}})

    def router_gone() -> bool:
        obj = cluster.get("llms", "stale", namespace) or {}
        st = obj.get("status") or {}
        return st.get("observedGeneration") == obj["metadata"]["generation"] and "router" not in st

    wait_for(router_gone, what="status.router removed")
    assert cluster.get("deployment", "stale-router", namespace) is None


def test_two_replicas_one_leads_and_the_other_takes_over_without_double_writes(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    election = ("--leader-election-namespace", namespace, "--leader-election-lease-seconds", "10")
    recs = [ApiRecorder(cluster.kubeconfig) for _ in range(2)]
    ops: list[OperatorProcess] = []
    for i, rec in enumerate(recs):
        rec.start()
        view = proxied(cluster, rec, tmp_path / f"kc{i}")
        ops.append(OperatorProcess(view, namespace, tmp_path / f"op{i}.log", extra_args=election))
    first, second = ops
    try:
        first.start()
        wait_for(lambda: is_leader(first), what="the first replica leads")
        second.start()
        cluster.apply(namespace, manifest("ha", replicas=2))
        all_children(cluster, namespace, "ha")
        wait_for(lambda: first.reconciles() >= 3, what="a resync by the leader")
        assert not is_leader(second) and second.reconciles() == 0
        assert writes_to(recs[1], namespace) == []

        def engine_pods() -> list[str]:
            selector = f"{OWNER_LABEL}=ha,app.kubernetes.io/component=engine"
            out = cluster.kubectl("get", "pods", "-n", namespace, "-o", "name", "-l", selector)
            return sorted(line.removeprefix("pod/") for line in out.split())

        def alpha_is(value: float) -> bool:
            cm = cluster.get("configmap", "ha-scheduler", namespace) or {}
            return bool(json.loads(cm["data"]["scheduler.json"]).get("alpha") == value)

        # One change: the scheduler ConfigMap and a touch of each engine pod (the live-tuning
        # fast path), each written once. The ConfigMap's first change after its create is two
        # PATCHes: our create's field ownership folded into our apply's, then the apply.
        once = ["PATCH configmaps/ha-scheduler", "PATCH configmaps/ha-scheduler",
                *(f"PATCH pods/{p}" for p in engine_pods())]  # fmt: skip
        marks = [len(r.recorded()) for r in recs]
        cluster.patch("llms", "ha", namespace, {"spec": {"scheduler": {"alpha": 0.3}}})
        wait_for(lambda: alpha_is(0.3), what="alpha 0.3 applied by the leader")
        wait_for(lambda: len(writes_to(recs[0], namespace, marks[0])) >= len(once),
                 what="the engine pods touched")  # fmt: skip
        time.sleep(1)
        assert sorted(writes_to(recs[0], namespace, marks[0])) == once
        assert writes_to(recs[1], namespace, marks[1]) == []

        # The leader dies without a word; a change arrives while nobody leads.
        marks = [len(r.recorded()) for r in recs]
        assert first.proc is not None
        os.kill(first.proc.pid, signal.SIGKILL)
        killed = time.monotonic()
        cluster.patch("llms", "ha", namespace, {"spec": {"scheduler": {"alpha": 0.4}}})
        wait_for(lambda: is_leader(second), timeout=60, what="the standby takes over")
        takeover = time.monotonic() - killed
        wait_for(lambda: alpha_is(0.4), what="alpha 0.4 applied by the new leader")
        wait_for(lambda: second.reconciles() >= 3, what="resyncs by the new leader")
        print(f"\ntakeover after the leader was killed: {takeover:.1f} s (Lease 10 s)")
        # Each change written once, by one replica; nothing else rewritten by the new leader.
        once = ["PATCH configmaps/ha-scheduler", *(f"PATCH pods/{p}" for p in engine_pods())]
        assert writes_to(recs[0], namespace, marks[0]) == []
        assert sorted(writes_to(recs[1], namespace, marks[1])) == once
    finally:
        for op in ops:
            op.stop()
        for rec in recs:
            rec.stop()


def test_apiserver_restart_reconnects_and_loses_nothing(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    if cluster.control_plane is None:
        pytest.skip("restarts the local control plane's API server")
    cluster.apply(namespace, manifest("rs", replicas=1))
    all_children(cluster, namespace, "rs")
    cluster.control_plane.restart_apiserver(down_s=3)
    # A change and a deletion right after the restart: both must be acted on.
    cluster.patch("llms", "rs", namespace, {"spec": {"replicas": 3}})
    cluster.kubectl("delete", "service", "rs", "-n", namespace)
    wait_for(lambda: ((cluster.get("deployment", "rs-engine", namespace) or {}).get("spec") or {})
             .get("replicas") == 3, timeout=120, what="replicas 3 after the restart")  # fmt: skip
    wait_for(lambda: cluster.get("service", "rs", namespace), timeout=60, what="Service restored")
    assert operator.proc is not None and operator.proc.poll() is None


def test_deleted_namespace_children_are_not_recreated(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    for name in ("gone-a", "gone-b"):
        cluster.apply(namespace, manifest(name))
    for name in ("gone-a", "gone-b"):
        all_children(cluster, namespace, name)
    api = config.new_client_from_config(str(cluster.kubeconfig))
    core = client.CoreV1Api(api)
    rv = core.list_namespaced_config_map(namespace).metadata.resource_version
    created: list[str] = []
    stop = threading.Event()

    def record() -> None:
        w = watch.Watch()
        for ev in w.stream(core.list_namespaced_config_map, namespace, resource_version=rv,
                           timeout_seconds=90):  # fmt: skip
            if ev["type"] == "ADDED":
                created.append(ev["object"].metadata.name)
            if stop.is_set():
                w.stop()

    watcher = threading.Thread(target=record, daemon=True)
    watcher.start()
    cluster.kubectl("delete", "namespace", namespace, "--wait=false")
    wait_for(lambda: cluster.run("get", "namespace", namespace).returncode != 0, timeout=120,
             what="namespace gone")  # fmt: skip
    stop.set()
    assert created == [], f"children recreated in a deleted namespace: {created}"
    writes = operator.writes()
    time.sleep(6)  # past a resync: nothing left to retry
    assert operator.writes() == writes
    assert operator.proc is not None and operator.proc.poll() is None


def test_forbidden_child_kind_is_degraded_with_verb_and_kind(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    """The operator's account may do everything except write Deployments."""
    rules: list[dict[str, Any]] = [
        {"apiGroups": ["serving.halffull.dev"], "resources": ["llmservices"],
         "verbs": ["list", "watch"]},
        {"apiGroups": ["serving.halffull.dev"], "resources": ["llmservices/status"],
         "verbs": ["patch"]},
        {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["list", "watch"]},
        {"apiGroups": [""], "resources": ["services", "configmaps"],
         "verbs": ["list", "watch", "create", "patch", "delete"]},
        {"apiGroups": ["policy"], "resources": ["poddisruptionbudgets"],
         "verbs": ["list", "watch", "create", "patch", "delete"]},
        {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"],
         "verbs": ["list", "watch", "create", "patch", "delete"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch", "patch"]},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
    ]  # fmt: skip
    docs = [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "limited"}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": "limited"}, "rules": rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": "limited"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "limited"},
         "subjects": [{"kind": "ServiceAccount", "name": "limited", "namespace": namespace}]},
    ]  # fmt: skip
    for doc in docs:
        cluster.apply(namespace, json.dumps(doc))
    kc = sa_kubeconfig(cluster, namespace, "limited", tmp_path / "sa.kubeconfig")
    op = OperatorProcess(Cluster(kc, cluster.workdir, cluster.local), namespace,
                         tmp_path / "operator.log")  # fmt: skip
    op.start()
    try:
        cluster.apply(namespace, manifest("nodeploy"))

        def degraded() -> dict[str, Any] | None:
            obj = cluster.get("llms", "nodeploy", namespace) or {}
            conds = {c["type"]: c for c in (obj.get("status") or {}).get("conditions", [])}
            cond = conds.get("Degraded") or {}
            return cond if cond.get("status") == "True" else None

        cond = wait_for(degraded, what="Degraded=True")
        assert cond["reason"] == "Forbidden"
        assert "create Deployment" in cond["message"], cond["message"]
        assert cluster.get("configmap", "nodeploy-scheduler", namespace) is not None
        events = cluster.kubectl("get", "events", "-n", namespace, "--field-selector",
                                 "involvedObject.name=nodeploy,reason=Forbidden")  # fmt: skip
        assert "create Deployment" in events
        reconciles = op.reconciles()
        time.sleep(3)  # retries back off: a handful, not one per event or per 100 ms
        assert op.reconciles() - reconciles <= 4
    finally:
        op.stop()


def test_busy_or_failing_api_server_is_retried_with_backoff(
    cluster: Cluster, namespace: str, recorder: ApiRecorder, tmp_path: Path
) -> None:
    """The proxy answers the first writes of the engine Deployment with 429 (Retry-After), 503
    and 500: each is retried, after at least the Retry-After and then with growing waits, and
    said in Degraded and a Warning Event; the pass that succeeds clears Degraded."""
    injected = [429, 503, 500]
    refused_at: list[float] = []

    def fault(method: str, path: str) -> int | None:
        # The create of the one Deployment (no router): one refusal per pass.
        if method == "POST" and path.endswith("/deployments") and len(refused_at) < len(injected):
            refused_at.append(time.monotonic())
            return injected[len(refused_at) - 1]
        return None

    recorder.fault = fault
    op = OperatorProcess(proxied(cluster, recorder, tmp_path / "kc"), namespace,
                         tmp_path / "operator.log")  # fmt: skip
    op.start()
    try:
        cluster.apply(namespace, manifest("busy", router={"enabled": False}))
        wait_for(lambda: cluster.get("deployment", "busy-engine", namespace),
                 what="the engine Deployment")  # fmt: skip
        retried_at = next(
            r for r in recorder.recorded()
            if r.method == "POST" and r.path.endswith("/deployments") and r.status < 300
        )  # fmt: skip
        assert retried_at and len(refused_at) == 3

        def clear() -> bool:
            obj = cluster.get("llms", "busy", namespace) or {}
            conds = {c["type"]: c for c in (obj.get("status") or {}).get("conditions", [])}
            return (conds.get("Degraded") or {}).get("status") == "False"

        wait_for(clear, what="Degraded cleared by the pass that succeeded")
    finally:
        op.stop()
    # Waits: at least the Retry-After after the 429; then attempt 2 (0.5-1 s) and 3 (1-2 s).
    gaps = [b - a for a, b in itertools.pairwise(refused_at)]
    assert gaps[0] >= RETRY_AFTER_S and gaps[1] >= 0.5, gaps
    events = cluster.kubectl("get", "events", "-n", namespace, "--field-selector",
                             "involvedObject.name=busy,type=Warning")  # fmt: skip
    assert "ApiServerBusy" in events and "ApiServerError" in events, events
    assert "create Deployment" in events


def test_conflict_rereads_the_llmservice_and_runs_the_pass_again(
    cluster: Cluster, namespace: str
) -> None:
    """A reconcile from a stale cached LLMService: its status write is refused (409, it carries
    the old resourceVersion), the object is read again and the pass succeeds on the new one."""
    cluster.apply(namespace, manifest("cf"))
    api = config.new_client_from_config(str(cluster.kubeconfig))
    pdb = served_pdb_api_version(api)
    kube = Kube(api, pdb_api_version=pdb)
    reconciler = Reconciler(kube, Defaults(*INERT_IMAGES, pdb_api_version=pdb), touch_pods=False)
    stale = kube.get_llmservice(namespace, "cf")
    assert stale is not None
    cluster.patch("llms", "cf", namespace, {"metadata": {"labels": {"edited": "yes"}}})
    reconciler.cache.put("LLMService", stale)
    reads = API_READS.labels("list", "LLMService")._value.get()

    outcome = reconciler.reconcile(namespace, "cf")

    assert outcome.status_written and not outcome.problems
    assert API_READS.labels("list", "LLMService")._value.get() == reads + 1  # one re-read
    fresh = cluster.get("llms", "cf", namespace) or {}
    assert fresh["metadata"]["labels"] == {"edited": "yes"}
    assert fresh["status"]["observedGeneration"] == fresh["metadata"]["generation"]
    cached = reconciler.cache.get("LLMService", namespace, "cf") or {}
    assert cached["metadata"]["resourceVersion"] == fresh["metadata"]["resourceVersion"]
    all_children(cluster, namespace, "cf")


def test_a_created_child_changed_later_loses_what_we_dropped_and_keeps_what_others_set(
    cluster: Cluster, namespace: str
) -> None:
    """A missing child is created with POST (our fields under an Update entry); its first
    change folds that entry into our Apply entry, so the apply removes a data key and a label
    we no longer set, while an annotation another manager set stays."""
    api = config.new_client_from_config(str(cluster.kubeconfig))
    kube = Kube(api, pdb_api_version=served_pdb_api_version(api))
    ours = {OWNER_LABEL: "none", "app.kubernetes.io/managed-by": "halffull-operator"}
    first = {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "folded", "namespace": namespace,
                     "labels": {**ours, "keep": "1", "drop": "1"}},
        "data": {"keep": "a", "drop": "b"},
    }  # fmt: skip
    created = kube.write(first, None)
    assert [(e["manager"], e["operation"]) for e in created["metadata"]["managedFields"]] == [
        ("halffull-operator", "Update")
    ]
    cluster.patch("configmap", "folded", namespace,
                  {"metadata": {"annotations": {"someone/else": "x"}}})  # fmt: skip
    second = {**first, "metadata": {**first["metadata"], "labels": {**ours, "keep": "2"}},
              "data": {"keep": "c"}}  # fmt: skip
    # The fold is conditional on the version read: an older one gets 409.
    with pytest.raises(ApiCallError) as stale:
        kube.fold_ownership(second, created)
    assert stale.value.status == 409
    cached = slim("ConfigMap", created)  # what the cache holds: who manages how, not the fields

    written = kube.write(second, cached)

    assert written["data"] == {"keep": "c"}, (cached, written["metadata"]["managedFields"])
    assert written["metadata"]["labels"] == {**ours, "keep": "2"}
    assert written["metadata"]["annotations"] == {"someone/else": "x"}
    managers = [(e["manager"], e["operation"]) for e in written["metadata"]["managedFields"]]
    assert sorted(managers) == [("halffull-operator", "Apply"), ("kubectl-patch", "Update")]
    # Later changes are plain applies.
    writes = API_WRITES.labels("fold-ownership", "ConfigMap")._value.get()
    third = {**second, "data": {"keep": "d"}}
    assert kube.write(third, slim("ConfigMap", written))["data"] == {"keep": "d"}
    assert API_WRITES.labels("fold-ownership", "ConfigMap")._value.get() == writes
