"""The chart's RBAC against a real API server: the operator, authenticated with its
ServiceAccount's token (issued by the API server, not the admin token) and run with the chart's
args and env, serves an LLMService end to end, and every request it makes passes through a
recording proxy. The rules suffice (no request refused) and are exact (each granted verb was
used); the ServiceAccount cannot read Secrets or do anything else it was not given."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.chart.apiproxy import Access, ApiRecorder, granted
from tests.chart.conftest import (
    CHART,
    REGISTRY_VALUES,
    ChartOperator,
    Helm,
    find,
    new_namespace,
    one,
    sa_kubeconfig,
)
from tests.conftest import ROOT, Cluster
from tests.conftest import wait_for as wait

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

OWNER_LABEL = "serving.halffull.dev/llmservice"
EXAMPLE = (ROOT / "examples" / "llmservice-basic.yaml").read_text()
NAME = "qwen-small"  # the example's name
# kopf's optional cluster observers, which namespaced mode switches off (exact namespace names).
CLUSTER_OBSERVERS = {
    Access("list", "apiextensions.k8s.io", "customresourcedefinitions"),
    Access("watch", "apiextensions.k8s.io", "customresourcedefinitions"),
}


@dataclass
class Release:
    name: str
    namespace: str
    docs: list[dict[str, Any]]
    sa: str

    def rules(self) -> list[dict[str, Any]]:
        """The rules for the LLMServices' namespaces (the same in each), and leader election's
        on the Lease in the release namespace."""
        lease = [r for r in find(self.docs, "Role") if r["metadata"]["name"].endswith(
            "-leader-election")]  # fmt: skip
        assert len(lease) == 1
        roles = find(self.docs, "ClusterRole") or [
            r for r in find(self.docs, "Role") if r not in lease
        ]
        first = roles[0]["rules"]
        assert all(r["rules"] == first for r in roles)
        return [*first, *lease[0]["rules"]]


def install(helm: Helm, cluster: Cluster, name: str, *values: str) -> Release:
    """The chart installed with the operator pod scaled to 0: the operator runs here instead."""
    namespace = new_namespace(cluster, "hf-sys")
    args = ["--namespace", namespace, "--set", "replicaCount=0", *REGISTRY_VALUES, *values]
    helm.run("install", name, str(CHART), "--wait", "--timeout", "90s", *args,
             kubeconfig=cluster.kubeconfig)  # fmt: skip
    docs = helm.template(*args[2:], namespace=namespace)
    # The release's own name wherever the template has "rel-halffull" (object names, the Lease's
    # name in the args and in the leader-election Role's resourceNames).
    docs = [
        json.loads(json.dumps(d).replace('"rel-', f'"{name}-').replace("=rel-", f"={name}-"))
        for d in docs
        if d["kind"] != "CustomResourceDefinition"
    ]
    sa = one(docs, "ServiceAccount")["metadata"]["name"]
    return Release(name, namespace, docs, sa)


@pytest.fixture
def recorder(chart_cluster: Cluster) -> Iterator[ApiRecorder]:
    rec = ApiRecorder(chart_cluster.kubeconfig)
    rec.start()
    yield rec
    rec.stop()


def refusals(recorder: ApiRecorder) -> dict[Access, set[int]]:
    return {a: s for a, s in recorder.accesses().items() if 403 in s}


def serve_example_end_to_end(
    cluster: Cluster, ns: str, op: ChartOperator, recorder: ApiRecorder
) -> None:
    """What the operator does for one LLMService in its life: create every child and the
    status, post events, restore children someone edited, remove the router when it is
    switched off, and remove a stale child.
    Any request the RBAC refuses fails the test at once (pytest.fail escapes wait_for)."""

    def wait_for(fn: Callable[[], object], timeout: float = 30.0, what: str = "") -> object:
        def guarded() -> object:
            if refused := refusals(recorder):
                pytest.fail(f"the chart's RBAC refused {refused}:\n{op.log()[-3000:]}")
            return fn()

        return wait(guarded, timeout=timeout, what=what)

    cluster.apply(ns, EXAMPLE)
    children = [
        ("deployment", f"{NAME}-engine"), ("service", f"{NAME}-engine"),
        ("configmap", f"{NAME}-scheduler"), ("deployment", f"{NAME}-router"),
        ("configmap", f"{NAME}-router"), ("service", NAME),
    ]  # fmt: skip

    def exists(kind: str, name: str, present: bool = True) -> Callable[[], bool]:
        return lambda: (cluster.get(kind, name, ns) is not None) == present

    for kind, child in children:
        wait_for(exists(kind, child), what=f"{kind}/{child}")

    def ready() -> bool:
        body = cluster.get("llmservice", NAME, ns) or {}
        conds = {c["type"]: c["status"] for c in (body.get("status") or {}).get("conditions", [])}
        return conds.get("Ready") == "True"

    wait_for(ready, timeout=60, what="LLMService Ready (status written by the operator)")
    wait_for(
        lambda: json.loads(cluster.kubectl(
            "get", "events", "-n", ns, "-o", "json",
            "--field-selector", f"involvedObject.kind=LLMService,involvedObject.name={NAME}",
        ))["items"],
        what="an Event on the LLMService",
    )  # fmt: skip

    # Someone edits children the operator created: it puts back what it set (a patch: server-
    # side apply, after folding its create's field ownership).
    edited = {"metadata": {"labels": {"app.kubernetes.io/part-of": "edited"}}}
    kinds = ("deployment", "poddisruptionbudget", "networkpolicy")
    for kind in kinds:
        cluster.patch(kind, f"{NAME}-engine", ns, edited)

    def restored(kind: str) -> Callable[[], bool]:
        def check() -> bool:
            labels = ((cluster.get(kind, f"{NAME}-engine", ns) or {}).get("metadata") or {}).get(
                "labels"
            ) or {}
            return labels.get("app.kubernetes.io/part-of") == "halffull"

        return check

    for kind in kinds:
        wait_for(restored(kind), what=f"{kind}/{NAME}-engine restored")

    cluster.patch("llmservice", NAME, ns, {"spec": {"router": {"enabled": False}}})
    for kind, child in (("deployment", f"{NAME}-router"), ("configmap", f"{NAME}-router")):
        wait_for(exists(kind, child, present=False), what=f"{kind}/{child} removed")

    # A Service of ours that the spec no longer wants (as after a rename): the operator removes it.
    owner = cluster.get("llmservice", NAME, ns)
    assert owner is not None
    stale = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {
            "name": f"{NAME}-stale",
            "labels": {OWNER_LABEL: NAME, "app.kubernetes.io/managed-by": "halffull-operator"},
            "ownerReferences": [{
                "apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": NAME,
                "uid": owner["metadata"]["uid"], "controller": True,
            }],
        },
        "spec": {"ports": [{"port": 80}], "selector": {"app": "none"}},
    }  # fmt: skip
    cluster.apply(ns, json.dumps(stale))
    wait_for(exists("service", f"{NAME}-stale", present=False), what="stale Service removed")
    assert op.proc is not None and op.proc.poll() is None, op.log()[-3000:]


def can_i(cluster: Cluster, release: Release, *args: str) -> bool:
    user = f"system:serviceaccount:{release.namespace}:{release.sa}"
    proc = cluster.run("auth", "can-i", *args, "--as", user)
    assert proc.stdout.strip() in ("yes", "no"), proc.stderr
    return proc.stdout.strip() == "yes"


def serve_with_exact_rbac(
    cluster: Cluster, ns: str, op: ChartOperator, recorder: ApiRecorder, release: Release
) -> set[Access]:
    """Serve the example as the release's service account: nothing it asked was refused and it
    used every access it was granted. Returns those accesses."""
    op.start()
    try:
        serve_example_end_to_end(cluster, ns, op, recorder)
    finally:
        op.stop()
    used = set(recorder.accesses())
    assert refusals(recorder) == {}, op.log()[-3000:]
    allowed = granted(release.rules())
    assert used == allowed, (
        f"granted but never used: {sorted(allowed - used)}; "
        f"used but not granted: {sorted(used - allowed)}"
    )
    return allowed


def test_cluster_wide_rbac_is_sufficient_and_exact(
    helm: Helm, chart_cluster: Cluster, recorder: ApiRecorder, tmp_path: Path
) -> None:
    release = install(helm, chart_cluster, "cw")
    app_ns = new_namespace(chart_cluster, "app")
    kubeconfig = sa_kubeconfig(chart_cluster, release.namespace, release.sa,
                               tmp_path / "sa.kubeconfig", server=recorder.server)  # fmt: skip
    op = ChartOperator(one(release.docs, "Deployment"), kubeconfig, tmp_path / "operator.log")
    assert not any(a.startswith("--namespace") for a in op.args)
    allowed = serve_with_exact_rbac(chart_cluster, app_ns, op, recorder, release)
    assert allowed >= CLUSTER_OBSERVERS
    assert "Forbidden" not in op.log()


def test_namespaced_rbac_is_sufficient_and_exact(
    helm: Helm, chart_cluster: Cluster, recorder: ApiRecorder, tmp_path: Path
) -> None:
    app_ns = new_namespace(chart_cluster, "app")
    other_ns = new_namespace(chart_cluster, "other")
    release = install(helm, chart_cluster, "nsd", "--set", f"operator.watchNamespaces={{{app_ns}}}")
    assert not find(release.docs, "ClusterRole") and not find(release.docs, "ClusterRoleBinding")
    kubeconfig = sa_kubeconfig(chart_cluster, release.namespace, release.sa,
                               tmp_path / "sa.kubeconfig", server=recorder.server)  # fmt: skip
    op = ChartOperator(one(release.docs, "Deployment"), kubeconfig, tmp_path / "operator.log")
    assert f"--namespace={app_ns}" in op.args
    # An LLMService in a namespace it does not watch: it must be left alone (and cannot be read).
    chart_cluster.apply(other_ns, EXAMPLE)
    allowed = serve_with_exact_rbac(chart_cluster, app_ns, op, recorder, release)
    assert not CLUSTER_OBSERVERS & allowed
    assert chart_cluster.get("deployment", f"{NAME}-engine", other_ns) is None
    assert not can_i(chart_cluster, release, "list", "llmservices", "-n", other_ns)
    assert not can_i(chart_cluster, release, "list", "namespaces")


def test_service_account_cannot_read_secrets_or_more(
    helm: Helm, chart_cluster: Cluster, tmp_path: Path
) -> None:
    release = install(helm, chart_cluster, "least")
    app_ns = new_namespace(chart_cluster, "app")
    chart_cluster.kubectl("create", "secret", "generic", "hf-token", "-n", app_ns,
                          "--from-literal=token=s3cret")  # fmt: skip
    # A real request with the ServiceAccount's own token, straight to the API server.
    kubeconfig = sa_kubeconfig(chart_cluster, release.namespace, release.sa, tmp_path / "sa")
    sa = Cluster(kubeconfig, tmp_path, local=chart_cluster.local)
    for args in (["get", "secret", "hf-token", "-n", app_ns], ["get", "secrets", "-A"],
                 ["get", "secrets", "-n", release.namespace]):  # fmt: skip
        proc = sa.run(*args)
        assert proc.returncode != 0 and "Forbidden" in proc.stderr, (args, proc.stderr)
        assert "s3cret" not in proc.stdout
    assert sa.run("get", "llmservices", "-A").returncode == 0  # the token itself works

    assert can_i(chart_cluster, release, "list", "llmservices", "-A")
    assert can_i(
        chart_cluster, release, "patch", "llmservices", "--subresource=status", "-n", app_ns
    )
    # pods: patch (the live-tuning fast path's annotation), never update, create or delete
    assert can_i(chart_cluster, release, "patch", "pods", "-n", app_ns)
    assert not can_i(chart_cluster, release, "patch", "pods", "--subresource=status", "-n", app_ns)
    for verb_resource in (
        ("update", "pods"),
        ("get", "secrets"), ("list", "secrets"), ("watch", "secrets"),
        ("update", "llmservices"), ("patch", "llmservices"), ("delete", "llmservices"),
        ("create", "pods"), ("delete", "pods"), ("create", "pods/exec"), ("get", "pods/log"),
        ("update", "deployments"), ("create", "roles"), ("create", "rolebindings"),
        ("create", "serviceaccounts/token"), ("impersonate", "serviceaccounts"),
        ("patch", "customresourcedefinitions"), ("delete", "namespaces"), ("get", "nodes"),
    ):  # fmt: skip
        assert not can_i(chart_cluster, release, *verb_resource, "-n", app_ns), verb_resource
