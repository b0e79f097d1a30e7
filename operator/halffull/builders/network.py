"""The engines' NetworkPolicy: engine pods take traffic only from their own router pods and from
the metrics scrapers the operator was told about.

Clients then cannot bypass the router (its authentication, its limits, its routing). The policy
is an API object like any other, but only a network plugin that implements NetworkPolicy
(Calico, Cilium, ...) enforces it; without one it is stored and ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from halffull.api.spec import LLMService
from halffull.builders import engine, meta, router

ENGINE_PORTS = ("http", "sched-metrics")
"""The engine container's named ports: the OpenAI API with vLLM's /metrics, and the plugin's."""


def engine_network_policy(
    svc: LLMService, scrapers: Sequence[dict[str, Any]] = ()
) -> dict[str, Any]:
    """`scrapers`: NetworkPolicyPeers (e.g. Prometheus' namespace, the operator's pod) allowed
    on the same ports as the routers. None given: routers only."""
    ports = [{"port": p, "protocol": "TCP"} for p in ENGINE_PORTS]
    peers: list[dict[str, Any]] = [
        {"podSelector": {"matchLabels": meta.selector_labels(svc, router.COMPONENT)}}
    ]
    peers += [dict(p) for p in scrapers]
    return meta.with_hash(
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": meta.object_meta(svc, meta.engine_name(svc), engine.COMPONENT),
            "spec": {
                "podSelector": {"matchLabels": meta.selector_labels(svc, engine.COMPONENT)},
                "policyTypes": ["Ingress"],
                "ingress": [{"from": peers, "ports": ports}],
            },
        }
    )
