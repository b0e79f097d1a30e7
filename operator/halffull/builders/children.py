"""All children of one LLMService, from its spec alone: the reconcile's desired state."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from halffull.api.runtime_config import RouterEndpoint
from halffull.api.spec import LLMService
from halffull.builders import engine, router


@dataclass(frozen=True)
class Defaults:
    """Operator-wide settings that children fall back on when the spec leaves them open."""

    engine_image: str
    router_image: str
    cluster_domain: str = "cluster.local"


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
    return children
