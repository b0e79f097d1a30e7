"""The files the operator writes into ConfigMaps and the running engines and routers read.

These two models are the contract between the operator (writer) and the engine plugin and the
router (readers). Both sides parse them with these classes, so a field added here is seen by all.
Unknown keys are refused: a typo in a hand-edited file is an error, not a silent default.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from halffull.policy.registry import RoutingPolicyName, SchedulerPolicyName

SCHEDULER_CONFIG_ENV = "HALFFULL_SCHEDULER_CONFIG"
"""Environment variable that gives the engine plugin the path of its parameter file."""

SCHEDULER_CONFIG_FILE = "scheduler.json"
ENGINE_METRICS_PORT_ENV = "HALFFULL_ENGINE_METRICS_PORT"
"""Environment variable: the port where the engine plugin serves its own gauges."""
ROUTER_CONFIG_FILE = "router.json"

SchedulerPolicy = SchedulerPolicyName
RouterPolicy = RoutingPolicyName
"""The names live in `halffull.policy.registry`."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class SchedulerConfig(_Strict):
    """Parameters of the LARRY engine scheduler (file `scheduler.json`)."""

    policy: SchedulerPolicy = "larry"
    alpha: float = Field(default=0.1, ge=0.0, allow_inf_nan=False)


class RouterEndpoint(_Strict):
    """One engine replica as the operator sees it."""

    name: str = Field(min_length=1)
    url: str = Field(pattern=r"^https?://")
    weight: float = Field(default=1.0, ge=0.0, allow_inf_nan=False)


class RouterDiscovery(_Strict):
    """Where the router may look up engine replicas itself (a headless Service's DNS name)."""

    dns_name: str = Field(alias="dnsName", min_length=1)
    port: int = Field(ge=1, le=65535)


class RouterConfig(_Strict):
    """Configuration of the SAL routing sidecar (file `router.json`)."""

    model: str = Field(min_length=1)
    policy: RouterPolicy = "sal"
    beta: float = Field(default=256.0, ge=0.0, allow_inf_nan=False)
    poll_interval_ms: int = Field(default=100, alias="pollIntervalMs", ge=10, le=60_000)
    max_num_batched_tokens: int | None = Field(default=None, alias="maxNumBatchedTokens", ge=1)
    max_model_len: int | None = Field(default=None, alias="maxModelLen", ge=1)
    endpoints: tuple[RouterEndpoint, ...] = ()
    discovery: RouterDiscovery | None = None
