"""The router's endpoint table as the reconcile sees it: which engine pods serve, with which
weights. Pure functions over pod and ConfigMap bodies."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from halffull.api.runtime_config import ROUTER_CONFIG_FILE, RouterEndpoint
from halffull.builders import meta


def ready_endpoints(pods: list[dict[str, Any]]) -> list[RouterEndpoint]:
    """Engine pods that are Ready and addressable, as the router's endpoint table. A terminating
    pod that still serves (its preStop sleep) stays, marked draining: it gets requests only when
    no other replica can take them, which keeps a single-replica service answering while its
    only engine is replaced."""
    out = []
    for pod in pods:
        st = pod.get("status") or {}
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in st.get("conditions") or []
        )
        if ready and st.get("podIP"):
            url = f"http://{st['podIP']}:{meta.ENGINE_PORT}"
            draining = bool(pod["metadata"].get("deletionTimestamp"))
            out.append(RouterEndpoint(name=pod["metadata"]["name"], url=url, draining=draining))
    return out


def live_weights(router_cm: Mapping[str, Any] | None) -> dict[str, float]:
    """Weights in the router's live ConfigMap: what stands until the metrics loop knows better
    (after an operator restart), so a restart rewrites nothing."""
    if router_cm is None:
        return {}
    try:
        cfg = json.loads((router_cm.get("data") or {}).get(ROUTER_CONFIG_FILE, "{}"))
        return {e["name"]: float(e.get("weight", 1.0)) for e in cfg.get("endpoints", [])}
    except (ValueError, TypeError, KeyError, AttributeError):
        return {}


def weighted(endpoints: list[RouterEndpoint], weights: Mapping[str, float]) -> list[RouterEndpoint]:
    """The endpoint table with weights (1.0 for pods without one)."""
    return [e.model_copy(update={"weight": weights.get(e.name, 1.0)}) for e in endpoints]


def serving(endpoints: list[RouterEndpoint]) -> list[RouterEndpoint]:
    """The endpoints the metrics loop samples (draining pods are on their way out)."""
    return [e for e in endpoints if not e.draining]
