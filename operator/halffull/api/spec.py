"""Typed view of an LLMService, parsed from the API server's (already defaulted) object.

The CRD's OpenAPI schema is the validation users meet; these models repeat its defaults so that
pure code and tests can build children from a bare spec. `tests/unit/test_spec.py` checks that
both sets of defaults agree.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from halffull import defaults as D
from halffull.api.runtime_config import RouterPolicy, RouterTimeouts, SchedulerPolicy
from halffull.api.source import ModelSource, default_source

GROUP = "serving.halffull.dev"
VERSION = "v1alpha1"
KIND = "LLMService"
PLURAL = "llmservices"
API_VERSION = f"{GROUP}/{VERSION}"


class _Model(BaseModel):
    # Fields the schema allows but this version does not read are kept, not refused: the API
    # server already validated the object.
    model_config = ConfigDict(populate_by_name=True, frozen=True, extra="ignore")


class Resources(_Model):
    limits: dict[str, int | str] = Field(default_factory=dict)
    requests: dict[str, int | str] = Field(default_factory=dict)


class EngineSpec(_Model):
    image: str | None = None
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(
        default=None, alias="imagePullPolicy"
    )
    gpus: int = 1
    resources: Resources = Field(default_factory=Resources)
    max_num_seqs: int | None = Field(default=None, alias="maxNumSeqs")
    max_num_batched_tokens: int | None = Field(default=None, alias="maxNumBatchedTokens")
    gpu_memory_utilization: float = Field(default=0.9, alias="gpuMemoryUtilization")
    max_model_len: int | None = Field(default=None, alias="maxModelLen")
    extra_args: tuple[str, ...] = Field(default=(), alias="extraArgs")
    env: tuple[dict[str, Any], ...] = ()
    node_selector: dict[str, str] = Field(default_factory=dict, alias="nodeSelector")
    tolerations: tuple[dict[str, Any], ...] = ()
    api_key_secret: ApiKeySecret | None = Field(default=None, alias="apiKeySecret")
    """When set, engines require this key (vLLM's VLLM_API_KEY) and the router sends it."""


class SchedulerSpec(_Model):
    policy: SchedulerPolicy = D.SCHEDULER_POLICY
    alpha: float = D.ALPHA


class ApiKeySecret(_Model):
    name: str
    key: str = "token"


class RouterSpec(_Model):
    enabled: bool = True
    policy: RouterPolicy = D.ROUTER_POLICY
    beta: float = D.BETA
    poll_interval_ms: int = Field(default=D.POLL_INTERVAL_MS, alias="pollIntervalMs")
    max_attempts: int = Field(default=D.MAX_ATTEMPTS, alias="maxAttempts")
    timeouts: RouterTimeouts = Field(default_factory=RouterTimeouts)
    shed_queued_batches: int = Field(default=D.SHED_QUEUED_BATCHES, alias="shedQueuedBatches")
    replicas: int = 1
    image: str | None = None
    resources: Resources = Field(default_factory=Resources)
    service_type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = Field(
        default="ClusterIP", alias="serviceType"
    )
    api_key_secret: ApiKeySecret | None = Field(default=None, alias="apiKeySecret")


class MetricsSpec(_Model):
    prometheus_url: str | None = Field(default=None, alias="prometheusUrl")
    interval_seconds: int = Field(default=D.METRICS_INTERVAL_S, alias="intervalSeconds")


class LLMServiceSpec(_Model):
    model: str
    source: ModelSource = Field(default_factory=default_source)
    served_model_name: str | None = Field(default=None, alias="servedModelName")
    replicas: int = 1
    engine: EngineSpec = Field(default_factory=EngineSpec)
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)
    router: RouterSpec = Field(default_factory=RouterSpec)
    metrics: MetricsSpec = Field(default_factory=MetricsSpec)

    @property
    def served_name(self) -> str:
        return self.served_model_name or self.model


class ObjectRef(_Model):
    """What the builders need of the LLMService's own metadata."""

    name: str
    namespace: str
    uid: str
    generation: int = 1


class LLMService(_Model):
    meta: ObjectRef
    spec: LLMServiceSpec

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> LLMService:
        md = body["metadata"]
        return cls(
            meta=ObjectRef(
                name=md["name"],
                namespace=md["namespace"],
                uid=md["uid"],
                generation=md.get("generation", 1),
            ),
            spec=LLMServiceSpec.model_validate(body.get("spec") or {}),
        )
