"""Every policy name the project accepts, and what implements it: the one list.

The router's `--policy`, `halffull sim --router`, `RouterConfig.policy` / `SchedulerConfig.policy`
(and through them the LLMService's `spec.router.policy` and `spec.scheduler.policy`), the
simulator and the engine plugin's gauges all read their names here. The CRD's enums are static
YAML; `tests/unit/test_registry.py` checks that they list exactly these names.

Routing policies map to their classes (`halffull.policy.routing`). The engine's admission
orders are one function with three variants (`halffull.policy.larry.order`), so they are a list
of names. The `Literal` types spell the same names for pydantic and mypy; importing this module
fails if a type and its table disagree, so a new policy cannot be half registered.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Literal, get_args

from halffull import defaults as D
from halffull.policy.larry import POLICIES as LARRY_POLICIES
from halffull.policy.larry import LarryPolicy
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
    SalGreedyPolicy,
    SalPolicy,
)

RoutingPolicyName = Literal[
    "sal",
    "sal-greedy",
    "sal-classic",
    "round-robin",
    "random",
    "least-requests",
    "power-of-two",
    "least-kv",
    "queue-kv",
    "llmd-scorer",
    "dynamo-cost",
    "cache-affinity",
]
SchedulerPolicyName = LarryPolicy

ROUTING_POLICIES: Mapping[str, type[RoutingPolicy]] = MappingProxyType(
    {
        cls.name: cls
        for cls in (
            SalPolicy,
            SalGreedyPolicy,
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

SCHEDULER_POLICIES: tuple[SchedulerPolicyName, ...] = LARRY_POLICIES
"""The engine plugin's admission orders (`SchedulerConfig.policy`)."""

for _typed, _table in (
    (RoutingPolicyName, tuple(ROUTING_POLICIES)),
    (SchedulerPolicyName, SCHEDULER_POLICIES),
):
    if set(get_args(_typed)) != set(_table):
        raise ImportError(f"policy names disagree: {get_args(_typed)} vs {_table}")


def make_policy(name: str, *, beta: float = D.BETA, seed: int | None = None) -> RoutingPolicy:
    """A fresh routing policy instance by its configuration name (`RouterConfig.policy`):
    `beta` goes to SAL, `seed` to the policies that draw random numbers."""
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
