"""The chart without a cluster: lint, rendering checked against the Kubernetes schemas and the
CRD, the security and RBAC shape of what it renders, checkov, and the values schema."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from tests.chart.conftest import CHART, REGISTRY, REGISTRY_VALUES, Helm, find, one
from tests.conftest import CRD, ROOT

NON_DEFAULT = [
    "--set", "operator.watchNamespaces={team-a,team-b}",
    "--set", "metrics.serviceMonitor.enabled=true",
    "--set", "metrics.serviceMonitor.labels.release=prom",
    "--set", "metrics.podMonitor.enabled=true",
    "--set", "workloadMonitors.enabled=true",
    "--set", "dashboard.enabled=true",
    "--set", f"image.digest=sha256:{'ab' * 32}",
    "--set", "image.pullPolicy=Always",
    "--set", "podSecurityContext.runAsUser=20000",
    "--set", "engineImage.repository=registry.example/vllm-larry",
    "--set", "engineImage.tag=9.9.9",
    "--set", "operator.verbose=true",
    "--set", "operator.prometheusUrl=http://prometheus.monitoring.svc:9090",
    "--set", "nodeSelector.pool=system",
    "--set", "tolerations[0].key=dedicated",
    "--set", "tolerations[0].operator=Exists",
    "--set", "tolerations[0].effect=NoSchedule",
]  # fmt: skip
KUBE_VERSIONS = ["1.25.0", "1.32.0"]  # the oldest schema set kubernetes-validate ships, and 1.32
MONITOR_KINDS = {"ServiceMonitor", "PodMonitor"}  # prometheus-operator CRDs: no schema offline


def test_lint_strict(helm: Helm) -> None:
    for extra in ([], NON_DEFAULT):
        proc = helm.run("lint", "--strict", str(CHART), *REGISTRY_VALUES, *extra)
        assert "0 chart(s) failed" in proc.stdout, proc.stdout


def test_chart_crd_is_the_source_crd() -> None:
    chart_crd = CHART / "crds" / CRD.name
    assert not chart_crd.is_symlink()
    assert chart_crd.read_bytes() == CRD.read_bytes(), "run hack/sync-crd.sh"
    check = subprocess.run(
        ["bash", str(ROOT / "hack" / "sync-crd.sh"), "--check"], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr


def test_packaged_chart_carries_the_crd(helm: Helm, tmp_path: Path) -> None:
    helm.run("package", str(CHART), "--destination", str(tmp_path))
    (tgz,) = tmp_path.glob("halffull-*.tgz")
    listing = subprocess.run(["tar", "-tzf", str(tgz)], capture_output=True, text=True).stdout
    assert f"halffull/crds/{CRD.name}" in listing.split()
    assert "halffull/values.schema.json" in listing.split()


@pytest.mark.parametrize("values", [[], NON_DEFAULT], ids=["default", "non-default"])
def test_rendered_manifests_are_valid(helm: Helm, values: list[str]) -> None:
    docs = helm.template("--include-crds", *values)
    kinds = sorted(d["kind"] for d in docs)
    assert "CustomResourceDefinition" in kinds and "Deployment" in kinds
    for doc in docs:
        if doc["kind"] in MONITOR_KINDS:
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{doc['kind']} {doc['metadata']['name']} ({version}): {exc.message}")
    (crd,) = find(docs, "CustomResourceDefinition")
    assert crd == yaml.safe_load(CRD.read_text())


def test_example_llmservices_match_the_chart_crd() -> None:
    import jsonschema  # type: ignore[import-untyped]

    crd = yaml.safe_load((CHART / "crds" / CRD.name).read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["served"]]
    schema = version["schema"]["openAPIV3Schema"]
    for example in sorted((ROOT / "examples").glob("llmservice-*.yaml")):
        for body in yaml.safe_load_all(example.read_text()):
            jsonschema.validate(body, schema)
            with pytest.raises(jsonschema.ValidationError):
                jsonschema.validate({**body, "spec": {**body["spec"], "replicas": -1}}, schema)


def test_monitors_select_the_operator(helm: Helm) -> None:
    docs = helm.template(*NON_DEFAULT)
    service = one(docs, "Service")
    monitor = one(docs, "ServiceMonitor")
    (pod_monitor,) = [  # the operator's own; the workload monitors are tested below
        p
        for p in find(docs, "PodMonitor")
        if not p["metadata"]["name"].endswith(("-engines", "-routers"))
    ]
    assert monitor["apiVersion"] == pod_monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prom"
    svc_labels = service["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= svc_labels.items()
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]
    assert [p["name"] for p in service["spec"]["ports"]] == ["metrics"]
    pod = one(docs, "Deployment")["spec"]["template"]
    assert (
        pod_monitor["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    )
    container_ports = {p["name"] for p in pod["spec"]["containers"][0]["ports"]}
    assert pod_monitor["spec"]["podMetricsEndpoints"][0]["port"] in container_ports
    assert not find(helm.template(), "ServiceMonitor") and not find(helm.template(), "PodMonitor")


def test_workload_monitors_select_what_the_operator_builds(helm: Helm) -> None:
    from halffull.api.spec import LLMService
    from halffull.builders.children import Defaults, desired_children

    svc = LLMService.from_body(
        {"metadata": {"name": "m", "namespace": "ns", "uid": "u"}, "spec": {"model": "x"}}
    )
    built = {
        d["metadata"]["name"]: d["spec"]["template"]
        for d in desired_children(svc, Defaults("e", "r"))
        if d["kind"] == "Deployment"
    }
    monitors = {
        p["metadata"]["name"].rsplit("-", 1)[1]: p
        for p in find(helm.template(*NON_DEFAULT), "PodMonitor")
        if p["metadata"]["name"].endswith(("-engines", "-routers"))
    }
    assert set(monitors) == {"engines", "routers"}
    for component, pod in (("engines", built["m-engine"]), ("routers", built["m-router"])):
        spec = monitors[component]["spec"]
        assert spec["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
        ports = {p["name"] for p in pod["spec"]["containers"][0]["ports"]}
        assert spec["podMetricsEndpoints"]
        for endpoint in spec["podMetricsEndpoints"]:
            assert endpoint["port"] in ports
            label = endpoint["relabelings"][0]["sourceLabels"][0]
            assert label == "__meta_kubernetes_pod_label_serving_halffull_dev_llmservice"
        assert "serving.halffull.dev/llmservice" in pod["metadata"]["labels"]
    assert not [p for p in find(helm.template(), "PodMonitor")]


def test_dashboard_is_valid_grafana_json_over_our_metrics(helm: Helm) -> None:
    (cm,) = [c for c in find(helm.template(*NON_DEFAULT), "ConfigMap") if "dashboard" in
             c["metadata"]["name"]]  # fmt: skip
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dash = json.loads(cm["data"]["halffull.json"])
    assert dash == json.loads((CHART / "dashboards" / "halffull.json").read_text())
    exprs = " ".join(t["expr"] for p in dash["panels"] for t in p["targets"])
    for name in ("vllm:time_to_first_token_seconds_bucket", "vllm:num_requests_waiting",
                 "vllm:kv_cache_usage_perc", "halffull_router_choices_total",
                 "halffull_scheduler_alpha", "halffull_router_beta"):  # fmt: skip
        assert name in exprs
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
    assert not [c for c in find(helm.template(), "ConfigMap") if "dashboard" in
                c["metadata"]["name"]]  # fmt: skip


def test_operator_deployment_shape(helm: Helm) -> None:
    docs = helm.template()
    dep = one(docs, "Deployment")
    spec, pod = dep["spec"], dep["spec"]["template"]["spec"]
    assert spec["replicas"] == 1
    # Replicas elect a leader: a rolling update starts the new pod as a standby first.
    assert spec["strategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }  # fmt: skip
    (c,) = pod["containers"]
    assert c["image"] == f"{REGISTRY}/operator:0.1.0"
    assert c["args"][0] == "operator" and "--namespace" not in " ".join(c["args"])
    args = dict(a.split("=", 1) for a in c["args"][1:])
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert args["--health-port"] == str(ports["health"]) == "8081"
    assert args["--metrics-port"] == str(ports["metrics"]) == "8080"
    for probe in (c["livenessProbe"], c["readinessProbe"]):
        assert probe["httpGet"] == {"path": "/healthz", "port": "health"}
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["HALFFULL_ENGINE_IMAGE"] == f"{REGISTRY}/vllm-larry:0.1.0"
    assert env["HALFFULL_ROUTER_IMAGE"] == f"{REGISTRY}/router:0.1.0"
    assert "HALFFULL_PROMETHEUS_URL" not in env  # unset: the operator scrapes the pods itself
    assert c["resources"]["requests"] and c["resources"]["limits"]
    # restricted pod security
    assert pod["securityContext"]["runAsNonRoot"] is True
    dockerfile = (ROOT / "images" / "halffull" / "Dockerfile").read_text()
    (user,) = {line.split()[1] for line in dockerfile.splitlines() if line.startswith("USER ")}
    assert pod["securityContext"]["runAsUser"] == int(user.split(":")[0])  # the image's user
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert pod["serviceAccountName"] == one(docs, "ServiceAccount")["metadata"]["name"]
    for doc in docs:
        labels = doc["metadata"]["labels"]
        for key in ("name", "instance", "component", "version", "managed-by"):
            assert f"app.kubernetes.io/{key}" in labels, (doc["kind"], key)


def test_non_default_values_reach_the_pod(helm: Helm) -> None:
    dep = one(helm.template(*NON_DEFAULT), "Deployment")
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"] == f"{REGISTRY}/operator@sha256:{'ab' * 32}"
    assert c["imagePullPolicy"] == "Always"
    assert [a for a in c["args"] if a.startswith("--namespace")] == [
        "--namespace=team-a",
        "--namespace=team-b",
    ]
    assert "--verbose" in c["args"]
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["HALFFULL_ENGINE_IMAGE"] == "registry.example/vllm-larry:9.9.9"
    assert env["HALFFULL_PROMETHEUS_URL"] == "http://prometheus.monitoring.svc:9090"
    assert pod["nodeSelector"] == {"pool": "system"}
    assert pod["tolerations"] == [
        {"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert pod["securityContext"]["runAsUser"] == 20000


def rules_of(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return list(doc["rules"])


LEASE_RULES = [
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
     "resourceNames": ["rel-halffull"], "verbs": ["get", "update"]},
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
]  # fmt: skip


def split_leader_election(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The docs without the leader-election Role and RoleBinding, after checking those: the one
    Lease in the release namespace, named, and nothing else."""
    lease = [d for d in docs if d["metadata"]["name"].endswith("-leader-election")]
    assert sorted(d["kind"] for d in lease) == ["Role", "RoleBinding"]
    for d in lease:
        assert d["metadata"]["namespace"] == "halffull-system"
    assert one(lease, "Role")["rules"] == LEASE_RULES
    args = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--leader-election-namespace=halffull-system" in args
    assert "--leader-election-name=rel-halffull" in args
    return [d for d in docs if d not in lease]


