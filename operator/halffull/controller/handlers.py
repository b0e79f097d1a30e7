"""The kopf shell around the reconciler: every way an LLMService can need attention ends in
the same `trigger(namespace, name)`.

Only raw event handlers are used, no create/update handlers: those make kopf persist progress
and diff bases in annotations, i.e. write to the object on its own. Here the object is only ever
written through its status, and only when the status changed.

The watches feed the cache the reconcile reads. The child watches carry a server-side label
selector (`settings.watching.label_selectors`): the API server sends only our children, not
every Pod, Service and ConfigMap of the cluster (kopf's handler `labels=` alone filters in this
process, after everything was streamed and decoded).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Any

import kopf

from halffull.api.spec import GROUP, PLURAL, VERSION
from halffull.builders.meta import OWNER_LABEL
from halffull.controller import trace
from halffull.controller.cache import ObjectCache
from halffull.controller.failures import retry_delay
from halffull.controller.kube import CHILD_SELECTOR
from halffull.controller.leader import LeaseElector
from halffull.controller.login import login
from halffull.controller.reconcile import Reconciler
from halffull.controller.runner import KeyedRunner
from halffull.controller.weights import WeightsLoop

log = logging.getLogger(__name__)

ElectorFactory = Callable[[Callable[[], None], Callable[[], None]], LeaseElector]
"""Makes the leader elector from the callbacks for gaining and losing the lead."""

CHILD_RESOURCES = (
    ("apps", "v1", "deployments", "Deployment"),
    ("", "v1", "services", "Service"),
    ("", "v1", "configmaps", "ConfigMap"),
    ("", "v1", "pods", "Pod"),
)


class Operator:
    """Wires the reconciler into kopf's registry. One instance per process."""

    def __init__(
        self,
        reconciler: Reconciler,
        resync_seconds: float,
        prometheus_url: str | None = None,
        metrics_loop: bool = True,
        namespaces: tuple[str, ...] = (),
        elector: ElectorFactory | None = None,
    ) -> None:
        self.reconciler = reconciler
        self.cache: ObjectCache = reconciler.cache
        self.resync_seconds = resync_seconds
        self.namespaces = namespaces
        self.known: set[tuple[str, str]] = set()
        self.runner: KeyedRunner | None = None
        self.weights = WeightsLoop(self._trigger, prometheus_url) if metrics_loop else None
        reconciler.weights = self.weights
        self.elector_factory = elector
        self._tasks: list[asyncio.Task[None]] = []
        self._weights_task: asyncio.Task[None] | None = None

    def _reconcile(self, namespace: str, name: str) -> None:
        trace.mark("pass", namespace, name)
        try:
            outcome = self.reconciler.reconcile(namespace, name)
        finally:
            trace.mark("passed", namespace, name)
        if outcome.problems:
            log.warning("%s/%s is invalid: %s", namespace, name, "; ".join(outcome.problems))

    def child_resources(self) -> tuple[tuple[str, str, str, str], ...]:
        """What the operator watches (with the server-side selector) and caches: the kinds it
        creates and the pods. PodDisruptionBudgets are served as policy/v1beta1 on 1.20."""
        pdb_group, pdb_version = self.reconciler.defaults.pdb_api_version.split("/")
        return (
            *CHILD_RESOURCES,
            (pdb_group, pdb_version, "poddisruptionbudgets", "PodDisruptionBudget"),
            ("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy"),
        )

    def prime(self) -> None:
        """Fill the cache with our children before the first reconcile, as an informer's
        first list does: a reconcile must not take a child it has not seen yet for missing."""
        for _, _, _, kind in self.child_resources():
            for ns in self.namespaces or (None,):
                for obj in self.reconciler.kube.list_children(kind, ns, CHILD_SELECTOR):
                    self.cache.put(kind, obj)

    async def _prime_until_done(self) -> None:
        attempt = 0
        while True:
            try:
                await asyncio.to_thread(self.prime)
                return
            except Exception as exc:  # the API server may not answer yet
                attempt += 1
                delay = retry_delay(attempt)
                log.warning("listing our children failed (retry in %.1f s): %r", delay, exc)
                await asyncio.sleep(delay)

    def register(self, registry: kopf.OperatorRegistry) -> None:
        kopf.on.login(registry=registry)(login)

        @kopf.on.startup(registry=registry)
        async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
            settings.peering.standalone = True
            settings.posting.level = logging.WARNING
            settings.persistence.finalizer = "serving.halffull.dev/finalizer"
            settings.watching.server_timeout = 300
            for group, version, plural, _kind in self.child_resources():
                settings.watching.label_selectors[group, version, plural] = CHILD_SELECTOR
            await self._prime_until_done()
            leader = self.elector_factory is None
            self.runner = KeyedRunner(
                self._reconcile, on_failure=self.reconciler.report_failure, active=leader
            )
            self._tasks.append(asyncio.create_task(self._resync()))
            if self.elector_factory is not None:
                elector = self.elector_factory(self._lead, self._follow)
                self._tasks.append(asyncio.create_task(elector.run()))
            else:
                self._lead()

        @kopf.on.cleanup(registry=registry)
        async def cleanup(**_: Any) -> None:
            self._follow()
            for task in reversed(self._tasks):  # the elector last: it releases the Lease
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if self.runner is not None:
                await self.runner.close()
            if self.weights is not None:
                await self.weights.close()

        @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
        async def llmservice_event(
            type: str, name: str, namespace: str | None, event: Mapping[str, Any], **_: Any
        ) -> None:
            if namespace is None:
                return
            key = (namespace, name)
            if type == "DELETED":
                self.cache.drop("LLMService", namespace, name)
                self.reconciler.memo.forget(key)
                self.known.discard(key)
                if self.runner is not None:
                    self.runner.forget(namespace, name)
                if self.weights is not None:
                    self.weights.forget(key)
                return
            trace.mark("event", namespace, name, type=type)
            self.cache.put("LLMService", dict(event["object"]))
            self.known.add(key)
            self._trigger(namespace, name)

        for group, version, plural, kind in self.child_resources():
            kopf.on.event(group, version, plural, registry=registry)(self._child_handler(kind))

    def _child_handler(self, kind: str) -> Any:
        async def child_event(
            type: str,
            name: str,
            namespace: str | None,
            labels: Mapping[str, str],
            event: Mapping[str, Any],
            **_: Any,
        ) -> None:
            if namespace is None:
                return
            if type == "DELETED":
                self.cache.drop(kind, namespace, name)
            else:
                self.cache.put(kind, dict(event["object"]))
            owner = labels.get(OWNER_LABEL)
            if owner and (namespace, owner) in self.known:
                self._trigger(namespace, owner)

        child_event.__name__ = f"{kind.lower()}_event"
        return child_event

    def _trigger(self, namespace: str, name: str) -> None:
        if self.runner is not None:
            self.runner.trigger(namespace, name)

    def _lead(self) -> None:
        """This replica reconciles now: every known LLMService once, then as events come."""
        if self.weights is not None and self._weights_task is None:
            self._weights_task = asyncio.create_task(self.weights.run())
        if self.runner is not None:
            for key in self.known:
                self.runner.trigger(*key)
            self.runner.activate()

    def _follow(self) -> None:
        """Another replica leads (or this one stops): no reconciles, no metrics passes."""
        if self.runner is not None:
            self.runner.deactivate()
        if self._weights_task is not None:
            self._weights_task.cancel()
            self._weights_task = None
        if self.weights is not None:
            self.weights.clear()

    async def _resync(self) -> None:
        """The periodic pass: a level-based loop must not depend on seeing every event."""
        while True:
            await asyncio.sleep(self.resync_seconds)
            for namespace, name in sorted(self.known):
                self._trigger(namespace, name)
