"""The kopf shell around the reconciler: every way an LLMService can need attention ends in
the same `trigger(namespace, name)`.

Only raw event handlers are used, no create/update handlers: those make kopf persist progress
and diff bases in annotations, i.e. write to the object on its own. Here the object is only ever
written through its status, and only when the status changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

import kopf

from halffull.api.spec import GROUP, PLURAL, VERSION
from halffull.builders.meta import MANAGED_BY, OWNER_LABEL
from halffull.controller.login import login
from halffull.controller.reconcile import Reconciler
from halffull.controller.runner import KeyedRunner
from halffull.controller.weights import WeightsLoop

log = logging.getLogger(__name__)

CHILD_LABELS: dict[str, Any] = {
    OWNER_LABEL: kopf.PRESENT,
    "app.kubernetes.io/managed-by": MANAGED_BY,
}


class Operator:
    """Wires the reconciler into kopf's registry. One instance per process."""

    def __init__(
        self,
        reconciler: Reconciler,
        resync_seconds: float,
        prometheus_url: str | None = None,
        metrics_loop: bool = True,
    ) -> None:
        self.reconciler = reconciler
        self.resync_seconds = resync_seconds
        self.known: set[tuple[str, str]] = set()
        self.runner: KeyedRunner | None = None
        self.weights = WeightsLoop(self._trigger, prometheus_url) if metrics_loop else None
        reconciler.weights = self.weights
        self._tasks: list[asyncio.Task[None]] = []

    def _reconcile(self, namespace: str, name: str) -> None:
        outcome = self.reconciler.reconcile(namespace, name)
        if outcome.problems:
            log.warning("%s/%s is invalid: %s", namespace, name, "; ".join(outcome.problems))

    def register(self, registry: kopf.OperatorRegistry) -> None:
        kopf.on.login(registry=registry)(login)

        @kopf.on.startup(registry=registry)
        async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
            settings.peering.standalone = True
            settings.posting.level = logging.WARNING
            settings.persistence.finalizer = "serving.halffull.dev/finalizer"
            settings.watching.server_timeout = 300
            self.runner = KeyedRunner(self._reconcile)
            self._tasks.append(asyncio.create_task(self._resync()))
            if self.weights is not None:
                self._tasks.append(asyncio.create_task(self.weights.run()))

        @kopf.on.cleanup(registry=registry)
        async def cleanup(**_: Any) -> None:
            for task in self._tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if self.runner is not None:
                await self.runner.close()
            if self.weights is not None:
                await self.weights.close()

        @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
        async def llmservice_event(type: str, name: str, namespace: str | None, **_: Any) -> None:
            if namespace is None:
                return
            key = (namespace, name)
            if type == "DELETED":
                self.known.discard(key)
                if self.weights is not None:
                    self.weights.forget(key)
                return
            self.known.add(key)
            self._trigger(namespace, name)

        pdb_group, pdb_version = self.reconciler.defaults.pdb_api_version.split("/")
        for group, version, plural in (
            ("apps", "v1", "deployments"),
            ("", "v1", "services"),
            ("", "v1", "configmaps"),
            ("", "v1", "pods"),
            (pdb_group, pdb_version, "poddisruptionbudgets"),
            ("networking.k8s.io", "v1", "networkpolicies"),
        ):
            kopf.on.event(group, version, plural, labels=CHILD_LABELS, registry=registry)(
                self._child_event
            )

    async def _child_event(
        self, labels: Mapping[str, str], namespace: str | None, **_: Any
    ) -> None:
        owner = labels.get(OWNER_LABEL)
        if owner and namespace and (namespace, owner) in self.known:
            self._trigger(namespace, owner)

    def _trigger(self, namespace: str, name: str) -> None:
        if self.runner is not None:
            self.runner.trigger(namespace, name)

    async def _resync(self) -> None:
        """The periodic pass: a level-based loop must not depend on seeing every event."""
        while True:
            await asyncio.sleep(self.resync_seconds)
            for namespace, name in sorted(self.known):
                self._trigger(namespace, name)