def test_two_replicas_elect_a_leader(helm: Helm) -> None:
    dep = one(split_leader_election(helm.template("--set", "replicaCount=2")), "Deployment")
    assert dep["spec"]["replicas"] == 2


def test_rbac_modes(helm: Helm) -> None:
    cluster_docs = split_leader_election(helm.template())
    role = one(cluster_docs, "ClusterRole")
    binding = one(cluster_docs, "ClusterRoleBinding")
    assert not find(cluster_docs, "Role") and not find(cluster_docs, "RoleBinding")
    sa = one(cluster_docs, "ServiceAccount")["metadata"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": sa["name"], "namespace": "halffull-system"}
    ]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]

    ns_docs = split_leader_election(
        helm.template("--set", "operator.watchNamespaces={team-a,team-b}")
    )
    assert not find(ns_docs, "ClusterRole") and not find(ns_docs, "ClusterRoleBinding")
    roles, bindings = find(ns_docs, "Role"), find(ns_docs, "RoleBinding")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for b in bindings:
        assert b["subjects"] == binding["subjects"] and b["roleRef"]["kind"] == "Role"
    # The same namespaced rules in both modes; only cluster mode watches CRDs.
    crd_rule = {
        "apiGroups": ["apiextensions.k8s.io"],
        "resources": ["customresourcedefinitions"],
        "verbs": ["list", "watch"],
    }
    assert rules_of(role) == [*rules_of(roles[0]), crd_rule]
    for doc in (role, *roles):
        for rule in rules_of(doc):
            assert "*" not in json.dumps(rule), rule
            assert "secrets" not in rule["resources"]

    off = helm.template("--set", "rbac.create=false")
    assert not {d["kind"] for d in off} & {"ClusterRole", "ClusterRoleBinding", "Role"}


