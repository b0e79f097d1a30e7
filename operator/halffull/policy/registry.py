"""Every routing policy name the project accepts, and the class that implements it."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from halffull.policy.prefix_routing import CacheAffinityPolicy, DynamoCostPolicy, LlmdScorerPolicy
from halffull.policy.routing import (
    LeastKvPolicy,
    LeastRequestsPolicy,
    PowerOfTwoPolicy,
    QueueKvPolicy,
    RandomPolicy,
    RoundRobinPolicy,
    RoutingPolicy,
    SalClassicPolicy,
    SalPolicy,
)

ROUTING_POLICIES: Mapping[str, type[RoutingPolicy]] = MappingProxyType(
    {
        cls.name: cls
        for cls in (
            SalPolicy,
            SalClassicPolicy,
            RoundRobinPolicy,
            RandomPolicy,
            LeastRequestsPolicy,
            PowerOfTwoPolicy,
            LeastKvPolicy,
            QueueKvPolicy,
            LlmdScorerPolicy,
            DynamoCostPolicy,
            CacheAffinityPolicy,
        )
    }
)
"""Routing policy name -> class, in the order the documentation lists them."""


def make_policy(name: str, *, beta: float = 1.0, seed: int | None = None) -> RoutingPolicy:
    """A fresh routing policy instance by its configuration name (`RouterConfig.policy`)."""
    try:
        cls = ROUTING_POLICIES[name]
    except KeyError:
        known = ", ".join(ROUTING_POLICIES)
        raise ValueError(f"unknown routing policy {name!r}; known: {known}") from None
    if issubclass(cls, SalPolicy):
        return cls(beta=beta)
    if cls is RandomPolicy or cls is PowerOfTwoPolicy:
        return cls(seed=seed)
    return cls()
