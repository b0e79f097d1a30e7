"""Names, labels, owner references and the input-hash annotation shared by all children."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from halffull.api.spec import API_VERSION, KIND, LLMService

MANAGED_BY = "halffull-operator"
OWNER_LABEL = "serving.halffull.dev/llmservice"
HASH_ANNOTATION = "serving.halffull.dev/desired-hash"
FIELD_MANAGER = "halffull-operator"

ENGINE_PORT = 8000
ENGINE_PLUGIN_METRICS_PORT = 9464
"""Where the LARRY plugin serves the policy in force and SAL's inputs (see halffull.engine)."""
ROUTER_PORT = 8000
ROUTER_ADMIN_PORT = 9000


def engine_name(svc: LLMService) -> str:
    return f"{svc.meta.name}-engine"


def scheduler_config_name(svc: LLMService) -> str:
    return f"{svc.meta.name}-scheduler"


def router_name(svc: LLMService) -> str:
    return f"{svc.meta.name}-router"


def service_name(svc: LLMService) -> str:
    """The user-facing Service carries the LLMService's own name."""
    return svc.meta.name


def selector_labels(svc: LLMService, component: str) -> dict[str, str]:
    """Labels that select a component's pods. Never changes for a given object and component:
    a Deployment's selector is immutable."""
    return {
        "app.kubernetes.io/name": "halffull",
        "app.kubernetes.io/instance": svc.meta.name,
        "app.kubernetes.io/component": component,
    }


def labels(svc: LLMService, component: str) -> dict[str, str]:
    return {
        **selector_labels(svc, component),
        "app.kubernetes.io/part-of": "halffull",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        OWNER_LABEL: svc.meta.name,
    }


def selector_string(svc: LLMService, component: str) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(selector_labels(svc, component).items()))


def owner_reference(svc: LLMService) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": svc.meta.name,
        "uid": svc.meta.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def object_meta(svc: LLMService, name: str, component: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": svc.meta.namespace,
        "labels": labels(svc, component),
        "ownerReferences": [owner_reference(svc)],
    }


def resource_requirements(
    limits: Mapping[str, object], requests: Mapping[str, object]
) -> dict[str, dict[str, str]]:
    """Core ResourceRequirements with quantities as strings, keys sorted, empty parts left out."""
    out: dict[str, dict[str, str]] = {}
    if limits:
        out["limits"] = {k: str(v) for k, v in sorted(limits.items())}
    if requests:
        out["requests"] = {k: str(v) for k, v in sorted(requests.items())}
    return out


def deployment(
    svc: LLMService,
    name: str,
    component: str,
    replicas: int,
    pod_spec: dict[str, Any],
    strategy: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A Deployment of one component's pods, with the input hash in its annotations."""
    spec: dict[str, Any] = {
        "replicas": replicas,
        "selector": {"matchLabels": selector_labels(svc, component)},
    }
    if strategy is not None:
        spec["strategy"] = strategy
    spec["template"] = {"metadata": {"labels": labels(svc, component)}, "spec": pod_spec}
    return with_hash(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": object_meta(svc, name, component),
            "spec": spec,
        }
    )


def desired_hash(obj: dict[str, Any]) -> str:
    """A stable digest of a desired object, written into its annotation: a changed digest means
    the desired object changed and must be applied."""
    canonical = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def with_hash(obj: dict[str, Any]) -> dict[str, Any]:
    """Return `obj` with the hash of its own content in the metadata annotations."""
    digest = desired_hash(obj)
    meta = dict(obj["metadata"])
    meta["annotations"] = {**meta.get("annotations", {}), HASH_ANNOTATION: digest}
    return {**obj, "metadata": meta}
