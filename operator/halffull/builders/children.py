"""All children of one LLMService, from its spec alone: the reconcile's desired state."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from halffull.api.runtime_config import RouterEndpoint
from halffull.api.spec import LLMService
from halffull.builders import engine, meta, router
from halffull.builders.disruption import PDB_API_VERSIONS, pod_disruption_budget
from halffull.builders.network import engine_network_policy


@dataclass(frozen=True)
class Defaults:
    """Operator-wide settings that children fall back on when the spec leaves them open."""

    engine_image: str
    router_image: str
    cluster_domain: str = "cluster.local"
    pdb_api_version: str = PDB_API_VERSIONS[0]
    """The PodDisruptionBudget version the API server serves (found at start-up)."""
    engine_network_policy: bool = False
    """Build the engines' NetworkPolicy (routers and `scrapers` only)."""
    scrapers: tuple[dict[str, Any], ...] = ()
    """NetworkPolicyPeers of the metrics scrapers allowed to reach the engine pods."""


def desired_children(
    svc: LLMService, defaults: Defaults, endpoints: Sequence[RouterEndpoint] = ()
) -> list[dict[str, Any]]:
    children = [
        engine.scheduler_configmap(svc),
        engine.engine_service(svc),
        engine.engine_deployment(svc, defaults.engine_image),
        router.public_service(svc),
    ]
    if svc.spec.router.enabled:
        children += [
            router.router_configmap(svc, endpoints, defaults.cluster_domain),
            router.router_deployment(svc, defaults.router_image),
        ]
    pdbs = [(meta.engine_name(svc), engine.COMPONENT)]
    if svc.spec.router.enabled:
        pdbs.append((meta.router_name(svc), router.COMPONENT))
    children += [pod_disruption_budget(svc, n, c, defaults.pdb_api_version) for n, c in pdbs]
    # Without the router the public Service points at the engines: nothing to restrict then.
    if defaults.engine_network_policy and svc.spec.router.enabled:
        children.append(engine_network_policy(svc, defaults.scrapers))
    return children
