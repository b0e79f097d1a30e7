"""The pure builders: exact output for a full spec (golden file), and the properties that matter
most to users: tuning never touches a pod template, and the hash moves exactly with the content."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from halffull.api.runtime_config import RouterEndpoint
from halffull.api.spec import LLMService
from halffull.builders import meta
from halffull.builders.children import Defaults, desired_children
from halffull.builders.engine import vllm_args
from halffull.policy.registry import ROUTING_POLICIES, SCHEDULER_POLICIES

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "golden"
DEFAULTS = Defaults("registry.example/vllm-larry:1", "registry.example/router:1")


def service(spec: dict[str, Any], name: str = "llama-8b") -> LLMService:
    return LLMService.from_body(
        {"metadata": {"name": name, "namespace": "ml", "uid": "u-1", "generation": 3}, "spec": spec}
    )


def example(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((ROOT / "examples" / name).read_text())
    return doc


def test_children_of_the_tuned_example_match_golden_file() -> None:
    svc = service(example("llmservice-tuned.yaml")["spec"])
    endpoints = [RouterEndpoint(name="llama-8b-engine-a", url="http://10.1.0.7:8000")]
    got = desired_children(svc, DEFAULTS, endpoints)
    path = GOLDEN / "llmservice-tuned.children.yaml"
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(yaml.safe_dump_all(got, sort_keys=True))
    assert got == list(yaml.safe_load_all(path.read_text()))


def test_vllm_args_follow_the_spec() -> None:
    svc = service({"model": "m", "engine": {"gpus": 4, "maxModelLen": 4096,
                                            "extraArgs": ["--enable-prefix-caching"]}})  # fmt: skip
    args = vllm_args(svc)
    pairs = dict(zip(args[::2], args[1::2], strict=False))
    assert pairs["--model"] == "m" and pairs["--served-model-name"] == "m"
    assert pairs["--tensor-parallel-size"] == "4"
    assert pairs["--max-model-len"] == "4096"
    assert "--max-num-seqs" not in args  # unset fields keep vLLM's own defaults
    assert args[-1] == "--enable-prefix-caching"


def test_one_gpu_means_no_tensor_parallel_flag_and_zero_gpus_no_gpu_request() -> None:
    assert "--tensor-parallel-size" not in vllm_args(service({"model": "m"}))
    dep = desired_children(service({"model": "m", "engine": {"gpus": 0}}), DEFAULTS)[2]
    resources = dep["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert "nvidia.com/gpu" not in str(resources)


def test_router_disabled_removes_router_children_and_service_targets_engines() -> None:
    kinds = [(c["kind"], c["metadata"]["name"]) for c in desired_children(
        service({"model": "m", "router": {"enabled": False}}), DEFAULTS)]  # fmt: skip
    assert ("Deployment", "llama-8b-router") not in kinds
    assert ("ConfigMap", "llama-8b-router") not in kinds
    public = next(c for c in desired_children(
        service({"model": "m", "router": {"enabled": False}}), DEFAULTS)
        if c["kind"] == "Service" and c["metadata"]["name"] == "llama-8b")  # fmt: skip
    assert public["spec"]["selector"]["app.kubernetes.io/component"] == "engine"


def test_pods_run_restricted() -> None:
    for child in desired_children(service({"model": "m"}), DEFAULTS):
        if child["kind"] != "Deployment":
            continue
        pod = child["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"] == {"drop": ["ALL"]}


tuning = st.fixed_dictionaries(
    {
        "scheduler": st.fixed_dictionaries(
            {
                "policy": st.sampled_from(SCHEDULER_POLICIES),
                "alpha": st.floats(0, 1e6, allow_nan=False),
            }
        ),
        "router": st.fixed_dictionaries(
            {
                "policy": st.sampled_from(list(ROUTING_POLICIES)),
                "beta": st.floats(0, 1e6, allow_nan=False),
                "pollIntervalMs": st.integers(10, 60_000),
            }
        ),
    }
)


@settings(max_examples=60, deadline=None)
@given(a=tuning, b=tuning)
def test_tuning_changes_only_configmaps(a: dict[str, Any], b: dict[str, Any]) -> None:
    def by_kind(spec: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
        objs = desired_children(service({"model": "m", **spec}), DEFAULTS)
        return {(o["kind"], o["metadata"]["name"]): o for o in objs}

    first, second = by_kind(a), by_kind(b)
    assert first.keys() == second.keys()
    for key in first:
        if key[0] != "ConfigMap":
            assert first[key] == second[key], key  # Deployments and Services byte-identical
    if a != b:
        changed = [k for k in first if first[k] != second[k]]
        assert changed and all(kind == "ConfigMap" for kind, _ in changed)


def test_hash_annotation_moves_with_content_only() -> None:
    one = desired_children(service({"model": "m", "replicas": 1}), DEFAULTS)[2]
    again = desired_children(service({"model": "m", "replicas": 1}), DEFAULTS)[2]
    two = desired_children(service({"model": "m", "replicas": 2}), DEFAULTS)[2]
    h = meta.HASH_ANNOTATION
    assert one["metadata"]["annotations"][h] == again["metadata"]["annotations"][h]
    assert one["metadata"]["annotations"][h] != two["metadata"]["annotations"][h]


def test_endpoint_table_is_sorted_so_pod_order_does_not_rewrite_the_configmap() -> None:
    a = RouterEndpoint(name="p-a", url="http://127.0.0.2:8000")
    b = RouterEndpoint(name="p-b", url="http://127.0.0.3:8000")
    svc = service({"model": "m"})
    assert desired_children(svc, DEFAULTS, [a, b]) == desired_children(svc, DEFAULTS, [b, a])


def test_pods_run_as_the_images_user() -> None:
    import re

    from halffull.builders.security import RUN_AS_USER

    for image in ("vllm-larry", "halffull"):  # halffull: the operator and router targets
        text = (ROOT / "images" / image / "Dockerfile").read_text()
        users = re.findall(r"^USER\s+(\d+)", text, flags=re.MULTILINE)
        assert users and users[-1] == str(RUN_AS_USER), image


def by_kind(children: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {c["metadata"]["name"]: c for c in children if c["kind"] == kind}


def test_engines_take_traffic_only_from_their_routers_and_the_scrapers() -> None:
    scraper = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    with_policy = Defaults("e", "r", engine_network_policy=True, scrapers=(scraper,))
    children = desired_children(service({"model": "m"}), with_policy)
    (policy,) = by_kind(children, "NetworkPolicy").values()
    engine_pods = by_kind(children, "Deployment")["llama-8b-engine"]["spec"]["template"]
    router_pods = by_kind(children, "Deployment")["llama-8b-router"]["spec"]["template"]
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert selector.items() <= engine_pods["metadata"]["labels"].items()
    assert not selector.items() <= router_pods["metadata"]["labels"].items()
    (rule,) = policy["spec"]["ingress"]
    routers, *others = rule["from"]
    assert (
        routers["podSelector"]["matchLabels"].items() <= router_pods["metadata"]["labels"].items()
    )
    assert others == [scraper]
    named = {p["name"] for p in engine_pods["spec"]["containers"][0]["ports"]}
    assert {p["port"] for p in rule["ports"]} == named
    # off by default, and pointless without a router (the Service then targets the engines)
    assert not by_kind(desired_children(service({"model": "m"}), DEFAULTS), "NetworkPolicy")
    no_router = service({"model": "m", "router": {"enabled": False}})
    assert not by_kind(desired_children(no_router, with_policy), "NetworkPolicy")


def test_a_disruption_budget_per_component_lets_drains_evict_one_pod_at_a_time() -> None:
    children = desired_children(service({"model": "m", "replicas": 3}),
                                Defaults("e", "r", pdb_api_version="policy/v1beta1"))  # fmt: skip
    pdbs = by_kind(children, "PodDisruptionBudget")
    deployments = by_kind(children, "Deployment")
    assert set(pdbs) == set(deployments)
    for name, pdb in pdbs.items():
        assert pdb["apiVersion"] == "policy/v1beta1"
        assert pdb["spec"]["maxUnavailable"] == 1
        assert pdb["spec"]["selector"] == deployments[name]["spec"]["selector"]
    no_router = desired_children(service({"model": "m", "router": {"enabled": False}}), DEFAULTS)
    assert set(by_kind(no_router, "PodDisruptionBudget")) == {"llama-8b-engine"}
    with pytest.raises(ValueError, match="apiVersion"):
        desired_children(service({"model": "m"}), Defaults("e", "r", pdb_api_version="policy/v2"))


def test_pods_get_time_to_finish_streams_when_deleted() -> None:
    from halffull import defaults as D

    for dep in by_kind(desired_children(service({"model": "m"}), DEFAULTS), "Deployment").values():
        pod = dep["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        sleep = container["lifecycle"]["preStop"]["exec"]["command"]
        assert sleep == ["sleep", str(D.PRESTOP_SLEEP_S)]
        assert pod["terminationGracePeriodSeconds"] > D.PRESTOP_SLEEP_S + D.DRAIN_GRACE_S


def test_engine_key_comes_from_the_secret_and_never_appears_in_the_spec() -> None:
    svc = service({"model": "m", "engine": {"apiKeySecret": {"name": "engine-key"}}})
    router = by_kind(desired_children(svc, DEFAULTS), "Deployment")["llama-8b-router"]
    pod = router["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    path = args[args.index("--engine-api-key-file") + 1]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "engine-key"]
    assert volume["secret"]["secretName"] == "engine-key" and path.endswith("/token")
    dep = by_kind(desired_children(svc, DEFAULTS), "Deployment")["llama-8b-engine"]
    env = {e["name"]: e for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["VLLM_API_KEY"]["valueFrom"] == {
        "secretKeyRef": {"name": "engine-key", "key": "token"}
    }
    assert "VLLM_API_KEY" not in {
        e["name"] for e in by_kind(desired_children(service({"model": "m"}), DEFAULTS),
                                   "Deployment")["llama-8b-engine"]["spec"]["template"]["spec"][
            "containers"][0]["env"]
    }  # fmt: skip
