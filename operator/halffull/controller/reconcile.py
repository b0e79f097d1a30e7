"""One level-based reconcile of one LLMService: observe, compare with the desired state, write
only the difference. Safe to run any number of times; a run with nothing to do writes nothing."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter, Histogram

from halffull.api import status as status_api
from halffull.api import validation
from halffull.api.runtime_config import ROUTER_CONFIG_FILE, RouterEndpoint
from halffull.api.spec import LLMService
from halffull.builders import engine as engine_builders
from halffull.builders import live_config, meta
from halffull.builders.children import Defaults, desired_children
from halffull.builders.drift import covers
from halffull.controller.kube import Kube, now_rfc3339
from halffull.controller.metrics_source import Target
from halffull.controller.weights import Published, Watch, WeightsLoop
from halffull.policy.sal import DEFAULT_MAX_TOKENS_PER_BATCH

log = logging.getLogger(__name__)

RECONCILES = Counter("halffull_operator_reconciles_total", "Reconciles run", ["result"])
RECONCILE_SECONDS = Histogram(
    "halffull_operator_reconcile_seconds",
    "Duration of one reconcile",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
CHILD_KINDS = ("ConfigMap", "Service", "Deployment", "PodDisruptionBudget", "NetworkPolicy")


@dataclass
class Outcome:
    applied: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    touched: list[str] = field(default_factory=list)
    status_written: bool = False
    problems: list[str] = field(default_factory=list)


def needs_apply(desired: Mapping[str, Any], live: Mapping[str, Any] | None) -> bool:
    """Apply when the child is missing, when what we want changed (hash annotation), or when
    someone changed a field we manage (drift)."""
    if live is None:
        return True
    want_hash = desired["metadata"]["annotations"][meta.HASH_ANNOTATION]
    have_hash = (live["metadata"].get("annotations") or {}).get(meta.HASH_ANNOTATION)
    return want_hash != have_hash or not covers(live, desired)


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


class Reconciler:
    def __init__(
        self,
        kube: Kube,
        defaults: Defaults,
        weights: WeightsLoop | None = None,
        touch_pods: bool = True,
    ) -> None:
        self.kube = kube
        self.defaults = defaults
        self.weights = weights
        self.touch_pods = touch_pods  # the live-tuning fast path (builders.live_config)

    def _watch_metrics(self, svc: LLMService, endpoints: list[RouterEndpoint]) -> Published | None:
        if self.weights is None:
            return None
        key = (svc.meta.namespace, svc.meta.name)
        spec = svc.spec
        by_name = sorted(endpoints, key=lambda e: e.name)
        self.weights.watch(
            key,
            Watch(
                targets=tuple(Target(e.name, e.url) for e in by_name),
                beta=spec.router.beta,
                max_tokens_per_batch=spec.engine.max_num_batched_tokens
                or DEFAULT_MAX_TOKENS_PER_BATCH,
                interval_s=float(spec.metrics.interval_seconds),
                prometheus_url=spec.metrics.prometheus_url,
            ),
        )
        return self.weights.published(key)

    def reconcile(self, namespace: str, name: str) -> Outcome:
        started = time.perf_counter()
        try:
            outcome = self._reconcile(namespace, name)
        except Exception:
            RECONCILES.labels("error").inc()
            raise
        finally:
            RECONCILE_SECONDS.observe(time.perf_counter() - started)
        RECONCILES.labels("invalid" if outcome.problems else "ok").inc()
        return outcome

    def _reconcile(self, namespace: str, name: str) -> Outcome:
        outcome = Outcome()
        body = self.kube.get_llmservice(namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return outcome  # owner references let the garbage collector remove the children
        svc = LLMService.from_body(body)
        selector = f"{meta.OWNER_LABEL}={name}"
        live: dict[tuple[str, str], dict[str, Any]] = {}
        for kind in CHILD_KINDS:
            for obj in self.kube.list_children(kind, namespace, selector):
                if _owned_by(obj, svc.meta.uid):
                    live[(kind, obj["metadata"]["name"])] = obj
        pods = self.kube.list_pods(namespace, selector)  # engines' and routers'
        engine_pods = [p for p in pods if _component(p) == engine_builders.COMPONENT]

        outcome.problems = validation.problems(svc)
        endpoints = ready_endpoints(engine_pods)
        table = self._watch_metrics(svc, serving(endpoints))
        if not outcome.problems:
            # An invalid spec leaves the running children as they are: nothing that serves is lost.
            weights = (
                dict(table.weights)
                if table is not None
                else live_weights(live.get(("ConfigMap", meta.router_name(svc))))
            )
            desired = desired_children(svc, self.defaults, weighted(endpoints, weights))
            wanted = {(d["kind"], d["metadata"]["name"]) for d in desired}
            for obj in desired:
                key = (obj["kind"], obj["metadata"]["name"])
                if needs_apply(obj, live.get(key)):
                    live[key] = self.kube.apply(obj)
                    outcome.applied.append("/".join(key))
            for key in sorted(set(live) - wanted):
                self.kube.delete(key[0], namespace, key[1])
                del live[key]
                outcome.deleted.append("/".join(key))
            if self.touch_pods:  # after the ConfigMaps, so the kubelet projects the new content
                digests = live_config.digests(svc, endpoints, self.defaults.cluster_domain)
                for pod_name, digest in live_config.pods_to_touch(pods, digests):
                    if self.kube.patch_pod(namespace, pod_name, live_config.touch_patch(digest)):
                        outcome.touched.append(pod_name)

        outcome.status_written = self._write_status(
            body, svc, live, outcome.problems, table, status_api.image_pull_problem(pods)
        )
        if outcome.applied or outcome.deleted or outcome.touched:
            log.info("%s/%s: applied %s deleted %s touched %s", namespace, name, outcome.applied,
                     outcome.deleted, outcome.touched)  # fmt: skip
        return outcome

    def _write_status(
        self,
        body: dict[str, Any],
        svc: LLMService,
        live: Mapping[tuple[str, str], dict[str, Any]],
        problems: list[str],
        table: Published | None,
        image_problem: str | None = None,
    ) -> bool:
        engine_dep = live.get(("Deployment", meta.engine_name(svc)))
        router_dep = live.get(("Deployment", meta.router_name(svc)))
        observed = status_api.Observed(
            generation=svc.meta.generation,
            desired_replicas=svc.spec.replicas,
            router_enabled=svc.spec.router.enabled,
            engine=status_api.Rollout.from_deployment(engine_dep, svc.spec.replicas),
            router=status_api.Rollout.from_deployment(router_dep, svc.spec.router.replicas),
            problems=problems,
            extra={
                **_applied_parameters(svc, problems, body.get("status") or {}),
                "endpoints": list(table.rows)
                if table
                else (body.get("status") or {}).get("endpoints", []),
            },
            metrics_sampled=(bool(table.rows) if table is not None else None),
            metrics_problem=table.problem if table else None,
            image_problem=image_problem,
        )
        current = body.get("status") or {}
        url = (
            f"http://{meta.service_name(svc)}.{svc.meta.namespace}.svc."
            f"{self.defaults.cluster_domain}:{meta.ROUTER_PORT}/v1"
        )
        new = status_api.compute_status(
            current,
            observed,
            meta.selector_string(svc, engine_builders.COMPONENT),
            url,
            now_rfc3339(),
        )
        if new == current:
            return False
        self.kube.patch_status(svc.meta.namespace, svc.meta.name, new)
        self._post_transitions(body, current, new)
        return True

    def _post_transitions(
        self, body: dict[str, Any], old: Mapping[str, Any], new: Mapping[str, Any]
    ) -> None:
        def by_type(st: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
            return {c["type"]: c for c in st.get("conditions") or []}

        before, after = by_type(old), by_type(new)
        for ctype, cond in after.items():
            prev = before.get(ctype)
            if prev is not None and prev.get("status") == cond["status"]:
                continue
            if ctype == status_api.READY and (cond["status"] == "True" or prev is not None):
                self.kube.post_event(body, cond["reason"], cond["message"])
            elif ctype == status_api.DEGRADED and cond["status"] == "True":
                self.kube.post_event(body, cond["reason"], cond["message"], "Warning")
        if old.get("scheduler") and old.get("scheduler") != new.get("scheduler"):
            self.kube.post_event(body, "TuningApplied", f"scheduler now {new.get('scheduler')}")
        if old.get("router") and old.get("router") != new.get("router"):
            self.kube.post_event(body, "TuningApplied", f"router now {new.get('router')}")


def _component(pod: Mapping[str, Any]) -> str:
    return str((pod["metadata"].get("labels") or {}).get("app.kubernetes.io/component", ""))


def _owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    refs = obj["metadata"].get("ownerReferences") or []
    return any(r.get("uid") == uid and r.get("controller") for r in refs)


def _applied_parameters(
    svc: LLMService, problems: list[str], current: Mapping[str, Any]
) -> dict[str, Any]:
    """The tuning written to the ConfigMaps; unchanged while the spec is invalid."""
    if problems:
        return {k: current[k] for k in ("scheduler", "router") if k in current}
    out: dict[str, Any] = {
        "scheduler": {"policy": svc.spec.scheduler.policy, "alpha": svc.spec.scheduler.alpha}
    }
    if svc.spec.router.enabled:
        out["router"] = {"policy": svc.spec.router.policy, "beta": svc.spec.router.beta}
    return out