def test_tuning_fast_path_is_the_only_pod_write_and_can_be_dropped(helm: Helm) -> None:
    def pod_verbs(docs: list[dict[str, Any]]) -> list[str]:
        (rule,) = [r for r in one(docs, "ClusterRole")["rules"] if r["resources"] == ["pods"]]
        return list(rule["verbs"])

    def args(docs: list[dict[str, Any]]) -> list[str]:
        return list(one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"])

    on = helm.template()
    assert pod_verbs(on) == ["list", "watch", "patch"]
    assert "--no-tuning-fast-path" not in args(on)
    off = helm.template("--set", "operator.tuningFastPath=false")
    assert pod_verbs(off) == ["list", "watch"] and "--no-tuning-fast-path" in args(off)


def test_existing_service_account(helm: Helm) -> None:
    docs = helm.template("--set", "serviceAccount.create=false", "--set", "serviceAccount.name=ops")
    assert not find(docs, "ServiceAccount")
    assert one(docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "ops"
    assert one(docs, "ClusterRoleBinding")["subjects"][0]["name"] == "ops"
    no_name = ("--set", "serviceAccount.create=false")
    proc = helm.run("template", "rel", str(CHART), *REGISTRY_VALUES, *no_name, check=False)
    assert proc.returncode != 0
    assert "serviceAccount.name is required when serviceAccount.create is false" in proc.stderr


# --- checkov ---------------------------------------------------------------------------------

DEFAULT_SKIPS = {"CKV_K8S_38", "CKV_K8S_43", "CKV_K8S_15"}


def run_checkov(checkov: Path, manifests: Path) -> dict[str, Any]:
    proc = subprocess.run(
        [str(checkov), "--directory", str(manifests), "--framework", "kubernetes",
         "--skip-download", "--output", "json"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert isinstance(report, dict) and report["check_type"] == "kubernetes", proc.stdout[:500]
    return report


@pytest.mark.parametrize(
    ("values", "skips"),
    [([], DEFAULT_SKIPS), (NON_DEFAULT, {"CKV_K8S_38"})],
    ids=["default", "non-default"],
)
def test_checkov_finds_nothing_unjustified(
    helm: Helm, checkov: Path, tmp_path: Path, values: list[str], skips: set[str]
) -> None:
    docs = helm.template(*values)
    (tmp_path / "chart.yaml").write_text(yaml.safe_dump_all(docs))
    report = run_checkov(checkov, tmp_path)
    results, summary = report["results"], report["summary"]
    failed = [(c["check_id"], c["resource"], c["check_name"]) for c in results["failed_checks"]]
    assert failed == [], failed
    assert summary["parsing_errors"] == 0 and summary["passed"] > 50
    skipped = {
        c["check_id"]: c["check_result"].get("suppress_comment") for c in results["skipped_checks"]
    }
    assert set(skipped) == skips
    for check_id, reason in skipped.items():
        assert reason and len(reason) > 40, f"{check_id} skipped without a reason"


def test_checkov_would_fail_without_the_justifications(
    helm: Helm, checkov: Path, tmp_path: Path
) -> None:
    """The skips are what keeps the report clean: stripped, the same checks fail."""
    docs = helm.template()
    for doc in docs:
        annotations = doc["metadata"].get("annotations") or {}
        for key in [k for k in annotations if k.startswith("checkov.io/skip")]:
            del annotations[key]
    (tmp_path / "chart.yaml").write_text(yaml.safe_dump_all(docs))
    report = run_checkov(checkov, tmp_path)
    assert {c["check_id"] for c in report["results"]["failed_checks"]} == DEFAULT_SKIPS


# --- the values schema -----------------------------------------------------------------------

BAD_VALUES = [
    ("negative-replicas", ["--set", "replicaCount=-1"],
     "replicaCount: Must be greater than or equal to 0"),
    ("six-replicas", ["--set", "replicaCount=6"], "replicaCount: Must be less than or equal to 5"),
    ("wrong-type", ["--set", "replicaCount=one"],
     "replicaCount: Invalid type. Expected: integer, given: string"),
    ("unknown-key", ["--set", "replicas=1"], "Additional property replicas is not allowed"),
    ("unknown-nested-key", ["--set", "image.tagg=1.0"],
     "image: Additional property tagg is not allowed"),
    ("namespaces-not-a-list", ["--set", "operator.watchNamespaces=team-a"],
     "operator.watchNamespaces: Invalid type. Expected: array, given: string"),
    ("bad-namespace-name", ["--set", "operator.watchNamespaces={Team_A}"],
     "operator.watchNamespaces.0: Does not match pattern"),
    ("port-out-of-range", ["--set", "ports.metrics=70000"],
     "ports.metrics: Must be less than or equal to 65535"),
    ("bad-pull-policy", ["--set", "image.pullPolicy=Sometimes"],
     "image.pullPolicy: image.pullPolicy must be one of the following"),
    ("unknown-resource", ["--set", "resources.limits.gpu=1"],
     "resources.limits: Additional property gpu is not allowed"),
    ("registry-with-tag", ["--set", "image.registry=registry.example/halffull:1.0"],
     "image.registry: Does not match pattern"),
]  # fmt: skip


def test_no_registry_fails_with_the_command_that_pushes_the_images(helm: Helm) -> None:
    proc = helm.run("template", "rel", str(CHART), check=False)
    assert proc.returncode != 0
    assert "image.registry is required" in proc.stderr and "make images" in proc.stderr
    # every repository named instead: no registry needed
    docs = helm.template(
        "--set", "image.repository=r.example/op", "--set", "engineImage.repository=r.example/e",
        "--set", "routerImage.repository=r.example/r", registry=False,
    )  # fmt: skip
    env = {e["name"]: e["value"] for e in one(docs, "Deployment")["spec"]["template"]["spec"][
        "containers"][0]["env"]}  # fmt: skip
    assert env["HALFFULL_ENGINE_IMAGE"] == "r.example/e:0.1.0"
    assert env["HALFFULL_ROUTER_IMAGE"] == "r.example/r:0.1.0"


@pytest.mark.parametrize(
    ("args", "message"), [(a, m) for _, a, m in BAD_VALUES], ids=[i for i, _, _ in BAD_VALUES]
)
def test_schema_refuses_bad_values(helm: Helm, args: list[str], message: str) -> None:
    proc = helm.run("template", "rel", str(CHART), *args, check=False)
    assert proc.returncode != 0
    assert "values don't meet the specifications of the schema" in proc.stderr
    assert message in proc.stderr, proc.stderr


def test_schema_rejects_unknown_keys_everywhere() -> None:
    """additionalProperties is false on every object the schema describes, except string maps
    (labels, annotations, nodeSelector), whose values must be strings."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    free_form = {"global", "nodeAffinity", "podAffinity", "podAntiAffinity", "namespaceSelector",
                 "podSelector"}  # fmt: skip

    def walk(node: dict[str, Any], path: str) -> None:
        if node.get("type") == "object" and path.rsplit(".", 1)[-1] not in free_form:
            assert "additionalProperties" in node, path
            if node["additionalProperties"] is not False:
                assert node["additionalProperties"] == {"type": "string"}, path
        for key, sub in (node.get("properties") or {}).items():
            walk(sub, f"{path}.{key}")
        if isinstance(node.get("items"), dict):
            walk(node["items"], f"{path}[]")

    walk(schema, "")
    # Every key of values.yaml is described (helm itself checks that the defaults validate).
    assert set(values) <= set(schema["properties"])
