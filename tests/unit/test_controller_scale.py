"""The operator's pure parts for scale and failure: backoff, what a failure means, status
patches that remove stale keys, the watch cache and the keyed runner."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from halffull.api import status as status_api
from halffull.controller.cache import ObjectCache, matches, slim
from halffull.controller.failures import ApiCallError, Failure, classify, retry_delay
from halffull.controller.kube import Kube, applied_ownership, created_by_update
from halffull.controller.memo import ReconcileMemo
from halffull.controller.reconcile import status_patch, with_degraded
from halffull.controller.runner import KeyedRunner
from halffull.controller.writes import ChildWriter


def test_backoff_doubles_with_jitter_up_to_the_cap() -> None:
    lows = [retry_delay(n, rand=lambda: 0.0) for n in range(1, 12)]
    highs = [retry_delay(n, rand=lambda: 1.0) for n in range(1, 12)]
    assert highs[:4] == [0.5, 1.0, 2.0, 4.0]
    assert lows[:4] == [0.25, 0.5, 1.0, 2.0]
    assert max(highs) == 120.0 and highs[-1] == 120.0 and lows[-1] == 60.0
    assert retry_delay(1, retry_after=7.0, rand=lambda: 0.5) == 7.0
    assert retry_delay(1, retry_after=1e6) == 120.0  # a silly Retry-After is capped too


def test_failures_name_verb_and_kind_and_namespace_deletion_stops_retries() -> None:
    forbidden = classify(ApiCallError("patch", "Deployment", 403, 'cannot patch "deployments"'))
    assert forbidden.reason == "Forbidden" and forbidden.retry
    assert "patch Deployment" in forbidden.message
    terminating = classify(ApiCallError("patch", "ConfigMap", 403, "ns x is being terminated"))
    assert terminating == Failure("NamespaceTerminating", "ns x is being terminated", False)
    busy = classify(ApiCallError("patch", "Service", 429, "slow down", retry_after=3.0))
    assert (busy.reason, busy.retry_after) == ("ApiServerBusy", 3.0)
    assert classify(ApiCallError("get", "LLMService", 503, "x")).reason == "ApiServerError"
    assert classify(ConnectionRefusedError()).reason == "ApiServerUnreachable"
    assert classify(KeyError("spec")).reason == "ReconcileError"


def _observed(router: bool) -> status_api.Observed:
    extra: dict[str, Any] = {"scheduler": {"policy": "larry", "alpha": 0.1}, "endpoints": []}
    if router:
        extra["router"] = {"policy": "sal", "beta": 256}
    return status_api.Observed(
        generation=2, desired_replicas=1, router_enabled=router, engine=None, router=None,
        extra=extra,
    )  # fmt: skip


def test_status_is_recomputed_and_stale_keys_are_patched_away() -> None:
    now = "2026-01-01T00:00:00Z"
    with_router = status_api.compute_status({}, _observed(True), "sel", "url", now)
    current = {**with_router, "somethingOld": 1}
    new = status_api.compute_status(current, _observed(False), "sel", "url", now)
    assert "router" not in new and "somethingOld" not in new
    patch = status_patch(current, new)
    assert patch["router"] is None and patch["somethingOld"] is None
    assert {k: v for k, v in patch.items() if v is not None} == new
    assert status_patch(new, new) == new


def test_degraded_by_a_failure_is_written_once() -> None:
    now = "2026-01-01T00:00:00Z"
    current = status_api.compute_status({}, _observed(True), "sel", "url", now)
    failure = Failure("Forbidden", "the operator may not patch Deployment: no")
    once = with_degraded(current, failure, 2, now)
    cond = {c["type"]: c for c in once["conditions"]}[status_api.DEGRADED]
    assert (cond["status"], cond["reason"]) == ("True", "Forbidden")
    assert [c["type"] for c in once["conditions"]] == [c["type"] for c in current["conditions"]]
    assert with_degraded(once, failure, 2, "2026-01-02T00:00:00Z") == once


def _obj(name: str, rv: str, owner: str | None, uid: str = "u1") -> dict[str, Any]:
    labels = {"serving.halffull.dev/llmservice": owner} if owner else {}
    return {"metadata": {"name": name, "namespace": "ns", "uid": uid, "resourceVersion": rv,
                         "labels": labels}}  # fmt: skip


def test_cache_keeps_the_newest_version_and_indexes_by_owner() -> None:
    cache = ObjectCache()
    cache.put("ConfigMap", _obj("a", "10", "svc"))
    cache.put("ConfigMap", _obj("a", "9", "svc"))  # a watch event older than a write's answer
    assert cache.get("ConfigMap", "ns", "a")["metadata"]["resourceVersion"] == "10"  # type: ignore[index]
    cache.put("Pod", _obj("p", "11", "svc"))
    assert [o["metadata"]["name"] for o in cache.owned("ns", "svc", ("ConfigMap",))] == ["a"]
    assert len(cache.owned("ns", "svc", ("ConfigMap", "Pod"))) == 2
    cache.put("ConfigMap", _obj("a", "12", "other"))  # relabelled: moves to its new owner
    assert cache.owned("ns", "svc", ("ConfigMap",)) == []
    cache.put("ConfigMap", _obj("a", "3", "svc", uid="u2"))  # recreated: a new object wins
    assert cache.owned("ns", "svc", ("ConfigMap",))[0]["metadata"]["uid"] == "u2"
    cache.drop("ConfigMap", "ns", "a")
    assert cache.get("ConfigMap", "ns", "a") is None and len(cache) == 1
    assert matches(_obj("p", "1", "svc"), {"serving.halffull.dev/llmservice": "svc"})


def test_runner_backs_off_reports_and_recovers() -> None:
    calls: list[tuple[str, str]] = []
    reported: list[Failure] = []
    attempts: list[int] = []
    outcomes = [ApiCallError("patch", "Deployment", 500, "etcd"), ApiCallError("patch",
                "Deployment", 429, "busy", retry_after=0.0), None]  # fmt: skip

    def work(ns: str, name: str) -> None:
        calls.append((ns, name))
        exc = outcomes.pop(0)
        if exc is not None:
            raise exc

    def delay(attempt: int, retry_after: float | None) -> float:
        attempts.append(attempt)
        return 0.01

    async def main() -> KeyedRunner:
        runner = KeyedRunner(work, lambda ns, n, f: reported.append(f), delay=delay)
        runner.trigger("ns", "svc")
        runner.trigger("ns", "svc")  # coalesced with the first
        await runner.idle()
        await runner.close()
        return runner

    runner = asyncio.run(main())
    assert calls == [("ns", "svc")] * 3
    assert attempts == [1, 2]  # the second failure waits longer than the first
    assert [f.reason for f in reported] == ["ApiServerError", "ApiServerBusy"]
    assert runner.failures == {}


def test_runner_gives_up_on_a_terminating_namespace_and_waits_while_inactive() -> None:
    calls: list[str] = []

    def work(ns: str, name: str) -> None:
        calls.append(name)
        if name == "gone":
            raise ApiCallError("patch", "Service", 403, "namespace ns is being terminated")

    async def main() -> None:
        runner = KeyedRunner(work, active=False, delay=lambda a, r: pytest.fail("no retry"))
        runner.trigger("ns", "gone")
        runner.trigger("ns", "kept")
        await runner.idle()
        assert calls == []  # a follower only remembers
        runner.activate()
        await runner.idle()
        await runner.close()

    asyncio.run(main())
    assert sorted(calls) == ["gone", "kept"]


def test_runner_lets_new_objects_pass_before_re_passes_of_served_ones() -> None:
    calls: list[str] = []
    gate = threading.Event()

    def work(ns: str, name: str) -> None:
        if name == "blocker":
            gate.wait(5)
        calls.append(name)

    async def main() -> None:
        runner = KeyedRunner(work, workers=1)
        for name in ("old1", "old2"):
            runner.trigger("ns", name)
        await runner.idle()
        calls.clear()
        runner.trigger("ns", "blocker")  # holds the only thread
        await asyncio.sleep(0.05)
        runner.trigger("ns", "old1")  # served before: waits behind the new ones
        runner.trigger("ns", "new1")
        runner.trigger("ns", "old2")
        runner.trigger("ns", "new2")
        await asyncio.sleep(0.05)
        gate.set()
        await runner.idle()
        runner.forget("ns", "old2")  # deleted: new again should it come back
        runner.trigger("ns", "blocker")
        gate.clear()
        await asyncio.sleep(0.05)
        runner.trigger("ns", "old1")
        runner.trigger("ns", "old2")
        gate.set()
        await runner.idle()
        await runner.close()

    asyncio.run(main())
    assert calls == ["blocker", "new1", "new2", "old1", "old2", "blocker", "old2", "old1"]


def test_memo_rebuilds_on_new_inputs_and_rechecks_new_versions_only() -> None:
    memo, owner = ReconcileMemo(), ("ns", "svc")
    builds: list[int] = []

    def build() -> list[dict[str, Any]]:
        builds.append(1)
        return [{"n": len(builds)}]

    assert memo.desired(owner, ("gen", 1), build) == [{"n": 1}]
    assert memo.desired(owner, ("gen", 1), build) == [{"n": 1}] and len(builds) == 1
    assert memo.desired(owner, ("gen", 2), build) == [{"n": 2}]
    checks: list[bool] = []

    def check(result: bool) -> Any:
        return lambda: checks.append(result) or result

    live = {"kind": "ConfigMap", "metadata": {"name": "a", "resourceVersion": "5"}}
    assert memo.drift_free(owner, live, "h1", check(True))
    assert memo.drift_free(owner, live, "h1", check(False))  # same version: not checked again
    assert len(checks) == 1
    assert not memo.drift_free(owner, live, "h2", check(False))  # another desired state
    edited = {"kind": "ConfigMap", "metadata": {"name": "a", "resourceVersion": "6"}}
    assert not memo.drift_free(owner, edited, "h1", check(False))  # someone edited it
    assert not memo.drift_free(owner, edited, "h1", check(False))  # drift is never remembered
    assert len(checks) == 4
    memo.forget(owner)
    memo.desired(owner, ("gen", 2), build)
    assert len(builds) == 3


def _child(kind: str, name: str) -> dict[str, Any]:
    return {"kind": kind, "metadata": {"name": name}}


def test_child_writer_sends_all_at_once_and_records_what_went_through() -> None:
    sent: list[str] = []
    # Every write is in flight at once, Deployments too (else the barrier times out).
    all_in = [threading.Barrier(4, timeout=5)]

    def apply(obj: dict[str, Any]) -> dict[str, Any]:
        sent.append(obj["kind"] + "/" + obj["metadata"]["name"])
        all_in[0].wait()
        if obj["metadata"]["name"] == "bad":
            raise ApiCallError("patch", obj["kind"], 403, "no")
        return {**obj, "written": True}

    writer = ChildWriter(apply)
    done: list[str] = []
    objs = [_child("ConfigMap", "a"), _child("Service", "bad"), _child("ConfigMap", "b"),
            _child("Deployment", "d")]  # fmt: skip
    with pytest.raises(ApiCallError, match="patch Service"):
        writer.apply_all(objs, lambda o, w: done.append(o["metadata"]["name"]) or None)
    assert done == ["a", "b", "d"]  # the writes that went through, in order
    done.clear()
    all_in[0] = threading.Barrier(3, timeout=5)
    writer.apply_all([o for o in objs if o["metadata"]["name"] != "bad"],
                     lambda o, w: done.append(o["metadata"]["name"]) or None)  # fmt: skip
    assert done == ["a", "b", "d"]
    all_in[0] = threading.Barrier(1, timeout=5)
    writer.apply_all([_child("Deployment", "e")], lambda o, w: done.append("e") or None)
    assert done[-1] == "e"
    writer.close()


def test_cache_holds_of_a_pod_only_what_a_reconcile_reads() -> None:
    pod = _obj("p", "7", "svc")
    pod["metadata"]["managedFields"] = [{"manager": "kubelet"}]
    pod["spec"] = {"nodeName": "n1", "containers": [{"name": "engine", "args": ["--x"] * 50}]}
    pod["status"] = {"podIP": "10.0.0.5", "conditions": [{"type": "Ready", "status": "True"}],
                     "containerStatuses": [{"image": "i"}], "hostIP": "10.0.0.1",
                     "qosClass": "Burstable"}  # fmt: skip
    cache = ObjectCache()
    cache.put("Pod", pod)
    held = cache.get("Pod", "ns", "p")
    assert held == {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {k: v for k, v in pod["metadata"].items() if k != "managedFields"},
        "spec": {"nodeName": "n1"},
        "status": {k: pod["status"][k] for k in ("podIP", "conditions", "containerStatuses")},
    }  # fmt: skip
    assert slim("Pod", {"metadata": {"name": "q"}, "spec": {}})["spec"] == {}  # not yet bound
    cm = {**_obj("c", "1", "svc"), "data": {"k": "v"}}
    assert slim("ConfigMap", cm) == {"kind": "ConfigMap", **cm}  # children: whole, for drift
    entry = {"manager": "halffull-operator", "operation": "Update", "apiVersion": "v1",
             "fieldsV1": {"f:data": {}}}  # fmt: skip
    cm["metadata"]["managedFields"] = [entry]
    held_cm = slim("ConfigMap", cm)  # who manages how, without the field sets
    assert held_cm["metadata"]["managedFields"] == [
        {"manager": "halffull-operator", "operation": "Update"}
    ]
    assert created_by_update(held_cm) and not created_by_update(_obj("c", "1", "svc"))


def _entry(manager: str, operation: str, fields: dict[str, Any], **kw: str) -> dict[str, Any]:
    return {"manager": manager, "operation": operation, "apiVersion": "apps/v1",
            "fieldsType": "FieldsV1", "fieldsV1": fields, **kw}  # fmt: skip


def test_our_create_s_ownership_is_folded_into_our_apply_s() -> None:
    ours = "halffull-operator"
    created = _entry(ours, "Update", {"f:spec": {"f:replicas": {}, "f:template": {"f:x": {}}}})
    applied = _entry(ours, "Apply", {"f:spec": {"f:template": {"f:y": {}}}})
    hpa = _entry("kube-controller-manager", "Update", {"f:spec": {"f:replicas": {}}})
    status = _entry(ours, "Update", {"f:status": {}}, subresource="status")
    folded = applied_ownership([created, hpa, applied, status], ours, "now")
    assert folded is not None
    assert folded[0] == {
        "manager": ours, "operation": "Apply", "apiVersion": "apps/v1", "time": "now",
        "fieldsType": "FieldsV1",
        "fieldsV1": {"f:spec": {"f:replicas": {}, "f:template": {"f:x": {}, "f:y": {}}}},
    }  # fmt: skip
    assert folded[1:] == [hpa, status]  # the others', and a subresource's, as they were
    assert applied_ownership([applied, hpa], ours, "now") is None  # nothing to fold
    other_version = {**applied, "apiVersion": "apps/v1beta1"}
    assert applied_ownership([created, other_version], ours, "now") is None


class _RecordingKube(Kube):
    """Kube.write's decisions, with the calls recorded instead of sent."""

    def __init__(self, exists: dict[str, Any] | None = None) -> None:
        self.calls: list[str] = []
        self.exists = exists

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.calls.append("create")
        if self.exists is not None:
            raise ApiCallError("create", obj["kind"], 409, "already exists")
        return obj

    def read_child(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        self.calls.append("read")
        return self.exists

    def fold_ownership(self, obj: dict[str, Any], live: dict[str, Any]) -> None:
        self.calls.append("fold")

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.calls.append("apply")
        return obj


def test_a_missing_child_is_created_and_an_existing_one_applied_once_folded() -> None:
    want = {"kind": "ConfigMap", "metadata": {"name": "c", "namespace": "ns"}}
    by_create = {"metadata": {"managedFields": [{"manager": "halffull-operator",
                                                 "operation": "Update"}]}}  # fmt: skip
    by_apply = {"metadata": {"managedFields": [{"manager": "halffull-operator",
                                                "operation": "Apply"}]}}  # fmt: skip
    for live, exists, calls in (
        (None, None, ["create"]),
        (by_apply, None, ["apply"]),
        (by_create, None, ["fold", "apply"]),
        (None, by_create, ["create", "read", "fold", "apply"]),  # the cache had not seen it
        (None, by_apply, ["create", "read", "apply"]),
    ):
        kube = _RecordingKube(exists)
        kube.write(want, live)
        assert kube.calls == calls, (live, exists)
    kube = _RecordingKube({})
    kube.read_child = lambda *a: None  # type: ignore[method-assign]
    kube.write(want, None)  # exists, yet not as ours (or deleted meanwhile): applied as it is
    assert kube.calls == ["create", "apply"]
