"""Leader election on a coordination.k8s.io/v1 Lease, so two replicas can run and one writes.

Every replica watches and keeps its cache warm; only the holder of the Lease reconciles. The
holder renews every `retry_s`; when it cannot renew for `renew_deadline_s` it stops acting,
before the Lease can expire (`lease_s`) and another replica take it. Expiry is judged by this
process's own clock from when it last saw the Lease change, as client-go does, so clock skew
between nodes does not matter. A replica that shuts down cleanly releases the Lease, and the
other takes over on its next try.

Needs get, create and update on leases in one namespace (the chart's leader-election Role).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Callable
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException
from prometheus_client import Gauge

log = logging.getLogger(__name__)

IS_LEADER = Gauge("halffull_operator_leader", "1 while this replica holds the leader Lease")


def _micro_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseElector:
    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        name: str,
        identity: str,
        on_started: Callable[[], None],
        on_stopped: Callable[[], None],
        lease_s: int = 10,
        renew_deadline_s: float = 7.0,
        retry_s: float = 2.0,
    ) -> None:
        self.coord = client.CoordinationV1Api(api)
        self.namespace, self.name, self.identity = namespace, name, identity
        self.on_started, self.on_stopped = on_started, on_stopped
        self.lease_s, self.renew_deadline_s, self.retry_s = lease_s, renew_deadline_s, retry_s
        self.leading = False
        self._seen: tuple[Any, ...] | None = None  # (holder, renewTime) last observed
        self._seen_at = 0.0
        self._renewed_at = 0.0

    async def run(self) -> None:
        try:
            while True:
                try:
                    held = await asyncio.to_thread(self._try)
                except Exception as exc:  # the API server may be away; keep trying
                    log.warning("leader election: %r", exc)
                    held = False
                now = time.monotonic()
                if held:
                    self._renewed_at = now
                    if not self.leading:
                        self._start()
                elif self.leading and now - self._renewed_at > self.renew_deadline_s:
                    self._stop("could not renew the Lease in time")
                await asyncio.sleep(self.retry_s)
        finally:
            if self.leading:
                self._stop("shutting down")
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(self._release)

    def _start(self) -> None:
        log.warning("leader election: %s leads now (Lease %s/%s)", self.identity,
                    self.namespace, self.name)  # fmt: skip
        self.leading = True
        IS_LEADER.set(1)
        self.on_started()

    def _stop(self, why: str) -> None:
        log.warning("leader election: %s stops leading: %s", self.identity, why)
        self.leading = False
        IS_LEADER.set(0)
        self.on_stopped()

    def _try(self) -> bool:
        """One attempt to acquire or renew. True: this process holds the Lease now."""
        try:
            lease = self.coord.read_namespaced_lease(self.name, self.namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise
            return self._create()
        spec = lease.spec
        seen = (spec.holder_identity, spec.renew_time, spec.lease_transitions)
        now = time.monotonic()
        if seen != self._seen:
            self._seen, self._seen_at = seen, now
        holder = spec.holder_identity
        duration = spec.lease_duration_seconds or self.lease_s
        if holder and holder != self.identity and now - self._seen_at < duration:
            return False  # someone else's, and alive as far as we can tell
        if holder != self.identity:
            spec.lease_transitions = (spec.lease_transitions or 0) + 1
            spec.acquire_time = _micro_now()
        spec.holder_identity = self.identity
        spec.lease_duration_seconds = self.lease_s
        spec.renew_time = _micro_now()
        # An update carries the resourceVersion read: a racing replica gets 409.
        return _unless_conflict(self.coord.replace_namespaced_lease, self.name, self.namespace,
                                lease)  # fmt: skip

    def _create(self) -> bool:
        now = _micro_now()
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": self.lease_s,
                "acquireTime": now,
                "renewTime": now,
                "leaseTransitions": 0,
            },
        }
        return _unless_conflict(self.coord.create_namespaced_lease, self.namespace, body)

    def _release(self) -> None:
        """Hand the Lease over at once: no holder, so the next try of another replica wins."""
        lease = self.coord.read_namespaced_lease(self.name, self.namespace)
        if lease.spec.holder_identity != self.identity:
            return
        lease.spec.holder_identity = None
        lease.spec.lease_duration_seconds = 1
        lease.spec.renew_time = _micro_now()
        self.coord.replace_namespaced_lease(self.name, self.namespace, lease)


def _unless_conflict(call: Callable[..., Any], *args: Any) -> bool:
    """True when the write went through, False when another replica's came first (409)."""
    try:
        call(*args)
    except ApiException as exc:
        if exc.status == 409:
            return False
        raise
    return True
