"""The routing sidecar: its Deployment, its ConfigMap and the user-facing Service.

Router parameters and the endpoint table live only in the ConfigMap, which the router reloads
while running; the pod template never carries them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from halffull import defaults as D
from halffull.api.runtime_config import (
    ROUTER_CONFIG_FILE,
    RouterConfig,
    RouterDiscovery,
    RouterEndpoint,
)
from halffull.api.spec import LLMService
from halffull.builders import engine as engine_builders
from halffull.builders import meta
from halffull.builders.disruption import graceful
from halffull.builders.security import container_security_context, pod_security_context

COMPONENT = "router"
CONFIG_MOUNT = "/etc/halffull/router"
AUTH_MOUNT = "/etc/halffull/auth"
ENGINE_KEY_MOUNT = "/etc/halffull/engine-key"
DEFAULT_RESOURCES = {
    "requests": {"cpu": "250m", "memory": "128Mi"},
    "limits": {"memory": "512Mi"},
}


def router_config(
    svc: LLMService, endpoints: Sequence[RouterEndpoint], cluster_domain: str
) -> RouterConfig:
    spec = svc.spec
    return RouterConfig(
        model=spec.served_name,
        policy=spec.router.policy,
        beta=spec.router.beta,
        poll_interval_ms=spec.router.poll_interval_ms,
        max_attempts=spec.router.max_attempts,
        timeouts=spec.router.timeouts,
        shed_queued_batches=spec.router.shed_queued_batches,
        engine_metrics_port=meta.ENGINE_PLUGIN_METRICS_PORT,
        max_num_batched_tokens=spec.engine.max_num_batched_tokens,
        max_model_len=spec.engine.max_model_len,
        endpoints=tuple(sorted(endpoints, key=lambda e: e.name)),
        discovery=RouterDiscovery(
            dns_name=f"{meta.engine_name(svc)}.{svc.meta.namespace}.svc.{cluster_domain}",
            port=meta.ENGINE_PORT,
        ),
    )


def router_configmap(
    svc: LLMService, endpoints: Sequence[RouterEndpoint], cluster_domain: str
) -> dict[str, Any]:
    body = router_config(svc, endpoints, cluster_domain).model_dump(
        mode="json", by_alias=True, exclude_none=True
    )
    return meta.with_hash(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": meta.object_meta(svc, meta.router_name(svc), COMPONENT),
            "data": {ROUTER_CONFIG_FILE: json.dumps(body, sort_keys=True, indent=1) + "\n"},
        }
    )


def _resources(svc: LLMService) -> dict[str, Any]:
    res = svc.spec.router.resources
    if not res.limits and not res.requests:
        return DEFAULT_RESOURCES
    return meta.resource_requirements(res.limits, res.requests)


def router_deployment(svc: LLMService, default_image: str) -> dict[str, Any]:
    router = svc.spec.router
    args = [
        "router",
        "--config", f"{CONFIG_MOUNT}/{ROUTER_CONFIG_FILE}",
        "--host", "0.0.0.0",
        "--port", str(meta.ROUTER_PORT),
        "--admin-port", str(meta.ROUTER_ADMIN_PORT),
    ]  # fmt: skip
    mounts = [
        {"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": meta.router_name(svc)}},
        {"name": "tmp", "emptyDir": {}},
    ]
    keys = [
        ("--api-key-file", "api-key", AUTH_MOUNT, router.api_key_secret),
        # the key the engines require; the router sends it
        ("--engine-api-key-file", "engine-key", ENGINE_KEY_MOUNT, svc.spec.engine.api_key_secret),
    ]
    for flag, volume, mount, secret in keys:
        if secret is None:
            continue
        args += [flag, f"{mount}/{secret.key}"]
        mounts.append({"name": volume, "mountPath": mount, "readOnly": True})
        items = [{"key": secret.key, "path": secret.key}]
        volumes.append({"name": volume, "secret": {"secretName": secret.name, "items": items}})
    probe_port = {"port": "admin"}
    container: dict[str, Any] = {
        "name": "router",
        "image": router.image or default_image,
        "command": ["halffull"],
        "args": args,
        "ports": [
            {"name": "http", "containerPort": meta.ROUTER_PORT, "protocol": "TCP"},
            {"name": "admin", "containerPort": meta.ROUTER_ADMIN_PORT, "protocol": "TCP"},
        ],
        "resources": _resources(svc),
        "readinessProbe": {"httpGet": {"path": "/ready", **probe_port}, "periodSeconds": 5},
        "livenessProbe": {
            "httpGet": {"path": "/health", **probe_port},
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        "securityContext": container_security_context(),
        "volumeMounts": mounts,
    }
    pod_spec = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pod_security_context(),
        "containers": [container],
        "volumes": volumes,
    }
    graceful(pod_spec, container, D.SHUTDOWN_DELAY_S + D.DRAIN_GRACE_S)
    return meta.deployment(svc, meta.router_name(svc), COMPONENT, router.replicas, pod_spec)


def public_service(svc: LLMService) -> dict[str, Any]:
    """The OpenAI endpoint users call: the router, or the engines when the router is off."""
    if svc.spec.router.enabled:
        selector, target = meta.selector_labels(svc, COMPONENT), "http"
    else:
        selector, target = meta.selector_labels(svc, engine_builders.COMPONENT), "http"
    return meta.with_hash(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": meta.object_meta(svc, meta.service_name(svc), COMPONENT),
            "spec": {
                "type": svc.spec.router.service_type,
                "selector": selector,
                "ports": [
                    {"name": "http", "port": meta.ROUTER_PORT, "targetPort": target,
                     "protocol": "TCP"}
                ],
            },
        }
    )  # fmt: skip
