"""One level-based reconcile of one LLMService: observe, compare with the desired state, write
only the difference. Safe to run any number of times; a run with nothing to do writes nothing.

Observing reads the operator's cache of watched objects (`controller.cache`), not the API: a
pass that has nothing to do makes no request at all. Writes are conditional where a stale read
could do harm (the status carries the resourceVersion it was computed from); a 409 re-reads the
object and runs the pass again.

The pass, in order: `_observe` (cache -> spec, children, pods), `_converge` (children),
`_write_status` (status and Events). A new input to the status goes into `Observed`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter, Histogram

from halffull.api import status as status_api
from halffull.api import validation
from halffull.api.runtime_config import RouterEndpoint
from halffull.api.spec import LLMService
from halffull.builders import engine as engine_builders
from halffull.builders import live_config, meta
from halffull.builders.children import Defaults, desired_children
from halffull.builders.drift import covers
from halffull.controller.cache import ObjectCache, matches
from halffull.controller.endpoints import live_weights, ready_endpoints, serving, weighted
from halffull.controller.failures import ApiCallError, Failure
from halffull.controller.kube import Kube, now_rfc3339
from halffull.controller.memo import ReconcileMemo
from halffull.controller.metrics_source import Target
from halffull.controller.weights import Published, Watch, WeightsLoop
from halffull.controller.writes import ChildWriter
from halffull.policy.sal import DEFAULT_MAX_TOKENS_PER_BATCH

log = logging.getLogger(__name__)

RECONCILES = Counter("halffull_operator_reconciles_total", "Reconciles run", ["result"])
RECONCILE_SECONDS = Histogram(
    "halffull_operator_reconcile_seconds",
    "Duration of one reconcile",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
CHILD_KINDS = ("ConfigMap", "Service", "Deployment", "PodDisruptionBudget", "NetworkPolicy")
CONFLICT_RETRIES = 3


@dataclass
class Outcome:
    applied: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    touched: list[str] = field(default_factory=list)
    status_written: bool = False
    problems: list[str] = field(default_factory=list)


def needs_apply(
    desired: Mapping[str, Any],
    live: Mapping[str, Any] | None,
    drift_free: Callable[[str, Callable[[], bool]], bool] | None = None,
) -> bool:
    """Apply when the child is missing, when what we want changed (hash annotation), or when
    someone changed a field we manage (drift). `drift_free(hash, check)` may skip the check
    for a live version already checked (`memo.ReconcileMemo.drift_free`)."""
    if live is None:
        return True
    want_hash = desired["metadata"]["annotations"][meta.HASH_ANNOTATION]
    have_hash = (live["metadata"].get("annotations") or {}).get(meta.HASH_ANNOTATION)
    if want_hash != have_hash:
        return True

    def check() -> bool:
        return covers(live, desired)

    return not (drift_free(want_hash, check) if drift_free else check())


class Reconciler:
    def __init__(
        self,
        kube: Kube,
        defaults: Defaults,
        cache: ObjectCache | None = None,
        weights: WeightsLoop | None = None,
        touch_pods: bool = True,
    ) -> None:
        self.kube = kube
        self.defaults = defaults
        self.cache = cache if cache is not None else ObjectCache()
        self.weights = weights
        self.touch_pods = touch_pods  # the live-tuning fast path (builders.live_config)
        self.memo = ReconcileMemo()
        self.writer = ChildWriter(kube.apply)

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
            outcome = self._reconcile_retrying(namespace, name)
        except Exception:
            RECONCILES.labels("error").inc()
            raise
        finally:
            RECONCILE_SECONDS.observe(time.perf_counter() - started)
        RECONCILES.labels("invalid" if outcome.problems else "ok").inc()
        return outcome

    def _reconcile_retrying(self, namespace: str, name: str) -> Outcome:
        for attempt in range(CONFLICT_RETRIES):
            try:
                return self._reconcile(namespace, name)
            except ApiCallError as exc:
                if exc.status != 409 or attempt == CONFLICT_RETRIES - 1:
                    raise
                self.refresh(namespace, name)  # our read was stale: read again, run again
        raise AssertionError("unreachable")

    def refresh(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The LLMService read from the API server into the cache (after a conflict)."""
        fresh = self.kube.get_llmservice(namespace, name)
        if fresh is None:
            self.cache.drop("LLMService", namespace, name)
        else:
            self.cache.put("LLMService", fresh)
        return fresh

    def _observe(
        self, body: dict[str, Any], svc: LLMService
    ) -> tuple[dict[tuple[str, str], dict[str, Any]], list[dict[str, Any]]]:
        """Our children (owned by this very object, not a predecessor of the same name) and
        its pods (engines' and routers'), from the cache."""
        namespace, name = svc.meta.namespace, svc.meta.name
        live = {
            (obj["kind"], obj["metadata"]["name"]): obj
            for obj in self.cache.owned(namespace, name, CHILD_KINDS)
            if _owned_by(obj, svc.meta.uid)
        }
        return live, self.cache.owned(namespace, name, ("Pod",))

    def _reconcile(self, namespace: str, name: str) -> Outcome:
        outcome = Outcome()
        body = self.cache.get("LLMService", namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return outcome  # owner references let the garbage collector remove the children
        svc = LLMService.from_body(body)
        live, pods = self._observe(body, svc)
        engine = meta.selector_labels(svc, engine_builders.COMPONENT)
        engine_pods = [p for p in pods if matches(p, engine)]

        outcome.problems = validation.problems(svc)
        endpoints = ready_endpoints(engine_pods)
        table = self._watch_metrics(svc, serving(endpoints))
        if not outcome.problems:
            # An invalid spec leaves the running children as they are: nothing that serves is lost.
            self._converge(svc, live, endpoints, table, outcome)
            if self.touch_pods:  # after the ConfigMaps, so the kubelet projects the new content
                digests = live_config.digests(svc, endpoints, self.defaults.cluster_domain)
                for pod_name, digest in live_config.pods_to_touch(pods, digests):
                    touched = self.kube.patch_pod(
                        namespace, pod_name, live_config.touch_patch(digest)
                    )
                    if touched is not None:
                        self.cache.put("Pod", touched)
                        outcome.touched.append(pod_name)

        outcome.status_written = self._write_status(
            body, svc, live, outcome.problems, table, status_api.image_pull_problem(pods)
        )
        if outcome.applied or outcome.deleted or outcome.touched:
            log.info("%s/%s: applied %s deleted %s touched %s", namespace, name, outcome.applied,
                     outcome.deleted, outcome.touched)  # fmt: skip
        return outcome

    def _converge(
        self,
        svc: LLMService,
        live: dict[tuple[str, str], dict[str, Any]],
        endpoints: list[RouterEndpoint],
        table: Published | None,
        outcome: Outcome,
    ) -> None:
        """Apply the children that differ from the desired ones; delete ours it no longer wants."""
        weights = (
            dict(table.weights)
            if table is not None
            else live_weights(live.get(("ConfigMap", meta.router_name(svc))))
        )
        table_in = weighted(endpoints, weights)
        owner = (svc.meta.namespace, svc.meta.name)
        inputs = (
            svc.model_dump_json(),
            self.defaults,
            tuple((e.name, e.url, e.weight) for e in table_in),
        )
        desired = self.memo.desired(
            owner, inputs, lambda: desired_children(svc, self.defaults, table_in)
        )
        wanted = {(d["kind"], d["metadata"]["name"]) for d in desired}

        def stale(obj: dict[str, Any]) -> bool:
            child = live.get((obj["kind"], obj["metadata"]["name"]))
            if child is None:
                return True

            def drift_free(want: str, check: Callable[[], bool]) -> bool:
                return self.memo.drift_free(owner, child, want, check)

            return needs_apply(obj, child, drift_free)

        def written(obj: dict[str, Any], result: dict[str, Any]) -> None:
            key = (obj["kind"], obj["metadata"]["name"])
            live[key] = result
            self.cache.put(key[0], result)
            outcome.applied.append("/".join(key))

        def write(obj: dict[str, Any]) -> dict[str, Any]:
            return self.kube.write(obj, live.get((obj["kind"], obj["metadata"]["name"])))

        self.writer.apply_all([obj for obj in desired if stale(obj)], written, write)
        for key in sorted(set(live) - wanted):
            self.kube.delete(key[0], svc.meta.namespace, key[1])
            self.cache.drop(key[0], svc.meta.namespace, key[1])
            del live[key]
            outcome.deleted.append("/".join(key))

    def report_failure(self, namespace: str, name: str, failure: Failure) -> None:
        """A failed pass, in the `Degraded` condition and an Event, once per distinct reason and
        message (the retries that follow write nothing more)."""
        body = self.cache.get("LLMService", namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return
        current = body.get("status") or {}
        generation = int(body["metadata"].get("generation") or 0)
        new = with_degraded(current, failure, generation, now_rfc3339())
        if new == current:
            return
        self._patch_status(body, current, new)
        self.kube.post_event(body, failure.reason, failure.message, "Warning")

    def _patch_status(
        self, body: dict[str, Any], current: Mapping[str, Any], new: dict[str, Any]
    ) -> None:
        md = body["metadata"]
        written = self.kube.patch_status(
            md["namespace"], md["name"], status_patch(current, new), md.get("resourceVersion")
        )
        self.cache.put("LLMService", written)

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
        self._patch_status(body, current, new)
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


def status_patch(current: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """A merge patch that turns `current` into `new`: keys `new` no longer has are set to None,
    which a merge patch removes (a merge patch never removes a key it does not name)."""
    return {**{k: None for k in current if k not in new}, **new}


def with_degraded(
    current: Mapping[str, Any], failure: Failure, generation: int, now: str
) -> dict[str, Any]:
    """`current` with the Degraded condition saying why the last pass failed."""
    conditions = list(current.get("conditions") or [])
    verdict = status_api.Verdict("True", failure.reason, failure.message[:1024])
    cond = status_api.set_condition(conditions, status_api.DEGRADED, verdict, generation, now)
    if not any(c.get("type") == status_api.DEGRADED for c in conditions):
        conditions.append(cond)
    return {
        **current,
        "conditions": [cond if c.get("type") == status_api.DEGRADED else c for c in conditions],
    }


def _owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    refs = obj["metadata"].get("ownerReferences") or []
    return any(r.get("uid") == uid and r.get("controller") for r in refs)


def _applied_parameters(
    svc: LLMService, problems: list[str], current: Mapping[str, Any]
) -> dict[str, Any]:
    """The tuning written to the ConfigMaps; unchanged while the spec is invalid."""
    if problems:
        return {k: current[k] for k in ("scheduler", "router") if k in current}
    s = svc.spec.scheduler
    out: dict[str, Any] = {
        "scheduler": {"policy": s.policy, "alpha": s.alpha, "maxWaitSeconds": s.max_wait_seconds}
    }
    if svc.spec.router.enabled:
        out["router"] = {"policy": svc.spec.router.policy, "beta": svc.spec.router.beta}
    return out
