"""Disruption budgets, the engines' NetworkPolicy, the engine key and graceful termination, as the
real API server stores them. (Enforcing a NetworkPolicy needs a network plugin that implements
it; the API server validates and stores the object, which is what is tested here.)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.test_operator import manifest
from tests.conftest import Cluster, OperatorProcess, wait_for

pytestmark = pytest.mark.cluster

SCRAPER = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}


def test_budgets_network_policy_and_engine_key_on_the_api_server(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    op = OperatorProcess(
        cluster, namespace, tmp_path / "operator.log",
        extra_args=("--engine-network-policy", "--metrics-scrapers", json.dumps([SCRAPER])),
    )  # fmt: skip
    op.start()
    try:
        cluster.apply(namespace, manifest("prot", engine={"apiKeySecret": {"name": "ek"}}))

        def present() -> dict[str, Any] | None:
            found = {
                "engine-pdb": cluster.get("pdb", "prot-engine", namespace),
                "router-pdb": cluster.get("pdb", "prot-router", namespace),
                "netpol": cluster.get("networkpolicy", "prot-engine", namespace),
                "engine": cluster.get("deployment", "prot-engine", namespace),
                "router": cluster.get("deployment", "prot-router", namespace),
            }
            return None if any(v is None for v in found.values()) else found

        objs: dict[str, Any] = wait_for(present, timeout=30, what="budgets and policy")
        for component in ("engine", "router"):
            pdb, dep = objs[f"{component}-pdb"], objs[component]
            assert pdb["spec"]["maxUnavailable"] == 1
            assert pdb["spec"]["selector"] == dep["spec"]["selector"]
            pod = dep["spec"]["template"]["spec"]
            assert pod["terminationGracePeriodSeconds"] > 300
            assert pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"
        netpol = objs["netpol"]["spec"]
        engine_labels = objs["engine"]["spec"]["template"]["metadata"]["labels"]
        router_labels = objs["router"]["spec"]["template"]["metadata"]["labels"]
        assert netpol["podSelector"]["matchLabels"].items() <= engine_labels.items()
        routers, scraper = netpol["ingress"][0]["from"]
        assert routers["podSelector"]["matchLabels"].items() <= router_labels.items()
        assert scraper == SCRAPER
        env = objs["engine"]["spec"]["template"]["spec"]["containers"][0]["env"]
        (key,) = [e for e in env if e["name"] == "VLLM_API_KEY"]
        assert key["valueFrom"]["secretKeyRef"] == {"name": "ek", "key": "token"}

        # without a router the engines serve the public Service: their policy and the router's
        # budget go
        cluster.patch("llmservice", "prot", namespace, {"spec": {"router": {"enabled": False}}})
        wait_for(
            lambda: (
                cluster.get("pdb", "prot-router", namespace) is None
                and cluster.get("networkpolicy", "prot-engine", namespace) is None
            ),
            timeout=30,
            what="router budget and engine policy removed",
        )
        assert cluster.get("pdb", "prot-engine", namespace) is not None
    finally:
        op.stop()
