"""The vLLM engine replicas: a Deployment, its headless Service and the scheduler ConfigMap.

Scheduler parameters live only in the ConfigMap, which the engine plugin re-reads while running:
nothing about `spec.scheduler` reaches the pod template, so tuning never restarts a GPU pod.
"""

from __future__ import annotations

import json
from typing import Any

from halffull import defaults as D
from halffull.api.runtime_config import (
    ENGINE_METRICS_PORT_ENV,
    SCHEDULER_CONFIG_ENV,
    SCHEDULER_CONFIG_FILE,
    SchedulerConfig,
)
from halffull.api.spec import LLMService
from halffull.builders import meta
from halffull.builders.disruption import graceful
from halffull.builders.model_source import placement
from halffull.builders.security import container_security_context, pod_security_context

COMPONENT = "engine"
LARRY_SCHEDULER_CLS = "halffull.engine.scheduler.LarryScheduler"
SCHEDULER_MOUNT = "/etc/halffull/scheduler"
CACHE_MOUNT = "/var/cache/halffull"
HF_HOME = f"{CACHE_MOUNT}/huggingface"
GPU_RESOURCE = "nvidia.com/gpu"
ENGINE_API_KEY_ENV = "VLLM_API_KEY"

# Model download and load can take long on a cold node; the startup probe allows an hour.
STARTUP_PROBE_PERIOD_S = 10
STARTUP_PROBE_FAILURES = 360


def vllm_args(svc: LLMService) -> list[str]:
    """vLLM command-line arguments from the spec."""
    spec, engine = svc.spec, svc.spec.engine
    source = placement(svc, HF_HOME)
    args = [
        "--model", source.model_arg,
        "--served-model-name", spec.served_name,
        "--host", "0.0.0.0",
        "--port", str(meta.ENGINE_PORT),
        # Always loaded: its fcfs mode keeps vLLM's own order, so switching policy is live.
        "--scheduler-cls", LARRY_SCHEDULER_CLS,
        "--gpu-memory-utilization", repr(engine.gpu_memory_utilization),
    ]  # fmt: skip
    args += source.args
    if engine.gpus > 1:
        args += ["--tensor-parallel-size", str(engine.gpus)]
    optional = {
        "--max-num-seqs": engine.max_num_seqs,
        "--max-num-batched-tokens": engine.max_num_batched_tokens,
        "--max-model-len": engine.max_model_len,
    }
    for flag, value in optional.items():
        if value is not None:
            args += [flag, str(value)]
    return args + list(engine.extra_args)


def scheduler_config(svc: LLMService) -> SchedulerConfig:
    return SchedulerConfig(policy=svc.spec.scheduler.policy, alpha=svc.spec.scheduler.alpha)


def scheduler_configmap(svc: LLMService) -> dict[str, Any]:
    body = scheduler_config(svc).model_dump(mode="json", by_alias=True)
    return meta.with_hash(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": meta.object_meta(svc, meta.scheduler_config_name(svc), COMPONENT),
            "data": {SCHEDULER_CONFIG_FILE: json.dumps(body, sort_keys=True) + "\n"},
        }
    )


def _resources(svc: LLMService) -> dict[str, Any]:
    engine = svc.spec.engine
    limits: dict[str, object] = dict(engine.resources.limits)
    requests: dict[str, object] = dict(engine.resources.requests)
    if engine.gpus > 0:
        limits[GPU_RESOURCE] = requests[GPU_RESOURCE] = engine.gpus
    return meta.resource_requirements(limits, requests)


def _env(svc: LLMService) -> list[dict[str, Any]]:
    ours: list[dict[str, Any]] = [
        {"name": SCHEDULER_CONFIG_ENV, "value": f"{SCHEDULER_MOUNT}/{SCHEDULER_CONFIG_FILE}"},
        {"name": ENGINE_METRICS_PORT_ENV, "value": str(meta.ENGINE_PLUGIN_METRICS_PORT)},
        {"name": "HOME", "value": CACHE_MOUNT},
        {"name": "HF_HOME", "value": HF_HOME},
        {"name": "VLLM_CACHE_ROOT", "value": f"{CACHE_MOUNT}/vllm"},
        {"name": "XDG_CACHE_HOME", "value": CACHE_MOUNT},
        *placement(svc, HF_HOME).env,
    ]
    key = svc.spec.engine.api_key_secret
    if key is not None:  # vLLM then requires `Authorization: Bearer <key>` on /v1
        ref = {"secretKeyRef": {"name": key.name, "key": key.key}}
        ours.append({"name": ENGINE_API_KEY_ENV, "valueFrom": ref})
    user = [dict(e) for e in svc.spec.engine.env]
    user_names = {e["name"] for e in user}
    return [e for e in ours if e["name"] not in user_names] + user


def _http_probe(path: str, period: int, failures: int, timeout: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": timeout,
    }


def engine_deployment(svc: LLMService, default_image: str) -> dict[str, Any]:
    engine = svc.spec.engine
    source = placement(svc, HF_HOME)
    container: dict[str, Any] = {
        "name": "vllm",
        "image": engine.image or default_image,
        "command": ["python3", "-m", "vllm.entrypoints.openai.api_server"],
        "args": vllm_args(svc),
        "ports": [
            {"name": "http", "containerPort": meta.ENGINE_PORT, "protocol": "TCP"},
            {
                "name": "sched-metrics",
                "containerPort": meta.ENGINE_PLUGIN_METRICS_PORT,
                "protocol": "TCP",
            },
        ],
        "env": _env(svc),
        "resources": _resources(svc),
        "startupProbe": _http_probe("/health", STARTUP_PROBE_PERIOD_S, STARTUP_PROBE_FAILURES, 5),
        "readinessProbe": _http_probe("/health", 5, 3, 5),
        "livenessProbe": _http_probe("/health", 15, 4, 10),
        "securityContext": container_security_context(),
        "volumeMounts": [
            {"name": "scheduler-config", "mountPath": SCHEDULER_MOUNT, "readOnly": True},
            {"name": "cache", "mountPath": CACHE_MOUNT},
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "shm", "mountPath": "/dev/shm"},
            *source.mounts,
        ],
    }
    if engine.image_pull_policy:
        container["imagePullPolicy"] = engine.image_pull_policy
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pod_security_context(),
        "containers": [container],
        "volumes": [
            {"name": "scheduler-config", "configMap": {"name": meta.scheduler_config_name(svc)}},
            {"name": "cache", "emptyDir": {}},
            {"name": "tmp", "emptyDir": {}},
            {"name": "shm", "emptyDir": {"medium": "Memory"}},
            *source.volumes,
        ],
    }
    graceful(pod_spec, container, D.DRAIN_GRACE_S)
    if engine.node_selector:
        pod_spec["nodeSelector"] = dict(sorted(engine.node_selector.items()))
    if engine.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in engine.tolerations]
    # GPUs are scarce: replace replicas one at a time instead of surging.
    strategy = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}
    return meta.deployment(
        svc, meta.engine_name(svc), COMPONENT, svc.spec.replicas, pod_spec, strategy
    )


def engine_service(svc: LLMService) -> dict[str, Any]:
    """Headless: the router addresses each replica, never a virtual IP."""
    return meta.with_hash(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": meta.object_meta(svc, meta.engine_name(svc), COMPONENT),
            "spec": {
                "clusterIP": "None",
                "selector": meta.selector_labels(svc, COMPONENT),
                "ports": [
                    {"name": "http", "port": meta.ENGINE_PORT, "targetPort": "http",
                     "protocol": "TCP"}
                ],
            },
        }
    )  # fmt: skip
